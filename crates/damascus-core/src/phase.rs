//! Phases as data: a `damascus.phases` row checked and turned into what a cycle runs, how its answer is judged, and where a verdict moves the ticket.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::backoff;
use crate::template::{PLACEHOLDERS, Template, Vars};
use crate::validate::{Check, Validator};
use crate::wire::{CallError, Completion, Prompt};

/// refine_spec may never run with a smaller cap: 1500 truncated specs before their last section.
pub const REFINE_SPEC_MIN_MAX_TOKENS: u32 = 3000;
/// States no phase claims: a ticket there is finished.
pub const TERMINAL_STATES: [&str; 3] = ["done", "failed", "cancelled"];
/// Where a ticket goes when it runs out of attempts or rejections.
pub const FAILED: &str = "failed";
/// The verdict of an approving review or approval decision.
pub const APPROVED: &str = "approved";
/// The verdict of a rejecting review or approval decision; its reasons become the ticket's feedback.
pub const REJECTED: &str = "rejected";

/// Whether a worker calls the model for this phase or a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    Llm,
    Approval,
}

impl PhaseKind {
    pub fn parse(s: &str) -> Result<PhaseKind, PhaseError> {
        match s {
            "llm" => Ok(PhaseKind::Llm),
            "approval" => Ok(PhaseKind::Approval),
            other => Err(PhaseError::Kind(other.to_string())),
        }
    }
}

/// A phase row as stored, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseRow {
    pub name: String,
    pub kind: String,
    pub from_state: String,
    pub transitions: Value,
    pub max_attempts: i32,
    pub max_rejections: i32,
    pub max_tokens: i32,
    pub model: Option<String>,
    pub timeout_s: Option<i32>,
    pub system_prompt: String,
    pub prompt_template: String,
    pub validator: Value,
    pub verdict_prefix: Option<String>,
}

/// A checked phase, ready to build prompts and judge answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseDef {
    pub name: String,
    pub kind: PhaseKind,
    pub from_state: String,
    pub transitions: BTreeMap<String, String>,
    pub max_attempts: i32,
    pub max_rejections: i32,
    pub max_tokens: u32,
    pub model: Option<String>,
    pub timeout: Option<Duration>,
    pub system_prompt: String,
    pub template: Template,
    pub validator: Validator,
    pub verdict_prefix: String,
}

/// Why a phase definition is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseError {
    MaxTokensTooLow {
        phase: String,
        max_tokens: i32,
        min: u32,
    },
    Kind(String),
    Template(String),
    Validator(String),
    Transitions(String),
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseError::MaxTokensTooLow {
                phase,
                max_tokens,
                min,
            } => write!(
                f,
                "phase {phase} has max_tokens {max_tokens}, below its floor of {min}"
            ),
            PhaseError::Kind(k) => write!(f, "unknown phase kind {k:?}; allowed: llm, approval"),
            PhaseError::Template(m) => write!(f, "prompt_template: {m}"),
            PhaseError::Validator(m) => write!(f, "validator: {m}"),
            PhaseError::Transitions(m) => write!(f, "transitions: {m}"),
        }
    }
}

impl PhaseError {
    /// What a user can do about it, shown as the error's hint.
    pub fn hint(&self) -> String {
        match self {
            PhaseError::MaxTokensTooLow { .. } => {
                "max_tokens must be at least 1, and at least 3000 for refine_spec (a 1500 cap truncated specs).".into()
            }
            PhaseError::Kind(_) => "Set kind to 'llm' or 'approval'.".into(),
            PhaseError::Template(_) => format!("A template may use {PLACEHOLDERS}."),
            PhaseError::Validator(_) => {
                "Use {\"kind\": \"sections\", \"sections\": [...]}, {\"kind\": \"diff\"}, {\"kind\": \"verdict_line\"} or {\"kind\": \"none\"}.".into()
            }
            PhaseError::Transitions(_) => {
                "transitions maps verdict names to states, e.g. {\"spec_ok\": \"specified\"}.".into()
            }
        }
    }
}

/// The smallest max_tokens a phase of this name may use.
pub fn min_max_tokens(phase: &str) -> u32 {
    if phase == "refine_spec" {
        REFINE_SPEC_MIN_MAX_TOKENS
    } else {
        1
    }
}

