//! The Markdown spec text fakellm answers with, and its deliberately broken variants.

use crate::behavior::{Behavior, strip_markers};

/// The `## ` sections damascus asks for, in the order it expects them.
pub const SECTIONS: [&str; 6] = [
    "Summary",
    "Context",
    "Acceptance Criteria",
    "TDD Plan",
    "Out of Scope",
    "Test Command",
];

/// Feature names longer than this would make the spec read like a copy of the ticket.
const FEATURE_MAX_CHARS: usize = 80;

/// Used when the prompt has no usable line, so the spec still reads as prose.
const FALLBACK_FEATURE: &str = "the requested change";

/// The canonical spelling of a section name, matched case-insensitively.
pub(crate) fn canonical_section(name: &str) -> Option<&'static str> {
    let name = name.trim();
    SECTIONS
        .iter()
        .copied()
        .find(|s| s.eq_ignore_ascii_case(name))
}

/// The feature name for a prompt: its first non-empty line (markers and heading hashes
/// removed), cut to about 80 characters, so different tickets yield different specs.
pub(crate) fn feature_name(prompt: &str) -> String {
    let cleaned = strip_markers(prompt);
    let line = cleaned
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let cut: String = line.chars().take(FEATURE_MAX_CHARS).collect();
    let cut = cut.trim_end();
    if cut.is_empty() {
        FALLBACK_FEATURE.to_string()
    } else {
        cut.to_string()
    }
}

fn sections(feature: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Summary",
            format!(
                "Implement \"{feature}\". This spec describes the smallest change that delivers it \
                 end to end, with every behaviour pinned down by a test written before the code."
            ),
        ),
        (
            "Context",
            format!(
                "The ticket asks for \"{feature}\". The existing code paths around this behaviour \
                 should be reused rather than duplicated, and callers that do not use the new \
                 behaviour must see no change."
            ),
        ),
        (
            "Acceptance Criteria",
            format!(
                "1. \"{feature}\" works for the common case and is covered by an automated test.\n\
                 2. Invalid or missing input is rejected with a clear error message instead of a \
                 panic or a silent failure.\n\
                 3. All existing tests keep passing, and new public items are documented."
            ),
        ),
        (
            "TDD Plan",
            format!(
                "1. Write a failing test that exercises the main path of \"{feature}\" and watch it fail.\n\
                 2. Implement the minimal code that makes that test pass.\n\
                 3. Add a failing test for invalid input, then handle it with a clear error.\n\
                 4. Refactor for clarity while keeping the whole suite green."
            ),
        ),
        (
            "Out of Scope",
            "Performance tuning, user-interface changes and any behaviour the ticket does not \
             name. Follow-up improvements should be filed as separate tickets."
                .to_string(),
        ),
        ("Test Command", "```sh\ncargo test\n```".to_string()),
    ]
}

fn render(sections: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (name, body)) in sections.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("## ");
        out.push_str(name);
        out.push('\n');
        if !body.is_empty() {
            out.push('\n');
            out.push_str(body);
            out.push('\n');
        }
    }
    out
}

/// The complete, well-formed spec fakellm answers with for `feature`.
pub fn good_spec(feature: &str) -> String {
    render(&sections(feature))
}

