//! Judges a refined spec's structure with a real Markdown parser: six `##` sections, in order, each with content.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
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
const TEST_COMMAND: usize = 5;

/// What is wrong with a spec; the first problem found, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecProblem {
    Missing(&'static str),
    Empty(&'static str),
    Duplicate(&'static str),
    OutOfOrder {
        section: &'static str,
        after: &'static str,
    },
    NoNumberedCriteria,
    NoTestCommand,
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
                    "section \"## {section}\" must come before \"## {after}\""
                )
            }
            SpecProblem::NoNumberedCriteria => {
                write!(f, "section \"## Acceptance Criteria\" has no numbered item")
            }
            SpecProblem::NoTestCommand => {
                write!(f, "section \"## Test Command\" has no command")
            }
        }
    }
}

#[derive(Default)]
struct Section {
    seen_at: Option<usize>,
    text: String,
    numbered_items: usize,
}

fn canonical(heading: &str) -> Option<usize> {
    let h = heading.trim().trim_end_matches(':').trim();
    SECTIONS.iter().position(|s| s.eq_ignore_ascii_case(h))
}

/// Checks a spec. Only real level-2 headings count: a `## Test Command` line inside a code fence is text.
pub fn validate(markdown: &str) -> Result<(), SpecProblem> {
    let mut sections: [Section; 6] = Default::default();
    let mut current: Option<usize> = None;
    let mut in_heading: Option<String> = None;
    let mut list_is_ordered: Vec<bool> = Vec::new();
    let mut order = 0usize;

    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H2,
                ..
            }) => {
                in_heading = Some(String::new());
            }
            Event::End(TagEnd::Heading(HeadingLevel::H2)) => {
                let text = in_heading.take().unwrap_or_default();
                current = canonical(&text);
                if let Some(idx) = current {
                    if sections[idx].seen_at.is_some() {
                        return Err(SpecProblem::Duplicate(SECTIONS[idx]));
                    }
                    sections[idx].seen_at = Some(order);
                    order += 1;
                }
            }
            Event::Start(Tag::Heading {
                level: HeadingLevel::H1,
                ..
            }) => {
                // A new document title ends whatever section was open.
                current = None;
            }
            Event::Start(Tag::List(first)) => list_is_ordered.push(first.is_some()),
            Event::End(TagEnd::List(_)) => {
                list_is_ordered.pop();
            }
            Event::Start(Tag::Item) => {
                if let (Some(idx), Some(true)) = (current, list_is_ordered.last()) {
                    sections[idx].numbered_items += 1;
                }
            }
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => {
                if let Some(h) = in_heading.as_mut() {
                    h.push_str(&t);
                } else if let Some(idx) = current {
                    sections[idx].text.push_str(&t);
                    sections[idx].text.push(' ');
                }
            }
            _ => {}
        }
    }

    for (idx, name) in SECTIONS.iter().enumerate() {
        if sections[idx].seen_at.is_none() {
            return Err(SpecProblem::Missing(name));
        }
    }
    for idx in 1..SECTIONS.len() {
        if sections[idx].seen_at < sections[idx - 1].seen_at {
            return Err(SpecProblem::OutOfOrder {
                section: SECTIONS[idx],
                after: SECTIONS[idx - 1],
            });
        }
    }
    for (idx, name) in SECTIONS.iter().enumerate() {
        if sections[idx].text.trim().is_empty() {
            return Err(if idx == TEST_COMMAND {
                SpecProblem::NoTestCommand
            } else {
                SpecProblem::Empty(name)
            });
        }
    }
    if sections[ACCEPTANCE].numbered_items == 0 {
        return Err(SpecProblem::NoNumberedCriteria);
    }
    Ok(())
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
        assert_eq!(validate(&spec), Err(SpecProblem::NoTestCommand));
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