fn parse_transitions(v: &Value) -> Result<BTreeMap<String, String>, PhaseError> {
    let obj = v
        .as_object()
        .ok_or_else(|| PhaseError::Transitions("must be a JSON object".into()))?;
    let mut out = BTreeMap::new();
    for (verdict, target) in obj {
        if verdict.trim().is_empty() {
            return Err(PhaseError::Transitions("a verdict name is empty".into()));
        }
        let target = target.as_str().filter(|s| !s.trim().is_empty() && s.len() <= 63).ok_or_else(|| {
            PhaseError::Transitions(format!(
                "verdict {verdict:?} must map to a state name (a non-empty string of at most 63 bytes), not {target}"
            ))
        })?;
        out.insert(verdict.clone(), target.to_string());
    }
    Ok(out)
}

/// The per-row rules, shared by the table's trigger and by a worker loading the row: what one refuses,
/// the other could not run.
pub fn check(
    name: &str,
    kind: &str,
    max_tokens: i32,
    prompt_template: &str,
    validator: &Value,
    transitions: &Value,
) -> Result<(PhaseKind, Template, Validator, BTreeMap<String, String>), PhaseError> {
    let kind = PhaseKind::parse(kind)?;
    let min = min_max_tokens(name);
    if max_tokens < 1 || (max_tokens as i64) < i64::from(min) {
        return Err(PhaseError::MaxTokensTooLow {
            phase: name.to_string(),
            max_tokens,
            min,
        });
    }
    let template = Template::parse(prompt_template).map_err(PhaseError::Template)?;
    let validator = Validator::from_json(validator).map_err(PhaseError::Validator)?;
    let transitions = parse_transitions(transitions)?;
    Ok((kind, template, validator, transitions))
}

impl PhaseDef {
    pub fn from_row(row: PhaseRow) -> Result<PhaseDef, PhaseError> {
        let (kind, template, validator, transitions) = check(
            &row.name,
            &row.kind,
            row.max_tokens,
            &row.prompt_template,
            &row.validator,
            &row.transitions,
        )?;
        Ok(PhaseDef {
            verdict_prefix: row.verdict_prefix.unwrap_or_else(|| row.name.clone()),
            name: row.name,
            kind,
            from_state: row.from_state,
            transitions,
            max_attempts: row.max_attempts.max(1),
            max_rejections: row.max_rejections.max(1),
            max_tokens: u32::try_from(row.max_tokens).unwrap_or(1),
            model: row.model.filter(|m| !m.trim().is_empty()),
            timeout: row
                .timeout_s
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            system_prompt: row.system_prompt,
            template,
            validator,
        })
    }

    /// The request for one ticket.
    pub fn prompt(&self, ticket: &TicketInput) -> Prompt {
        let attempt = ticket.attempts + 1;
        let mut user = self.template.render(&Vars {
            id: ticket.id,
            title: &ticket.title,
            body: &ticket.body,
            outputs: &ticket.outputs,
            feedback: ticket.feedback.as_deref(),
            attempt,
        });
        if ticket.attempts > 0 && !self.template.placeholders().iter().any(|p| p == "attempt") {
            user.push_str(&format!(
                "\n\n(This is attempt {attempt}; earlier answers were refused. Follow the instructions exactly.)"
            ));
        }
        Prompt {
            system: self.system_prompt.clone(),
            user,
            max_tokens: self.max_tokens,
        }
    }

    fn verdict_name(&self, kind: Kind) -> String {
        match kind {
            Kind::Ok => format!("{}_ok", self.verdict_prefix),
            Kind::Wrong => format!("{}_wrong", self.verdict_prefix),
            Kind::Truncated => format!("{}_truncated", self.verdict_prefix),
            Kind::Approved => APPROVED.to_string(),
            Kind::Rejected => REJECTED.to_string(),
            other => other.generic_name().to_string(),
        }
    }

