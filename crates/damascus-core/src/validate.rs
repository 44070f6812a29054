//! Phase validators as data: built from a phase row's `validator` JSON, each judges a model's answer and says what is wrong with it.

use crate::spec;
use diffy::Patch;
use diffy::patch_set::{ParseOptions, PatchKind, PatchSet};
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};
use serde_json::{Map, Value, json};

/// How a phase judges the model's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    /// Required `##` sections, in order, each with content.
    Sections(Vec<SectionRule>),
    /// At least one fenced, well-formed unified diff.
    Diff,
    /// A review ending in `VERDICT: APPROVE` or `VERDICT: REJECT`.
    VerdictLine,
    /// Anything that is not blank.
    None,
}

/// One required `##` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionRule {
    pub heading: String,
    /// The section must hold at least one ordered-list item.
    pub numbered: bool,
}

/// A validator's judgement of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// The answer does not have the required shape; the message is fed back to the model.
    Wrong(String),
    /// A review approved the work.
    Approve,
    /// A review rejected the work; the reasons are the review's text above its verdict.
    Reject(String),
}

const KINDS: &str = "sections, diff, verdict_line, none";

const NO_DIFF: &str = "no fenced diff block holds a well-formed unified-diff hunk";
const NO_VERDICT: &str = "the last line is not VERDICT: APPROVE or VERDICT: REJECT";
const REJECT_WITHOUT_REASONS: &str = "a REJECT verdict needs its reasons above the verdict line";
const EMPTY_ANSWER: &str = "the answer is empty";

impl Validator {
    /// Refuses unknown kinds and malformed configs with a message a user can act on (it is shown in an SQL error).
    pub fn from_json(v: &Value) -> Result<Validator, String> {
        let Some(obj) = v.as_object() else {
            return Err(format!(
                "a validator must be a JSON object such as {{\"kind\":\"none\"}}, not {}; the kinds are {KINDS}",
                short_json(v)
            ));
        };
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(other) => {
                return Err(format!(
                    "validator \"kind\" must be a string, not {}; the kinds are {KINDS}",
                    short_json(other)
                ));
            }
            None => {
                return Err(format!(
                    "a validator needs a \"kind\"; the kinds are {KINDS}"
                ));
            }
        };
        let validator = match kind {
            "sections" => {
                only_keys(obj, &["kind", "sections"], "validator of kind \"sections\"")?;
                return parse_sections(obj.get("sections")).map(Validator::Sections);
            }
            "diff" => Validator::Diff,
            "verdict_line" => Validator::VerdictLine,
            "none" => Validator::None,
            other => {
                return Err(format!(
                    "unknown validator kind \"{}\"; the kinds are {KINDS}",
                    short(other)
                ));
            }
        };
        only_keys(obj, &["kind"], &format!("validator of kind \"{kind}\""))?;
        Ok(validator)
    }

    /// The JSON form, as stored in a phase row; `from_json` reads it back to an equal validator.
    pub fn to_json(&self) -> Value {
        match self {
            Validator::Sections(rules) => {
                let sections: Vec<Value> = rules
                    .iter()
                    .map(|r| {
                        if r.numbered {
                            json!({"heading": r.heading, "numbered": true})
                        } else {
                            json!({"heading": r.heading})
                        }
                    })
                    .collect();
                json!({"kind": "sections", "sections": sections})
            }
            other => json!({"kind": other.kind()}),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Validator::Sections(_) => "sections",
            Validator::Diff => "diff",
            Validator::VerdictLine => "verdict_line",
            Validator::None => "none",
        }
    }

    /// The refined-spec rule of `core::spec` as data.
    pub fn spec() -> Validator {
        Validator::Sections(
            spec::SECTIONS
                .iter()
                .enumerate()
                .map(|(i, s)| SectionRule {
                    heading: (*s).to_string(),
                    numbered: spec::is_numbered(i),
                })
                .collect(),
        )
    }

    /// The JSON form of `spec()`, as it would be stored in the table.
    pub fn spec_json() -> Value {
        Validator::spec().to_json()
    }

    pub fn check(&self, text: &str) -> Check {
        match self {
            Validator::Sections(rules) => {
                let problem =
                    section_problem(rules.iter().map(|r| (r.heading.as_str(), r.numbered)), text);
                match problem {
                    None => Check::Ok,
                    Some(p) => Check::Wrong(p.message(|i| rules[i].heading.as_str())),
                }
            }
            Validator::Diff => check_diff(text),
            Validator::VerdictLine => check_verdict(text),
            Validator::None => {
                if text.trim().is_empty() {
                    Check::Wrong(EMPTY_ANSWER.to_string())
                } else {
                    Check::Ok
                }
            }
        }
    }
}

// Config values end up inside SQL error messages; a pasted megabyte must not.
fn short(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

fn short_json(v: &Value) -> String {
    short(&v.to_string())
}

fn only_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(format!(
            "{what} has an unknown key \"{}\"; its keys are {}",
            short(k),
            allowed.join(", ")
        )),
    }
}

