//! Judges a refined spec's structure with a real Markdown parser: six `##` sections, in order, each with content; the generic rule lives in `core::validate`.

use crate::validate::{SectionProblem, section_problem};
use std::fmt;

/// The sections a spec must have, in this order.
pub const SECTIONS: [&str; 6] = [
    "Summary",
    "Context",
    "Acceptance Criteria",
    "TDD Plan",
    "Out of Scope",
    "Test Command",
];

const ACCEPTANCE: usize = 2;

/// Whether `SECTIONS[idx]` must hold a numbered item.
pub(crate) fn is_numbered(idx: usize) -> bool {
    idx == ACCEPTANCE
}

/// What is wrong with a spec; the first problem found, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecProblem {
    Missing(&'static str),
    Empty(&'static str),
    Duplicate(&'static str),
    /// `section` appears before `after`, which the list puts first.
    OutOfOrder {
        section: &'static str,
        after: &'static str,
    },
    NoNumberedCriteria,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecProblem::Missing(s) => write!(f, "section \"## {s}\" is missing"),
            SpecProblem::Empty(s) => write!(f, "section \"## {s}\" is empty"),
            SpecProblem::Duplicate(s) => write!(f, "section \"## {s}\" appears more than once"),
            SpecProblem::OutOfOrder { section, after } => {
                write!(
                    f,
                    "section \"## {after}\" must come before \"## {section}\""
                )
            }
            SpecProblem::NoNumberedCriteria => write!(
                f,
                "section \"## {}\" has no numbered item",
                SECTIONS[ACCEPTANCE]
            ),
        }
    }
}

/// Checks a spec. Only real level-2 headings count: a `## Test Command` line inside a code fence is text.
pub fn validate(markdown: &str) -> Result<(), SpecProblem> {
    let rules = SECTIONS
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, is_numbered(i)));
    match section_problem(rules, markdown) {
        None => Ok(()),
        Some(SectionProblem::Missing(i)) => Err(SpecProblem::Missing(SECTIONS[i])),
        Some(SectionProblem::Empty(i)) => Err(SpecProblem::Empty(SECTIONS[i])),
        Some(SectionProblem::Duplicate(i)) => Err(SpecProblem::Duplicate(SECTIONS[i])),
        Some(SectionProblem::OutOfOrder { first, second }) => Err(SpecProblem::OutOfOrder {
            section: SECTIONS[second],
            after: SECTIONS[first],
        }),
        Some(SectionProblem::NotNumbered(_)) => Err(SpecProblem::NoNumberedCriteria),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn good() -> String {
        "# Health endpoint\n\n## Summary\nAdd GET /healthz.\n\n## Context\nOps need a probe.\n\n\
         ## Acceptance Criteria\n1. Returns 200.\n2. Body has the git sha.\n\n## TDD Plan\n- write a failing test\n\n\
         ## Out of Scope\nAuth.\n\n## Test Command\n```sh\ncargo test\n```\n"
            .to_string()
    }

    #[test]
    fn accepts_a_complete_spec() {
        assert_eq!(validate(&good()), Ok(()));
    }

    #[test]
    fn names_the_missing_section() {
        let spec = good().replace("## Test Command\n```sh\ncargo test\n```\n", "");
        assert_eq!(validate(&spec), Err(SpecProblem::Missing("Test Command")));
        assert_eq!(
            validate(&spec).unwrap_err().to_string(),
            "section \"## Test Command\" is missing"
        );
    }

    #[test]
    fn a_heading_inside_a_code_fence_is_not_a_heading() {
        let spec = good().replace(
            "## Out of Scope\nAuth.\n\n## Test Command\n```sh\ncargo test\n```\n",
            "## Out of Scope\nAuth.\n\n```\n## Test Command\ncargo test\n```\n",
        );
        assert_eq!(validate(&spec), Err(SpecProblem::Missing("Test Command")));
    }

    #[test]
    fn empty_section_is_named() {
        let spec = good().replace("Ops need a probe.\n", "");
        assert_eq!(validate(&spec), Err(SpecProblem::Empty("Context")));
    }

    #[test]
    fn test_command_must_hold_a_command() {
        let spec = good().replace("```sh\ncargo test\n```\n", "```sh\n```\n");
        assert_eq!(validate(&spec), Err(SpecProblem::Empty("Test Command")));
        assert_eq!(
            validate(&spec).unwrap_err().to_string(),
            "section \"## Test Command\" is empty"
        );
    }

    #[test]
    fn acceptance_criteria_need_a_numbered_item() {
        let spec = good().replace(
            "1. Returns 200.\n2. Body has the git sha.",
            "- Returns 200.",
        );
        assert_eq!(validate(&spec), Err(SpecProblem::NoNumberedCriteria));
        // A numbered item nested under a bullet still counts.
        let spec = good().replace(
            "1. Returns 200.\n2. Body has the git sha.",
            "- HTTP\n  1. Returns 200.",
        );
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn order_matters() {
        let spec = good()
            .replace("## Summary\nAdd GET /healthz.\n\n", "")
            .replace(
                "## Out of Scope",
                "## Summary\nAdd GET /healthz.\n\n## Out of Scope",
            );
        assert_eq!(
            validate(&spec),
            Err(SpecProblem::OutOfOrder {
                section: "Context",
                after: "Summary"
            })
        );
    }

    #[test]
    fn out_of_order_message_names_the_section_that_must_come_first() {
        let problem = SpecProblem::OutOfOrder {
            section: "Context",
            after: "Summary",
        };
        assert_eq!(
            problem.to_string(),
            "section \"## Summary\" must come before \"## Context\""
        );
    }

    #[test]
    fn duplicate_section_is_refused() {
        let spec = format!("{}\n## Summary\nagain\n", good());
        assert_eq!(validate(&spec), Err(SpecProblem::Duplicate("Summary")));
    }

    #[test]
    fn tolerates_case_colons_and_extra_sections() {
        let spec = good()
            .replace("## Context", "## context:")
            .replace("## Out of Scope", "## Notes\nextra\n\n## Out of Scope");
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn subheadings_are_content() {
        let spec = good().replace("Ops need a probe.\n", "### Why\n");
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn setext_level_two_heading_counts() {
        let spec = good().replace("## Summary\n", "Summary\n-------\n");
        assert_eq!(validate(&spec), Ok(()));
    }
}