    /// Judges a call's result. Pure: the verdict transaction applies what this returns.
    pub fn judge(&self, ticket: &TicketInput, result: &Result<Completion, CallError>) -> Judgement {
        let c = match result {
            // Refused for good, or answered with something that is not an answer: sending the same request
            // again would not help, so it costs an attempt like a wrong answer.
            Err(e) if e.refused() || matches!(e, CallError::Malformed { .. }) => {
                let kind = if e.refused() {
                    Kind::LlmRejected
                } else {
                    Kind::LlmBadResponse
                };
                let verdict = kind.generic_name().to_string();
                let detail = e.to_string().replace('\0', "\u{fffd}");
                let mv = self.decide(&verdict, ticket, Some(&detail), None);
                return Judgement {
                    verdict,
                    kind,
                    detail: mv.failure.clone().or(Some(detail)),
                    effect: Effect::Move(mv),
                };
            }
            Err(e) => {
                return Judgement {
                    verdict: Kind::LlmError.generic_name().to_string(),
                    kind: Kind::LlmError,
                    detail: Some(e.to_string().replace('\0', "\u{fffd}")),
                    effect: Effect::Retry {
                        delay: backoff::llm_error_delay(ticket.id, ticket.llm_errors.max(0) as u32),
                    },
                };
            }
            Ok(c) => c,
        };
        let (kind, detail) = if c.truncated() {
            (
                Kind::Truncated,
                Some(format!(
                    "the model stopped at max_tokens ({}) before finishing",
                    self.max_tokens
                )),
            )
        } else if c.text.contains('\0') {
            // Postgres text cannot hold NUL; storing such an answer would fail the verdict
            // transaction on every retry, so it is judged wrong instead.
            (
                Kind::Wrong,
                Some("the answer contains a NUL character".to_string()),
            )
        } else {
            match self.validator.check(&c.text) {
                Check::Ok => (Kind::Ok, None),
                Check::Approve => (Kind::Approved, None),
                Check::Reject(reasons) => (Kind::Rejected, Some(reasons)),
                Check::Wrong(problem) => (Kind::Wrong, Some(problem)),
            }
        };
        let verdict = self.verdict_name(kind);
        let output = (!c.text.contains('\0')).then(|| c.text.clone());
        let mv = self.decide(&verdict, ticket, detail.as_deref(), output);
        Judgement {
            verdict,
            kind,
            detail: mv.failure.clone().or(detail),
            effect: Effect::Move(mv),
        }
    }

    /// A ticket that has used all its attempts at this phase before this cycle's call (each claim
    /// counts one, and only a verdict gives it back or moves the ticket on) is failed instead of called again:
    /// its earlier cycles never reached a verdict, e.g. because the worker died during each call.
    pub fn exhausted(&self, ticket: &TicketInput) -> Option<Judgement> {
        if ticket.attempts < self.max_attempts {
            return None;
        }
        let reason = format!(
            "phase {} started {} times without a verdict that moved the ticket on (max_attempts {}); the worker may have died during each call",
            self.name, ticket.attempts, self.max_attempts
        );
        Some(Judgement {
            verdict: Kind::Error.generic_name().to_string(),
            kind: Kind::Error,
            detail: Some(reason.clone()),
            effect: Effect::Move(Move {
                state: FAILED.to_string(),
                attempts: ticket.attempts.max(0) + 1,
                rejections: ticket.rejections,
                feedback: ticket.feedback.clone(),
                output: None,
                failure: Some(reason),
            }),
        })
    }

    /// Where a content verdict moves the ticket: a verdict listed in `transitions` moves it there and resets
    /// attempts (a `rejected` one also counts toward `max_rejections` and leaves its reasons as feedback);
    /// any other verdict costs an attempt, and the last allowed attempt fails the ticket.
    pub fn decide(
        &self,
        verdict: &str,
        ticket: &TicketInput,
        reasons: Option<&str>,
        output: Option<String>,
    ) -> Move {
        let rejected = verdict == REJECTED;
        let rejections = ticket.rejections.max(0) + i32::from(rejected);
        let feedback = if rejected {
            reasons.map(str::to_string)
        } else {
            ticket.feedback.clone()
        };
        if rejected && rejections >= self.max_rejections {
            return Move {
                state: FAILED.to_string(),
                attempts: 0,
                rejections,
                feedback,
                output: None,
                failure: Some(format!(
                    "rejected {rejections} times in phase {} (max_rejections {}); last reasons: {}",
                    self.name,
                    self.max_rejections,
                    reasons.unwrap_or("none given")
                )),
            };
        }
        if let Some(target) = self.transitions.get(verdict) {
            return Move {
                state: target.clone(),
                attempts: 0,
                rejections,
                feedback,
                output: if rejected { None } else { output },
                failure: None,
            };
        }
        let attempts = ticket.attempts.max(0) + 1;
        if attempts >= self.max_attempts {
            return Move {
                state: FAILED.to_string(),
                attempts,
                rejections,
                feedback,
                output: None,
                failure: Some(format!(
                    "{verdict} {attempts} times in phase {} (max_attempts {}); last: {}",
                    self.name,
                    self.max_attempts,
                    reasons.unwrap_or("no detail")
                )),
            };
        }
        Move {
            state: ticket.state.clone(),
            attempts,
            rejections,
            feedback,
            output: None,
            failure: None,
        }
    }
}