fn parse_sections(v: Option<&Value>) -> Result<Vec<SectionRule>, String> {
    const EXAMPLE: &str =
        "[{\"heading\":\"Summary\"},{\"heading\":\"Acceptance Criteria\",\"numbered\":true}]";
    let list = match v {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => {
            return Err(format!(
                "a validator of kind \"sections\" needs a non-empty \"sections\" list such as {EXAMPLE}"
            ));
        }
    };
    let mut rules: Vec<SectionRule> = Vec::with_capacity(list.len());
    for (n, item) in list.iter().enumerate() {
        let at = format!("sections[{n}]");
        let Some(obj) = item.as_object() else {
            return Err(format!(
                "{at} must be an object such as {{\"heading\":\"Summary\"}}, not {}",
                short_json(item)
            ));
        };
        only_keys(obj, &["heading", "numbered"], &at)?;
        let heading = match obj.get("heading") {
            Some(Value::String(h)) => h.trim(),
            _ => return Err(format!("{at} needs a \"heading\" string")),
        };
        if heading.is_empty() {
            return Err(format!("{at} has an empty \"heading\""));
        }
        if heading.starts_with('#') {
            return Err(format!(
                "{at} heading \"{}\" must be the title without its leading \"#\"s",
                short(heading)
            ));
        }
        if heading.contains(['\n', '\r']) {
            return Err(format!("{at} heading must be a single line"));
        }
        let numbered = match obj.get("numbered") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "{at} \"numbered\" must be true or false, not {}",
                    short_json(other)
                ));
            }
        };
        if let Some(first) = rules.iter().find(|r| same_heading(&r.heading, heading)) {
            return Err(format!(
                "{at} heading \"{}\" repeats \"{}\"; each section may be listed once",
                short(heading),
                short(&first.heading)
            ));
        }
        rules.push(SectionRule {
            heading: heading.to_string(),
            numbered,
        });
    }
    Ok(rules)
}

fn heading_key(h: &str) -> &str {
    h.trim().trim_end_matches(':').trim()
}

// Case-insensitive without allocating: this runs for every heading of every answer.
fn same_heading(a: &str, b: &str) -> bool {
    let (a, b) = (heading_key(a), heading_key(b));
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// The first thing wrong with a sectioned document, naming rules by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionProblem {
    Missing(usize),
    Empty(usize),
    Duplicate(usize),
    /// Rule `first` is listed before rule `second` but appears after it.
    OutOfOrder {
        first: usize,
        second: usize,
    },
    NotNumbered(usize),
}

impl SectionProblem {
    pub(crate) fn message<'r>(self, heading: impl Fn(usize) -> &'r str) -> String {
        match self {
            SectionProblem::Missing(i) => format!("section \"## {}\" is missing", heading(i)),
            SectionProblem::Empty(i) => format!("section \"## {}\" is empty", heading(i)),
            SectionProblem::Duplicate(i) => {
                format!("section \"## {}\" appears more than once", heading(i))
            }
            SectionProblem::OutOfOrder { first, second } => format!(
                "section \"## {}\" must come before \"## {}\"",
                heading(first),
                heading(second)
            ),
            SectionProblem::NotNumbered(i) => {
                format!("section \"## {}\" has no numbered item", heading(i))
            }
        }
    }
}

struct Slot<'r> {
    heading: &'r str,
    numbered: bool,
    seen_at: Option<usize>,
    has_text: bool,
    numbered_items: usize,
}

