//! Which damascus phase a request comes from, and the answer text for each phase, shared by
//! every wire format so the formats differ only in their envelopes.

use crate::behavior::Behavior;
use crate::spec;

/// The reasons a `reject` review gives, verbatim above its `VERDICT: REJECT` line.
pub const REJECT_REASONS: &str =
    "- The change has no test for the error path.\n- The handler ignores a missing header.";

/// The phase a request belongs to, read from its system text the way a human would tell
/// the prompts apart: a review prompt asks for a verdict line, an implement prompt for a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Spec,
    Implement,
    Review,
}

impl Phase {
    pub(crate) fn detect(system_text: &str) -> Phase {
        if system_text.contains("VERDICT:") {
            Phase::Review
        } else if system_text.to_lowercase().contains("unified diff") {
            Phase::Implement
        } else {
            Phase::Spec
        }
    }

    /// The damascus phase name, for log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Spec => "refine_spec",
            Phase::Implement => "implement",
            Phase::Review => "review",
        }
    }
}

/// The text of a successful answer, and whether the provider should report it as cut off
/// by the token cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub text: String,
    pub truncated: bool,
}

/// The answer a message-producing behaviour gives in `phase`. A behaviour that makes no sense
/// for the phase (say, `reject` on a spec request) answers like `Good`, so one server default
/// can drive a whole pipeline run without breaking the phases it is not aimed at.
pub(crate) fn answer(phase: Phase, behavior: &Behavior, feature: &str) -> Answer {
    let truncated = *behavior == Behavior::Truncated;
    let text = match (phase, behavior) {
        (Phase::Spec, _) => {
            spec::spec_for(behavior, feature).unwrap_or_else(|| spec::good_spec(feature))
        }
        (Phase::Implement, Behavior::NoDiff) => no_diff(feature),
        (Phase::Implement, Behavior::Truncated) => cut_in_half(&good_diff(feature)),
        (Phase::Implement, _) => good_diff(feature),
        (Phase::Review, Behavior::Reject) => rejection(feature),
        (Phase::Review, Behavior::Truncated) => cut_in_half(&good_review(feature)),
        (Phase::Review, _) => good_review(feature),
    };
    Answer { text, truncated }
}

/// Longest file stem taken from a feature name; long enough to tell tickets apart.
const SLUG_MAX_CHARS: usize = 40;

/// A file and function name for `feature`: lowercase ASCII words joined by `_`, so it is a
/// valid Rust identifier and a path without surprises.
fn slug(feature: &str) -> String {
    let mut out = String::new();
    for c in feature.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let mut out: String = out.chars().take(SLUG_MAX_CHARS).collect();
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("feature");
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "f_");
    }
    out
}

/// The complete, well-formed implement answer for `feature`: one sentence, then a fenced
/// unified diff against `src/<slug>.rs` whose hunk header counts match its lines.
pub fn good_diff(feature: &str) -> String {
    let name = slug(feature);
    // The feature is one line (see `feature_name`), so it cannot break the diff's framing.
    let comment = format!("    // Implements \"{feature}\".");
    format!(
        "This change implements \"{feature}\" in src/{name}.rs.\n\
         \n\
         ```diff\n\
         --- a/src/{name}.rs\n\
         +++ b/src/{name}.rs\n\
         @@ -1,3 +1,4 @@\n\
         \x20pub fn {name}() -> bool {{\n\
         -    false\n\
         +{comment}\n\
         +    true\n\
         \x20}}\n\
         ```\n"
    )
}

fn no_diff(feature: &str) -> String {
    format!(
        "I looked at how to implement \"{feature}\", but the spec leaves the storage format \
         open, so I would rather ask which one is wanted than guess. Once that is settled the \
         change should be small."
    )
}

/// The approving review for `feature`; its last line is exactly `VERDICT: APPROVE`.
pub fn good_review(feature: &str) -> String {
    format!(
        "The change implements \"{feature}\" as the spec asks: the new behaviour is covered by \
         a test written first, errors are reported instead of swallowed, and nothing outside \
         the ticket's scope was touched.\n\
         \n\
         VERDICT: APPROVE"
    )
}

fn rejection(feature: &str) -> String {
    format!(
        "The change for \"{feature}\" is not ready to merge:\n\
         \n\
         {REJECT_REASONS}\n\
         \n\
         VERDICT: REJECT"
    )
}