/// What a phase reads about its ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketInput {
    pub id: i64,
    pub state: String,
    pub title: String,
    pub body: String,
    pub outputs: Value,
    pub feedback: Option<String>,
    pub attempts: i32,
    pub rejections: i32,
    pub llm_errors: i32,
}

/// The kind of verdict, independent of phase naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Wrong,
    Truncated,
    Approved,
    Rejected,
    LlmError,
    /// The API refused the request for good (a 4xx no retry fixes).
    LlmRejected,
    /// The API answered with something that is not an answer (not its wire format, not UTF-8, too large).
    LlmBadResponse,
    ClaimLost,
    Error,
    Interrupted,
}

impl Kind {
    /// Names of verdicts that do not depend on the phase.
    pub fn generic_name(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Wrong => "wrong",
            Kind::Truncated => "truncated",
            Kind::Approved => APPROVED,
            Kind::Rejected => REJECTED,
            Kind::LlmError => "llm_error",
            Kind::LlmRejected => "llm_rejected",
            Kind::LlmBadResponse => "llm_bad_response",
            Kind::ClaimLost => "claim_lost",
            Kind::Error => "error",
            Kind::Interrupted => "interrupted",
        }
    }
}

/// The ticket's new values after a content verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub state: String,
    pub attempts: i32,
    pub rejections: i32,
    pub feedback: Option<String>,
    /// The accepted answer, stored in `tickets.outputs` under the phase's name.
    pub output: Option<String>,
    /// Set when the move fails the ticket: why, for `last_error`.
    pub failure: Option<String>,
}

/// How the verdict transaction changes the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A content verdict: apply the move.
    Move(Move),
    /// Not the ticket's fault: no attempt consumed, retry after a delay.
    Retry { delay: Duration },
}