/// Checks `markdown` against `(heading, numbered)` rules. Only real level-2 headings count: a
/// heading line inside a code fence is text. Duplicates are reported in document order, then
/// missing, misordered, empty and unnumbered sections in rule order.
pub(crate) fn section_problem<'r>(
    rules: impl IntoIterator<Item = (&'r str, bool)>,
    markdown: &str,
) -> Option<SectionProblem> {
    let mut slots: Vec<Slot<'r>> = rules
        .into_iter()
        .map(|(heading, numbered)| Slot {
            heading,
            numbered,
            seen_at: None,
            has_text: false,
            numbered_items: 0,
        })
        .collect();
    let mut current: Option<usize> = None;
    let mut in_heading: Option<String> = None;
    let mut list_is_ordered: Vec<bool> = Vec::new();
    let mut order = 0usize;

    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H2,
                ..
            }) => in_heading = Some(String::new()),
            Event::End(TagEnd::Heading(HeadingLevel::H2)) => {
                let text = in_heading.take().unwrap_or_default();
                current = slots.iter().position(|s| same_heading(s.heading, &text));
                if let Some(idx) = current {
                    if slots[idx].seen_at.is_some() {
                        return Some(SectionProblem::Duplicate(idx));
                    }
                    slots[idx].seen_at = Some(order);
                    order += 1;
                }
            }
            // A new document title ends whatever section was open.
            Event::Start(Tag::Heading {
                level: HeadingLevel::H1,
                ..
            }) => current = None,
            Event::Start(Tag::List(first)) => list_is_ordered.push(first.is_some()),
            Event::End(TagEnd::List(_)) => {
                list_is_ordered.pop();
            }
            Event::Start(Tag::Item) => {
                if let (Some(idx), Some(true)) = (current, list_is_ordered.last()) {
                    slots[idx].numbered_items += 1;
                }
            }
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => {
                if let Some(h) = in_heading.as_mut() {
                    h.push_str(&t);
                } else if let Some(idx) = current
                    && !t.trim().is_empty()
                {
                    slots[idx].has_text = true;
                }
            }
            _ => {}
        }
    }

    if let Some(idx) = slots.iter().position(|s| s.seen_at.is_none()) {
        return Some(SectionProblem::Missing(idx));
    }
    for idx in 1..slots.len() {
        if slots[idx].seen_at < slots[idx - 1].seen_at {
            return Some(SectionProblem::OutOfOrder {
                first: idx - 1,
                second: idx,
            });
        }
    }
    if let Some(idx) = slots.iter().position(|s| !s.has_text) {
        return Some(SectionProblem::Empty(idx));
    }
    if let Some(idx) = slots
        .iter()
        .position(|s| s.numbered && s.numbered_items == 0)
    {
        return Some(SectionProblem::NotNumbered(idx));
    }
    None
}

fn check_diff(text: &str) -> Check {
    let mut first_error: Option<String> = None;
    for block in diff_blocks(text) {
        match diff_block_problem(&block) {
            None => return Check::Ok,
            Some(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Check::Wrong(first_error.unwrap_or_else(|| NO_DIFF.to_string()))
}

/// Contents of the fenced code blocks tagged `diff` or `patch`; a diff in prose or an untagged
/// fence is not taken, since the phase's answer is meant to be applied mechanically.
fn diff_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let lang = info.split_whitespace().next().unwrap_or("");
                if lang.eq_ignore_ascii_case("diff") || lang.eq_ignore_ascii_case("patch") {
                    open = Some(String::new());
                }
            }
            Event::Text(t) => {
                if let Some(b) = open.as_mut() {
                    b.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some(b) = open.take() {
                    blocks.push(b);
                }
            }
            _ => {}
        }
    }
    blocks
}

/// What keeps one diff block from being a well-formed unified diff, if anything.
fn diff_block_problem(block: &str) -> Option<String> {
    let not_well_formed = |e: &dyn std::fmt::Display| {
        format!("the diff block is not a well-formed unified diff: {e}")
    };
    // Bare hunks have no file headers, which the multi-file parser requires; a diff with headers
    // may cover several files, which the single-file parser refuses.
    let bare = block
        .lines()
        .find(|l| l.starts_with("--- ") || l.starts_with("+++ ") || l.starts_with("@@ "))
        .is_some_and(|l| l.starts_with("@@ "));
    let patches: Vec<Patch<'_, str>> = if bare {
        match Patch::from_str(block) {
            Ok(p) => vec![p],
            Err(e) => return Some(not_well_formed(&e)),
        }
    } else {
        let mut patches = Vec::new();
        for file in PatchSet::parse(block, ParseOptions::unidiff()) {
            match file {
                Ok(f) => {
                    if let PatchKind::Text(p) = f.into_patch() {
                        patches.push(p);
                    }
                }
                Err(e) => return Some(not_well_formed(&e)),
            }
        }
        patches
    };

    let hunks: usize = patches.iter().map(|p| p.hunks().len()).sum();
    if hunks == 0 {
        return Some(
            "the diff block has no hunk (an \"@@ -a,b +c,d @@\" line and its lines)".into(),
        );
    }
    // The parsers skip lines they cannot place, so a hunk header hidden among them would be lost.
    let headers = block.lines().filter(|l| l.starts_with("@@")).count();
    if headers != hunks {
        return Some(
            "a \"@@\" line in the diff block does not start a hunk: it follows lines that belong to no hunk".into(),
        );
    }
    for hunk in patches.iter().flat_map(|p| p.hunks()) {
        if let Some(problem) = overlong_hunk(block, hunk) {
            return Some(problem);
        }
    }
    None
}