/// The text a behaviour answers a spec request with for `feature`; `None` for behaviours
/// that answer with something other than a spec (errors, garbage, silence, filler, no text).
/// Behaviours aimed at other phases (`reject`, `no-diff`) give the good spec, and so does
/// `flaky` once its failures are spent.
pub fn spec_for(behavior: &Behavior, feature: &str) -> Option<String> {
    let mut parts = sections(feature);
    match behavior {
        Behavior::Good
        | Behavior::Slow(_)
        | Behavior::Flaky { .. }
        | Behavior::Cached { .. }
        | Behavior::Reject
        | Behavior::NoDiff => Some(render(&parts)),
        Behavior::Truncated => {
            let tdd = parts.iter().position(|(n, _)| *n == "TDD Plan")?;
            parts.truncate(tdd + 1);
            let body = &mut parts[tdd].1;
            // Cut mid-sentence, as a real max_tokens stop does, not at a tidy boundary.
            let keep = body.chars().count() / 2;
            *body = body.chars().take(keep).collect();
            let mut text = render(&parts);
            // A stream that stopped on a token limit does not end with a tidy newline.
            text.truncate(text.trim_end().len());
            Some(text)
        }
        Behavior::MissingSection(name) => {
            parts.retain(|(n, _)| !n.eq_ignore_ascii_case(name.trim()));
            Some(render(&parts))
        }
        Behavior::EmptySection(name) => {
            for (n, body) in &mut parts {
                if n.eq_ignore_ascii_case(name.trim()) {
                    body.clear();
                }
            }
            Some(render(&parts))
        }
        Behavior::FencedTestCommand => {
            parts.retain(|(n, _)| *n != "Test Command");
            if let Some((_, body)) = parts.iter_mut().find(|(n, _)| *n == "Out of Scope") {
                // Inside a fence the line is code, so a Markdown parser must not see a heading.
                body.push_str("\n\n```\n## Test Command\ncargo test\n```");
            }
            Some(render(&parts))
        }
        Behavior::Status(_)
        | Behavior::Garbage
        | Behavior::WrongShape
        | Behavior::Hang
        | Behavior::Reset
        | Behavior::Huge(_)
        | Behavior::NotUtf8
        | Behavior::EmptyContent
        | Behavior::OddBlock
        | Behavior::Endless
        | Behavior::Cooldown(_)
        | Behavior::SpendLimit => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headings(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("## ")).collect()
    }

    #[test]
    fn good_spec_has_all_sections_in_order() {
        let spec = good_spec("Add a login page");
        assert_eq!(headings(&spec), SECTIONS);
        assert!(spec.contains("Add a login page"));
        assert!(spec.contains("\n1. ") && spec.contains("\n2. ") && spec.contains("\n3. "));
        assert!(spec.ends_with("```sh\ncargo test\n```\n"));
    }

    #[test]
    fn truncated_stops_inside_tdd_plan() {
        let text = spec_for(&Behavior::Truncated, "X").unwrap();
        assert_eq!(headings(&text), &SECTIONS[..4]);
        assert!(text.len() > good_spec("X").find("## TDD Plan").unwrap() + 20);
    }

    #[test]
    fn missing_and_empty_sections() {
        let missing = spec_for(&Behavior::MissingSection("Context".into()), "X").unwrap();
        assert!(!headings(&missing).contains(&"Context"));
        assert_eq!(headings(&missing).len(), 5);
        let empty = spec_for(&Behavior::EmptySection("Test Command".into()), "X").unwrap();
        assert_eq!(headings(&empty), SECTIONS);
        assert!(empty.ends_with("## Test Command\n"));
        assert!(!empty.contains("cargo test"));
    }

    #[test]
    fn fenced_variant_hides_heading_in_fence() {
        let text = spec_for(&Behavior::FencedTestCommand, "X").unwrap();
        assert_eq!(
            headings(&text),
            [&SECTIONS[..5], &["Test Command"]].concat()
        );
        assert!(text.contains("```\n## Test Command\ncargo test\n```"));
    }

    #[test]
    fn error_behaviours_give_no_spec() {
        for b in [
            Behavior::Status(429),
            Behavior::Cooldown(5),
            Behavior::SpendLimit,
        ] {
            assert_eq!(spec_for(&b, "X"), None, "{b}");
        }
    }

    #[test]
    fn feature_name_uses_first_non_empty_line() {
        assert_eq!(feature_name("\n\n  # Add login  \nmore"), "Add login");
        assert_eq!(feature_name("[fakellm:hang]\nFix bug"), "Fix bug");
        assert_eq!(feature_name("   \n"), FALLBACK_FEATURE);
        let long = "é".repeat(200);
        assert_eq!(feature_name(&long).chars().count(), FEATURE_MAX_CHARS);
    }
}