/// A judged result, ready for the verdict transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: String,
    pub kind: Kind,
    pub detail: Option<String>,
    pub effect: Effect,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(text: &str, stop: &str) -> Result<Completion, CallError> {
        Ok(Completion {
            text: text.into(),
            stop_reason: Some(stop.into()),
            input_tokens: Some(10),
            output_tokens: Some(20),
            ..Completion::default()
        })
    }

    fn good_spec() -> &'static str {
        "## Summary\ns\n## Context\nc\n## Acceptance Criteria\n1. a\n## TDD Plan\nt\n## Out of Scope\no\n## Test Command\ncargo test\n"
    }

    fn row(name: &str, validator: Value, transitions: Value) -> PhaseRow {
        PhaseRow {
            name: name.into(),
            kind: "llm".into(),
            from_state: "new".into(),
            transitions,
            max_attempts: 3,
            max_rejections: 3,
            max_tokens: 4000,
            model: None,
            timeout_s: None,
            system_prompt: "sys".into(),
            prompt_template: "Ticket #{{id}}: {{title}}\n\n{{body}}".into(),
            validator,
            verdict_prefix: Some("spec".into()),
        }
    }

    fn refine_spec() -> PhaseDef {
        PhaseDef::from_row(row(
            "refine_spec",
            Validator::spec_json(),
            json!({"spec_ok": "specified"}),
        ))
        .unwrap()
    }

    fn review() -> PhaseDef {
        let mut r = row(
            "review",
            json!({"kind": "verdict_line"}),
            json!({"approved": "done", "rejected": "specified"}),
        );
        r.from_state = "implemented".into();
        r.verdict_prefix = None;
        PhaseDef::from_row(r).unwrap()
    }

    fn ticket(state: &str) -> TicketInput {
        TicketInput {
            id: 7,
            state: state.into(),
            title: "Health".into(),
            body: "GET /healthz".into(),
            outputs: json!({"refine_spec": "the spec"}),
            feedback: None,
            attempts: 0,
            rejections: 0,
            llm_errors: 0,
        }
    }

    #[test]
    fn refine_spec_refuses_a_cap_below_3000_and_others_below_1() {
        let mut r = row("refine_spec", Validator::spec_json(), json!({}));
        r.max_tokens = 1500;
        assert_eq!(
            PhaseDef::from_row(r.clone()),
            Err(PhaseError::MaxTokensTooLow {
                phase: "refine_spec".into(),
                max_tokens: 1500,
                min: 3000
            })
        );
        r.name = "implement".into();
        assert!(PhaseDef::from_row(r.clone()).is_ok());
        r.max_tokens = 0;
        assert!(matches!(
            PhaseDef::from_row(r),
            Err(PhaseError::MaxTokensTooLow { min: 1, .. })
        ));
    }

    #[test]
    fn unknown_placeholders_validators_and_kinds_are_refused() {
        let mut r = row("p", json!({"kind": "none"}), json!({}));
        r.prompt_template = "{{titel}}".into();
        assert!(matches!(
            PhaseDef::from_row(r.clone()),
            Err(PhaseError::Template(_))
        ));
        r.prompt_template = "{{title}}".into();
        r.validator = json!({"kind": "regex"});
        assert!(matches!(
            PhaseDef::from_row(r.clone()),
            Err(PhaseError::Validator(_))
        ));
        r.validator = json!({"kind": "none"});
        r.kind = "human".into();
        assert!(matches!(
            PhaseDef::from_row(r.clone()),
            Err(PhaseError::Kind(_))
        ));
        r.kind = "approval".into();
        r.transitions = json!({"approved": 3});
        assert!(matches!(
            PhaseDef::from_row(r),
            Err(PhaseError::Transitions(_))
        ));
    }

    #[test]
    fn prompt_carries_the_ticket_the_cap_and_the_attempt() {
        let p = refine_spec();
        let mut t = ticket("new");
        t.attempts = 1;
        let prompt = p.prompt(&t);
        assert_eq!(prompt.max_tokens, 4000);
        assert!(prompt.user.starts_with("Ticket #7: Health\n\nGET /healthz"));
        assert!(prompt.user.contains("attempt 2"));
        assert_eq!(prompt.system, "sys");
    }

    #[test]
    fn judges_each_outcome_of_a_sections_phase() {
        let p = refine_spec();
        let t = ticket("new");
        let ok = p.judge(&t, &completion(good_spec(), "end_turn"));
        assert_eq!((ok.verdict.as_str(), ok.kind), ("spec_ok", Kind::Ok));
        let Effect::Move(m) = &ok.effect else {
            panic!("{ok:?}")
        };
        assert_eq!(
            (m.state.as_str(), m.attempts, m.output.as_deref()),
            ("specified", 0, Some(good_spec()))
        );

        // Truncation wins even when the text happens to parse.
        let cut = p.judge(&t, &completion(good_spec(), "max_tokens"));
        assert_eq!(cut.verdict, "spec_truncated");
        let Effect::Move(m) = &cut.effect else {
            panic!()
        };
        assert_eq!(
            (m.state.as_str(), m.attempts, m.output.clone()),
            ("new", 1, None)
        );
        // OpenAI says "length" for the same thing.
        assert_eq!(
            p.judge(&t, &completion(good_spec(), "length")).verdict,
            "spec_truncated"
        );

        let wrong = p.judge(&t, &completion("## Summary\nonly", "end_turn"));
        assert_eq!(wrong.verdict, "spec_wrong");
        assert_eq!(
            wrong.detail.as_deref(),
            Some("section \"## Context\" is missing")
        );

        let mut t2 = t.clone();
        t2.llm_errors = 2;
        let err = p.judge(
            &t2,
            &Err(CallError::Http {
                status: 429,
                message: "rate".into(),
            }),
        );
        assert_eq!(err.verdict, "llm_error");
        assert_eq!(
            err.effect,
            Effect::Retry {
                delay: backoff::llm_error_delay(7, 2)
            }
        );
        assert_eq!(err.detail.as_deref(), Some("HTTP 429: rate"));
    }

    #[test]
    fn the_last_allowed_attempt_fails_the_ticket() {
        let p = refine_spec();
        let mut t = ticket("new");
        t.attempts = 2;
        let j = p.judge(&t, &completion("nope", "end_turn"));
        let Effect::Move(m) = &j.effect else { panic!() };
        assert_eq!((m.state.as_str(), m.attempts), ("failed", 3));
        assert!(j.detail.unwrap().contains("max_attempts 3"));
    }

    #[test]
    fn a_review_rejection_loops_back_with_feedback_and_the_third_fails() {
        let p = review();
        let mut t = ticket("implemented");
        let j = p.judge(&t, &completion("- no tests\n\nVERDICT: REJECT", "end_turn"));
        assert_eq!((j.verdict.as_str(), j.kind), ("rejected", Kind::Rejected));
        let Effect::Move(m) = &j.effect else { panic!() };
        assert_eq!(
            (
                m.state.as_str(),
                m.rejections,
                m.feedback.as_deref(),
                m.output.clone()
            ),
            ("specified", 1, Some("- no tests"), None)
        );
        t.rejections = 2;
        let Effect::Move(m) = p
            .judge(&t, &completion("- still\n\nVERDICT: REJECT", "end_turn"))
            .effect
        else {
            panic!()
        };
        assert_eq!((m.state.as_str(), m.rejections), ("failed", 3));

        let j = p.judge(
            &ticket("implemented"),
            &completion("fine\nVERDICT: APPROVE", "end_turn"),
        );
        assert_eq!(j.verdict, "approved");
        let Effect::Move(m) = &j.effect else { panic!() };
        assert_eq!(m.state, "done");
        assert_eq!(
            p.judge(&ticket("implemented"), &completion("fine", "end_turn"))
                .verdict,
            "review_wrong"
        );
    }

    #[test]
    fn a_nul_in_the_answer_is_wrong_not_an_error() {
        let p = refine_spec();
        let text = format!("{}\0", good_spec());
        let j = p.judge(&ticket("new"), &completion(&text, "end_turn"));
        assert_eq!(j.verdict, "spec_wrong");
        let e = p.judge(&ticket("new"), &Err(CallError::Transport("a\0b".into())));
        assert!(!e.detail.unwrap().contains('\0'));
    }

    #[test]
    fn a_refused_request_or_a_bad_response_costs_an_attempt_and_a_retryable_one_does_not() {
        let p = refine_spec();
        let t = ticket("new");
        for (error, verdict) in [
            (
                CallError::Http {
                    status: 401,
                    message: "invalid x-api-key".into(),
                },
                "llm_rejected",
            ),
            (
                CallError::Http {
                    status: 413,
                    message: "too large".into(),
                },
                "llm_rejected",
            ),
            (
                CallError::Malformed {
                    status: 200,
                    message: "not JSON".into(),
                },
                "llm_bad_response",
            ),
        ] {
            let j = p.judge(&t, &Err(error.clone()));
            assert_eq!(j.verdict, verdict, "{error}");
            let Effect::Move(mv) = &j.effect else {
                panic!("{error}: {:?}", j.effect)
            };
            assert_eq!((mv.state.as_str(), mv.attempts), ("new", 1), "{error}");
            assert!(j.detail.unwrap().contains(&error.to_string()));
        }
        // The last allowed attempt fails the ticket, as a wrong answer would.
        let mut last = t.clone();
        last.attempts = p.max_attempts - 1;
        let j = p.judge(
            &last,
            &Err(CallError::Http {
                status: 400,
                message: "bad".into(),
            }),
        );
        assert!(matches!(&j.effect, Effect::Move(mv) if mv.state == "failed"));
        for status in [408, 409, 425, 429, 500, 503, 529] {
            let e = CallError::Http {
                status,
                message: String::new(),
            };
            assert!(e.retryable() && !e.refused(), "{status}");
            assert_eq!(p.judge(&t, &Err(e)).verdict, "llm_error", "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422] {
            let e = CallError::Http {
                status,
                message: String::new(),
            };
            assert!(e.refused() && !e.retryable(), "{status}");
        }
    }

    #[test]
    fn a_ticket_out_of_attempts_before_its_call_is_failed_without_one() {
        let p = refine_spec();
        let mut t = ticket("new");
        t.attempts = p.max_attempts - 1;
        assert!(p.exhausted(&t).is_none(), "one attempt left");
        t.attempts = p.max_attempts;
        let j = p.exhausted(&t).expect("no attempt left");
        assert_eq!((j.verdict.as_str(), j.kind), ("error", Kind::Error));
        let Effect::Move(mv) = &j.effect else {
            panic!("{:?}", j.effect)
        };
        assert_eq!(mv.state, "failed");
        assert!(mv.failure.as_deref().unwrap().contains("without a verdict"));
    }
}