/// The parser stops a hunk once its header's counts are met and ignores what follows, so a hunk
/// with more lines than its header says would pass; the line after it must not be a hunk line.
fn overlong_hunk(block: &str, hunk: &diffy::Hunk<'_, str>) -> Option<String> {
    let last = match hunk.lines().last()? {
        diffy::Line::Context(s) | diffy::Line::Delete(s) | diffy::Line::Insert(s) => *s,
    };
    let end = offset_in(block, last)? + last.len();
    let mut rest = &block[end..];
    // A line cut short by "\ No newline at end of file" ends before its newline.
    if !block[..end].ends_with('\n') {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    let next = rest
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('\\'))?;
    let is_file_header = next.starts_with("--- ") || next.starts_with("+++ ");
    let is_hunk_line = next.starts_with([' ', '+', '-']);
    if is_hunk_line && !is_file_header {
        let (old, new) = (hunk.old_range(), hunk.new_range());
        return Some(format!(
            "the hunk \"@@ -{},{} +{},{} @@\" has more lines than its header counts",
            old.start(),
            old.len(),
            new.start(),
            new.len()
        ));
    }
    None
}

// The parser's lines borrow from the block, so their position is recoverable from the address.
fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start + inner.len() <= outer.len()).then_some(start)
}

fn check_verdict(text: &str) -> Check {
    let body = text.trim_end();
    let (above, last) = match body.rfind('\n') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => ("", body),
    };
    let word = last
        .trim()
        .split_once(':')
        .filter(|(label, _)| label.eq_ignore_ascii_case("VERDICT"))
        .map(|(_, word)| word.trim_start());
    match word {
        Some(w) if w.eq_ignore_ascii_case("APPROVE") => Check::Approve,
        Some(w) if w.eq_ignore_ascii_case("REJECT") => {
            let reasons = above.trim();
            if reasons.is_empty() {
                Check::Wrong(REJECT_WITHOUT_REASONS.to_string())
            } else {
                Check::Reject(reasons.to_string())
            }
        }
        _ => Check::Wrong(NO_VERDICT.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        Validator::from_json(&v).unwrap_err()
    }

    fn wrong(msg: &str) -> Check {
        Check::Wrong(msg.to_string())
    }

    // --- from_json ---------------------------------------------------------------------------

    #[test]
    fn reads_each_kind() {
        for (v, kind) in [
            (json!({"kind": "diff"}), "diff"),
            (json!({"kind": "verdict_line"}), "verdict_line"),
            (json!({"kind": "none"}), "none"),
            (
                json!({"kind": "sections", "sections": [{"heading": "Plan"}]}),
                "sections",
            ),
        ] {
            let validator = Validator::from_json(&v).unwrap();
            assert_eq!(validator.kind(), kind);
            assert_eq!(validator.to_json(), v, "round trip of {v}");
        }
        assert_eq!(
            Validator::from_json(&json!({"kind": "diff"})),
            Ok(Validator::Diff)
        );
        assert_eq!(
            Validator::from_json(&json!({"kind": "verdict_line"})),
            Ok(Validator::VerdictLine)
        );
        assert_eq!(
            Validator::from_json(&json!({"kind": "none"})),
            Ok(Validator::None)
        );
    }

    #[test]
    fn reads_section_rules() {
        let v = json!({"kind": "sections", "sections": [
            {"heading": " Plan "},
            {"heading": "Steps", "numbered": true},
            {"heading": "Risks", "numbered": false},
        ]});
        assert_eq!(
            Validator::from_json(&v),
            Ok(Validator::Sections(vec![
                SectionRule {
                    heading: "Plan".into(),
                    numbered: false
                },
                SectionRule {
                    heading: "Steps".into(),
                    numbered: true
                },
                SectionRule {
                    heading: "Risks".into(),
                    numbered: false
                },
            ]))
        );
    }

    #[test]
    fn spec_json_is_the_stored_form_of_spec() {
        assert_eq!(
            Validator::spec_json(),
            json!({"kind": "sections", "sections": [
                {"heading": "Summary"},
                {"heading": "Context"},
                {"heading": "Acceptance Criteria", "numbered": true},
                {"heading": "TDD Plan"},
                {"heading": "Out of Scope"},
                {"heading": "Test Command"},
            ]})
        );
        assert_eq!(
            Validator::from_json(&Validator::spec_json()),
            Ok(Validator::spec())
        );
        assert_eq!(Validator::spec().kind(), "sections");
    }

    #[test]
    fn refuses_what_is_not_a_validator_and_names_the_kinds() {
        for v in [
            json!("diff"),
            json!(null),
            json!(["diff"]),
            json!(3),
            json!({}),
            json!({"kind": 1}),
            json!({"kind": null}),
            json!({"kind": "regex"}),
            json!({"kind": "Diff"}),
            json!({"kind": ""}),
            json!({"type": "diff"}),
        ] {
            let e = err(v.clone());
            assert!(
                e.contains("the kinds are sections, diff, verdict_line, none"),
                "{v}: {e}"
            );
        }
        assert_eq!(
            err(json!({"kind": "regex"})),
            "unknown validator kind \"regex\"; the kinds are sections, diff, verdict_line, none"
        );
        assert_eq!(
            err(json!({})),
            "a validator needs a \"kind\"; the kinds are sections, diff, verdict_line, none"
        );
        assert!(err(json!("diff")).starts_with("a validator must be a JSON object"));
    }

    #[test]
    fn long_bad_values_are_cut_short_in_messages() {
        let kind = "x".repeat(10_000);
        let e = err(json!({ "kind": kind }));
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("..."));
    }

    #[test]
    fn refuses_unknown_keys() {
        assert_eq!(
            err(json!({"kind": "diff", "strict": true})),
            "validator of kind \"diff\" has an unknown key \"strict\"; its keys are kind"
        );
        assert!(err(json!({"kind": "none", "sections": []})).contains("unknown key \"sections\""));
        assert!(err(json!({"kind": "verdict_line", "x": 1})).contains("unknown key \"x\""),);
        assert_eq!(
            err(json!({"kind": "sections", "sections": [{"heading": "A"}], "order": "any"})),
            "validator of kind \"sections\" has an unknown key \"order\"; its keys are kind, sections"
        );
        assert_eq!(
            err(json!({"kind": "sections", "sections": [{"heading": "A", "numberd": true}]})),
            "sections[0] has an unknown key \"numberd\"; its keys are heading, numbered"
        );
    }

    #[test]
    fn refuses_malformed_section_lists() {
        for v in [
            json!({"kind": "sections"}),
            json!({"kind": "sections", "sections": []}),
            json!({"kind": "sections", "sections": "Summary"}),
            json!({"kind": "sections", "sections": {"heading": "Summary"}}),
        ] {
            assert!(
                err(v.clone()).contains("needs a non-empty \"sections\" list"),
                "{v}"
            );
        }
        let one = |section: Value| {
            err(json!({"kind": "sections", "sections": [{"heading": "A"}, section]}))
        };
        assert_eq!(
            one(json!("Summary")),
            "sections[1] must be an object such as {\"heading\":\"Summary\"}, not \"Summary\""
        );
        assert_eq!(one(json!({})), "sections[1] needs a \"heading\" string");
        assert_eq!(
            one(json!({"heading": 3})),
            "sections[1] needs a \"heading\" string"
        );
        assert_eq!(
            one(json!({"heading": ""})),
            "sections[1] has an empty \"heading\""
        );
        assert_eq!(
            one(json!({"heading": "   "})),
            "sections[1] has an empty \"heading\""
        );
        assert_eq!(
            one(json!({"heading": "## Plan"})),
            "sections[1] heading \"## Plan\" must be the title without its leading \"#\"s"
        );
        assert_eq!(
            one(json!({"heading": "Plan\nSteps"})),
            "sections[1] heading must be a single line"
        );
        assert_eq!(
            one(json!({"heading": "B", "numbered": "yes"})),
            "sections[1] \"numbered\" must be true or false, not \"yes\""
        );
        assert_eq!(
            one(json!({"heading": "B", "numbered": null})),
            "sections[1] \"numbered\" must be true or false, not null"
        );
    }

    #[test]
    fn refuses_duplicate_headings_ignoring_case_and_colon() {
        let v = |a: &str, b: &str| json!({"kind": "sections", "sections": [{"heading": a}, {"heading": b}]});
        assert_eq!(
            err(v("Summary", "summary:")),
            "sections[1] heading \"summary:\" repeats \"Summary\"; each section may be listed once"
        );
        assert!(Validator::from_json(&v("Summary", "SUMMARY")).is_err());
        assert!(Validator::from_json(&v("Résumé", "RÉSUMÉ")).is_err());
        assert!(Validator::from_json(&v("Summary", "Summary 2")).is_ok());
    }

    // --- sections ----------------------------------------------------------------------------

    fn good_spec() -> String {
        "# Health endpoint\n\n## Summary\nAdd GET /healthz.\n\n## Context\nOps need a probe.\n\n\
         ## Acceptance Criteria\n1. Returns 200.\n2. Body has the git sha.\n\n## TDD Plan\n- write a failing test\n\n\
         ## Out of Scope\nAuth.\n\n## Test Command\n```sh\ncargo test\n```\n"
            .to_string()
    }

    /// The spec validator and `spec::validate` agree, message for message.
    fn spec_says(text: &str) -> Check {
        let generic = Validator::spec().check(text);
        let legacy = match spec::validate(text) {
            Ok(()) => Check::Ok,
            Err(p) => Check::Wrong(p.to_string()),
        };
        assert_eq!(
            generic, legacy,
            "spec.rs and validate.rs disagree on {text:?}"
        );
        generic
    }

    #[test]
    fn spec_validator_reproduces_every_spec_message() {
        let good = good_spec();
        assert_eq!(spec_says(&good), Check::Ok);
        assert_eq!(
            spec_says(&good.replace("## Test Command\n```sh\ncargo test\n```\n", "")),
            wrong("section \"## Test Command\" is missing")
        );
        assert_eq!(
            spec_says(&good.replace("Ops need a probe.\n", "")),
            wrong("section \"## Context\" is empty")
        );
        assert_eq!(
            spec_says(&good.replace("```sh\ncargo test\n```\n", "```sh\n```\n")),
            wrong("section \"## Test Command\" is empty")
        );
        assert_eq!(
            spec_says(&format!("{good}\n## Summary\nagain\n")),
            wrong("section \"## Summary\" appears more than once")
        );
        assert_eq!(
            spec_says(
                &good
                    .replace("## Summary\nAdd GET /healthz.\n\n", "")
                    .replace(
                        "## Out of Scope",
                        "## Summary\nAdd GET /healthz.\n\n## Out of Scope"
                    )
            ),
            wrong("section \"## Summary\" must come before \"## Context\"")
        );
        assert_eq!(
            spec_says(&good.replace(
                "1. Returns 200.\n2. Body has the git sha.",
                "- Returns 200."
            )),
            wrong("section \"## Acceptance Criteria\" has no numbered item")
        );
        assert_eq!(
            spec_says(&good.replace(
                "## Out of Scope\nAuth.\n\n## Test Command\n```sh\ncargo test\n```\n",
                "## Out of Scope\nAuth.\n\n```\n## Test Command\ncargo test\n```\n",
            )),
            wrong("section \"## Test Command\" is missing")
        );
        assert_eq!(
            spec_says("## Summary\nonly"),
            wrong("section \"## Context\" is missing")
        );
        assert_eq!(spec_says(""), wrong("section \"## Summary\" is missing"));
        // Tolerated: case, a trailing colon, extra sections, subheadings as content, setext.
        assert_eq!(
            spec_says(
                &good
                    .replace("## Context", "## context:")
                    .replace("## Out of Scope", "## Notes\nextra\n\n## Out of Scope")
                    .replace("Auth.\n", "### Why\n")
                    .replace("## Summary\n", "Summary\n-------\n")
            ),
            Check::Ok
        );
    }

    #[test]
    fn problems_come_in_a_fixed_order() {
        // A duplicate is found while reading, before anything is known to be missing.
        assert_eq!(
            spec_says("## Context\na\n## Context\nb\n"),
            wrong("section \"## Context\" appears more than once")
        );
        // Missing before misordered before empty before unnumbered.
        let rules = Validator::Sections(vec![
            SectionRule {
                heading: "A".into(),
                numbered: true,
            },
            SectionRule {
                heading: "B".into(),
                numbered: false,
            },
            SectionRule {
                heading: "C".into(),
                numbered: false,
            },
        ]);
        assert_eq!(
            rules.check("## B\n\n## A\n"),
            wrong("section \"## C\" is missing")
        );
        assert_eq!(
            rules.check("## B\n\n## A\n\n## C\n"),
            wrong("section \"## A\" must come before \"## B\"")
        );
        assert_eq!(
            rules.check("## A\n- x\n## B\n\n## C\n"),
            wrong("section \"## B\" is empty")
        );
        assert_eq!(
            rules.check("## A\n- x\n## B\nb\n## C\nc\n"),
            wrong("section \"## A\" has no numbered item")
        );
        assert_eq!(rules.check("## A\n1. x\n## B\nb\n## C\nc\n"), Check::Ok);
    }

    #[test]
    fn custom_sections_use_the_configured_headings() {
        let v = Validator::from_json(&json!({"kind": "sections", "sections": [
            {"heading": "Plan"},
            {"heading": "Steps", "numbered": true},
        ]}))
        .unwrap();
        assert_eq!(v.check("## Plan\np\n\n## Steps\n1. one\n"), Check::Ok);
        assert_eq!(
            v.check("## PLAN:\np\n\n## Other\nx\n\n## steps\n3) one\n"),
            Check::Ok
        );
        assert_eq!(
            v.check("## Plan\np\n\n## Steps\n- one\n"),
            wrong("section \"## Steps\" has no numbered item")
        );
        assert_eq!(
            v.check("# Plan\np\n## Steps\n1. a\n"),
            wrong("section \"## Plan\" is missing")
        );
        assert_eq!(
            v.check("### Plan\np\n## Steps\n1. a\n"),
            wrong("section \"## Plan\" is missing")
        );
        // A numbered item under an H1 title or another section does not count.
        assert_eq!(
            v.check("## Plan\np\n## Steps\ns\n# Appendix\n1. a\n## Extra\n1. b\n"),
            wrong("section \"## Steps\" has no numbered item")
        );
    }

    #[test]
    fn section_content_may_be_code_or_html() {
        let v =
            Validator::from_json(&json!({"kind": "sections", "sections": [{"heading": "Cmd"}]}))
                .unwrap();
        assert_eq!(v.check("## Cmd\n`make`\n"), Check::Ok);
        assert_eq!(v.check("## Cmd\n<div>x</div>\n"), Check::Ok);
        assert_eq!(
            v.check("## Cmd\n   \n---\n"),
            wrong("section \"## Cmd\" is empty")
        );
    }

    #[test]
    fn headings_match_case_insensitively_beyond_ascii() {
        let v =
            Validator::from_json(&json!({"kind": "sections", "sections": [{"heading": "Résumé"}]}))
                .unwrap();
        assert_eq!(v.check("## RÉSUMÉ:\ntext\n"), Check::Ok);
    }

    // --- diff --------------------------------------------------------------------------------

    const HUNK: &str = "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,3 +1,3 @@\n fn a() {}\n-fn b() {}\n+fn b() -> u8 { 1 }\n fn c() {}\n";

    fn fenced(info: &str, body: &str) -> String {
        format!("Here is the change.\n\n```{info}\n{body}```\n\nDone.\n")
    }

    #[test]
    fn a_fenced_well_formed_diff_is_ok() {
        assert_eq!(Validator::Diff.check(&fenced("diff", HUNK)), Check::Ok);
        assert_eq!(Validator::Diff.check(&fenced("patch", HUNK)), Check::Ok);
        assert_eq!(
            Validator::Diff.check(&fenced("Diff title=x", HUNK)),
            Check::Ok
        );
        assert_eq!(
            Validator::Diff.check(&format!("~~~diff\n{HUNK}~~~\n")),
            Check::Ok
        );
        // Inside a list item the fence is indented; the parser hands back the unindented body.
        let indented: String = HUNK.lines().map(|l| format!("   {l}\n")).collect();
        assert_eq!(
            Validator::Diff.check(&format!("1. Apply:\n\n   ```diff\n{indented}   ```\n")),
            Check::Ok
        );
    }

    #[test]
    fn bare_hunks_git_headers_and_several_files_are_ok() {
        let bare = "@@ -1,2 +1,2 @@\n-a\n+b\n c\n";
        assert_eq!(Validator::Diff.check(&fenced("diff", bare)), Check::Ok);

        let git = "diff --git a/x.txt b/x.txt\nindex 1234567..89abcde 100644\n--- a/x.txt\n+++ b/x.txt\n\
                   @@ -1 +1 @@\n-old\n+new\ndiff --git a/y.txt b/y.txt\nnew file mode 100644\n\
                   --- /dev/null\n+++ b/y.txt\n@@ -0,0 +1,2 @@\n+one\n+two\n";
        assert_eq!(Validator::Diff.check(&fenced("diff", git)), Check::Ok);

        let two_hunks =
            "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n-a\n+A\n b\n@@ -10,1 +10,2 @@\n j\n+k\n";
        assert_eq!(Validator::Diff.check(&fenced("diff", two_hunks)), Check::Ok);
    }

    #[test]
    fn no_newline_markers_and_blank_lines_are_ok() {
        let no_newline = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n";
        assert_eq!(
            Validator::Diff.check(&fenced("diff", no_newline)),
            Check::Ok
        );
        // A blank line before the closing fence is presentation, not an extra hunk line.
        assert_eq!(
            Validator::Diff.check(&fenced("diff", &format!("{HUNK}\n"))),
            Check::Ok
        );
        // Some tools drop the space of an empty context line.
        let empty_context = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n";
        assert_eq!(
            Validator::Diff.check(&fenced("diff", empty_context)),
            Check::Ok
        );
    }

    #[test]
    fn a_diff_outside_a_fence_is_refused() {
        assert_eq!(Validator::Diff.check(HUNK), wrong(NO_DIFF));
        assert_eq!(Validator::Diff.check(&fenced("", HUNK)), wrong(NO_DIFF));
        assert_eq!(Validator::Diff.check(&fenced("rust", HUNK)), wrong(NO_DIFF));
        let indented_block: String = HUNK.lines().map(|l| format!("    {l}\n")).collect();
        assert_eq!(
            Validator::Diff.check(&format!("Change:\n\n{indented_block}")),
            wrong(NO_DIFF)
        );
        assert_eq!(Validator::Diff.check(""), wrong(NO_DIFF));
    }

    #[test]
    fn a_hunk_with_too_few_lines_is_refused() {
        let short = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n";
        match Validator::Diff.check(&fenced("diff", short)) {
            Check::Wrong(m) => {
                assert!(
                    m.starts_with("the diff block is not a well-formed unified diff"),
                    "{m}"
                );
                assert!(m.contains("hunk header does not match hunk"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let bare = "@@ -1,2 +1,2 @@\n-a\n+b\n";
        assert!(
            matches!(Validator::Diff.check(&fenced("diff", bare)), Check::Wrong(m) if m.contains("hunk header does not match hunk"))
        );
    }

    #[test]
    fn a_hunk_with_too_many_lines_is_refused() {
        for body in [
            "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n+d\n",
            "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n\n d\n",
            "--- a/f\n+++ b/f\n@@ -1,1 +1,1 @@\n-b\n+c\n e\n",
            "@@ -1,1 +1,1 @@\n-b\n+c\n-d\n",
        ] {
            let check = Validator::Diff.check(&fenced("diff", body));
            assert!(
                matches!(&check, Check::Wrong(m) if m.contains("has more lines than its header counts")),
                "{body:?}: {check:?}"
            );
        }
        assert_eq!(
            Validator::Diff.check(&fenced("diff", "@@ -1 +1 @@\n-b\n+c\n+d\n")),
            wrong("the hunk \"@@ -1,1 +1,1 @@\" has more lines than its header counts")
        );
    }

    #[test]
    fn a_hunk_lost_behind_junk_is_refused() {
        let junk = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\nand then\n@@ -5 +5 @@\n-e\n+f\n";
        assert_eq!(
            Validator::Diff.check(&fenced("diff", junk)),
            wrong(
                "a \"@@\" line in the diff block does not start a hunk: it follows lines that belong to no hunk"
            )
        );
        let bare_junk = "@@ -1 +1 @@\n-a\n+b\nand then\n@@ -5 +5 @@\n-e\n+f\n";
        assert!(matches!(
            Validator::Diff.check(&fenced("diff", bare_junk)),
            Check::Wrong(_)
        ));
    }

    #[test]
    fn a_diff_block_without_a_hunk_is_refused() {
        assert_eq!(
            Validator::Diff.check(&fenced("diff", "--- a/f\n+++ b/f\n")),
            wrong("the diff block has no hunk (an \"@@ -a,b +c,d @@\" line and its lines)")
        );
        assert!(matches!(
            Validator::Diff.check(&fenced("diff", "just prose\n")),
            Check::Wrong(m) if m.starts_with("the diff block is not a well-formed unified diff")
        ));
        assert!(matches!(
            Validator::Diff.check(&fenced("diff", "@@ -x +1 @@\n+a\n")),
            Check::Wrong(m) if m.starts_with("the diff block is not a well-formed unified diff")
        ));
        assert!(matches!(
            Validator::Diff.check(&fenced("diff", "")),
            Check::Wrong(_)
        ));
    }

    #[test]
    fn one_good_block_is_enough_and_the_first_error_is_reported() {
        let bad = fenced("diff", "@@ -1,2 +1,2 @@\n-a\n");
        let good = fenced("diff", HUNK);
        assert_eq!(Validator::Diff.check(&format!("{bad}\n{good}")), Check::Ok);
        let first = Validator::Diff.check(&bad);
        let both =
            Validator::Diff.check(&format!("{bad}\n{}", fenced("diff", "--- a/f\n+++ b/f\n")));
        assert_eq!(both, first);
    }

    // --- verdict_line ------------------------------------------------------------------------

    #[test]
    fn approve_and_reject_verdicts() {
        let v = Validator::VerdictLine;
        assert_eq!(v.check("Looks good.\n\nVERDICT: APPROVE"), Check::Approve);
        assert_eq!(v.check("VERDICT: APPROVE\n\n  \n"), Check::Approve);
        assert_eq!(v.check("  verdict:approve  "), Check::Approve);
        assert_eq!(v.check("ok\r\nVERDICT: Approve\r\n"), Check::Approve);
        assert_eq!(
            v.check("## Review\n\n1. The test does not cover 404.\n2. Typo in README.\n\nVERDICT: REJECT\n"),
            Check::Reject("## Review\n\n1. The test does not cover 404.\n2. Typo in README.".into())
        );
        assert_eq!(
            v.check("\n\n  Missing tests.  \n VERDICT: reject \n"),
            Check::Reject("Missing tests.".into())
        );
    }

    #[test]
    fn reject_needs_reasons() {
        for text in [
            "VERDICT: REJECT",
            "\n \nVERDICT: REJECT\n",
            "   \n\tVERDICT: REJECT",
        ] {
            assert_eq!(
                Validator::VerdictLine.check(text),
                wrong("a REJECT verdict needs its reasons above the verdict line"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_verdict_must_be_the_whole_last_line() {
        for text in [
            "",
            "   \n",
            "Looks good.",
            "VERDICT: APPROVE\nThanks!",
            "VERDICT: APPROVE because it works",
            "**VERDICT: APPROVE**",
            "VERDICT: MAYBE",
            "VERDICT:",
            "Verdict - APPROVE",
            "VERDICT APPROVE",
            "The VERDICT: APPROVE",
        ] {
            assert_eq!(
                Validator::VerdictLine.check(text),
                wrong("the last line is not VERDICT: APPROVE or VERDICT: REJECT"),
                "{text:?}"
            );
        }
    }

    // --- none --------------------------------------------------------------------------------

    #[test]
    fn none_accepts_anything_not_blank() {
        assert_eq!(Validator::None.check("x"), Check::Ok);
        assert_eq!(Validator::None.check("  \n  y\n"), Check::Ok);
        for blank in ["", " ", "\n\t\r\n"] {
            assert_eq!(Validator::None.check(blank), wrong("the answer is empty"));
        }
    }
}