/// Roughly the first half of `text`, cut mid-word as a token limit does, without the tidy
/// trailing newline a finished answer would have.
fn cut_in_half(text: &str) -> String {
    let keep = text.chars().count() / 2;
    let cut: String = text.chars().take(keep).collect();
    cut.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a unified diff hunk: its header's counts must match the lines below it.
    fn hunk_counts(diff: &str) -> ((usize, usize), (usize, usize)) {
        let mut lines = diff.lines().skip_while(|l| !l.starts_with("@@"));
        let header = lines.next().unwrap();
        let body: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
        let old = body.iter().filter(|l| !l.starts_with('+')).count();
        let new = body.iter().filter(|l| !l.starts_with('-')).count();
        let ranges: Vec<&str> = header.split(' ').collect();
        let claimed = |r: &str| -> usize { r[1..].split(',').nth(1).unwrap().parse().unwrap() };
        ((claimed(ranges[1]), old), (claimed(ranges[2]), new))
    }

    #[test]
    fn detects_the_phase_from_system_text() {
        assert_eq!(Phase::detect("Write a spec."), Phase::Spec);
        assert_eq!(Phase::detect(""), Phase::Spec);
        assert_eq!(
            Phase::detect("Answer with a Unified Diff in a fence."),
            Phase::Implement
        );
        assert_eq!(
            Phase::detect("Review the unified diff. End with VERDICT: APPROVE or REJECT."),
            Phase::Review
        );
        assert_eq!(Phase::detect("verdict: lowercase is not it"), Phase::Spec);
    }

    #[test]
    fn good_diff_is_well_formed_and_per_ticket() {
        let text = good_diff("Add CSV export");
        assert!(text.starts_with("This change implements \"Add CSV export\""));
        assert!(text.contains(
            "```diff\n--- a/src/add_csv_export.rs\n+++ b/src/add_csv_export.rs\n@@ -1,3 +1,4 @@\n"
        ));
        assert!(text.ends_with("```\n"));
        let ((claimed_old, old), (claimed_new, new)) = hunk_counts(&text);
        assert_eq!((claimed_old, claimed_new), (3, 4));
        assert_eq!((old, new), (3, 4));
        assert_ne!(good_diff("Fix login"), text);
    }

    #[test]
    fn slugs_are_identifiers() {
        assert_eq!(
            slug("Ticket #12: Add CSV export!"),
            "ticket_12_add_csv_export"
        );
        assert_eq!(slug("¿¿??"), "feature");
        assert_eq!(slug("3 things"), "f_3_things");
        assert!(slug(&"word ".repeat(30)).len() <= SLUG_MAX_CHARS);
        assert!(!slug(&"word ".repeat(30)).ends_with('_'));
    }

    #[test]
    fn reviews_end_with_the_verdict_line() {
        let good = answer(Phase::Review, &Behavior::Good, "X");
        assert_eq!(good.text.lines().last(), Some("VERDICT: APPROVE"));
        assert!(!good.truncated);
        let bad = answer(Phase::Review, &Behavior::Reject, "X");
        assert_eq!(bad.text.lines().last(), Some("VERDICT: REJECT"));
        assert!(
            bad.text
                .contains(&format!("{REJECT_REASONS}\n\nVERDICT: REJECT"))
        );
    }

    #[test]
    fn behaviours_outside_their_phase_answer_like_good() {
        let spec_like = [
            Behavior::MissingSection("Context".into()),
            Behavior::EmptySection("Summary".into()),
            Behavior::FencedTestCommand,
        ];
        for b in spec_like.iter().chain([&Behavior::NoDiff]) {
            assert_eq!(answer(Phase::Review, b, "X").text, good_review("X"), "{b}");
        }
        for b in spec_like.iter().chain([&Behavior::Reject]) {
            assert_eq!(answer(Phase::Implement, b, "X").text, good_diff("X"), "{b}");
        }
        for b in [Behavior::Reject, Behavior::NoDiff] {
            assert_eq!(answer(Phase::Spec, &b, "X").text, spec::good_spec("X"));
        }
    }

    #[test]
    fn no_diff_has_no_diff() {
        let text = answer(Phase::Implement, &Behavior::NoDiff, "X").text;
        assert!(!text.contains("```") && !text.contains("@@") && !text.contains("+++"));
    }

    #[test]
    fn truncation_cuts_every_phase() {
        for (phase, full) in [
            (Phase::Implement, good_diff("X")),
            (Phase::Review, good_review("X")),
            (Phase::Spec, spec::good_spec("X")),
        ] {
            let cut = answer(phase, &Behavior::Truncated, "X");
            assert!(cut.truncated);
            assert!(full.starts_with(&cut.text));
            assert!(cut.text.len() < full.len() * 3 / 4, "{phase:?}");
            assert!(cut.text.len() > full.len() / 4, "{phase:?}");
        }
        let review = answer(Phase::Review, &Behavior::Truncated, "X").text;
        assert!(!review.contains("VERDICT"));
    }
}
