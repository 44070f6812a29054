//! Phases as data: what state a phase reads, what it asks the model, how its answer is judged and where the ticket goes next.

use crate::core::backoff;
use crate::core::spec;
use crate::core::wire::{CallError, Completion, Prompt};
use std::time::Duration;

/// Default output cap for refine_spec.
pub const REFINE_SPEC_DEFAULT_MAX_TOKENS: u32 = 4000;
/// refine_spec may never run with a smaller cap: 1500 truncated specs before their last section.
pub const REFINE_SPEC_MIN_MAX_TOKENS: u32 = 3000;

/// How a phase judges the model's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// The six-section spec structure of `core::spec`.
    Spec,
}

impl Judge {
    fn min_max_tokens(self) -> u32 {
        match self {
            Judge::Spec => REFINE_SPEC_MIN_MAX_TOKENS,
        }
    }

    fn check(self, text: &str) -> Result<(), String> {
        match self {
            Judge::Spec => spec::validate(text).map_err(|p| p.to_string()),
        }
    }
}

/// One step of the pipeline. Today built in code; shaped so it can be loaded from a `damascus.phases` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseDef {
    pub name: String,
    pub input_state: String,
    pub accept_state: String,
    pub failed_state: String,
    pub max_tokens: u32,
    pub system_prompt: String,
    pub judge: Judge,
    /// Verdict names for ok / wrong / truncated, e.g. `spec_ok`.
    pub verdict_prefix: String,
}

/// Why a phase definition is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseError {
    MaxTokensTooLow {
        phase: String,
        max_tokens: u32,
        min: u32,
    },
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhaseError::MaxTokensTooLow {
                phase,
                max_tokens,
                min,
            } => {
                write!(
                    f,
                    "phase {phase} has max_tokens {max_tokens}, below its floor of {min}"
                )
            }
        }
    }
}

const REFINE_SPEC_SYSTEM: &str = "You turn a software ticket into an implementation spec. \
Answer with Markdown only, using exactly these level-2 sections in this order: \
## Summary, ## Context, ## Acceptance Criteria (a numbered list), ## TDD Plan, ## Out of Scope, ## Test Command \
(one shell command that runs the tests). Every section must have content. Do not wrap the whole answer in a code fence.";

impl PhaseDef {
    /// The refine_spec phase: `new` → `specified`.
    pub fn refine_spec(max_tokens: u32) -> Result<PhaseDef, PhaseError> {
        PhaseDef {
            name: "refine_spec".into(),
            input_state: "new".into(),
            accept_state: "specified".into(),
            failed_state: "failed".into(),
            max_tokens,
            system_prompt: REFINE_SPEC_SYSTEM.into(),
            judge: Judge::Spec,
            verdict_prefix: "spec".into(),
        }
        .validated()
    }

    /// Refuses definitions that would break the pipeline's promises (e.g. a token cap that truncates).
    pub fn validated(self) -> Result<PhaseDef, PhaseError> {
        let min = self.judge.min_max_tokens();
        if self.max_tokens < min {
            return Err(PhaseError::MaxTokensTooLow {
                phase: self.name,
                max_tokens: self.max_tokens,
                min,
            });
        }
        Ok(self)
    }

    /// The request for one ticket.
    pub fn prompt(&self, ticket: &TicketInput) -> Prompt {
        let mut user = format!("Ticket #{}: {}\n\n{}", ticket.id, ticket.title, ticket.body);
        if ticket.attempts > 0 {
            user.push_str(&format!(
                "\n\n(This is attempt {}; earlier answers were rejected. Follow the section list exactly.)",
                ticket.attempts + 1
            ));
        }
        Prompt {
            system: self.system_prompt.clone(),
            user,
            max_tokens: self.max_tokens,
        }
    }

    fn verdict(&self, kind: Kind) -> String {
        match kind {
            Kind::Ok => format!("{}_ok", self.verdict_prefix),
            Kind::Wrong => format!("{}_wrong", self.verdict_prefix),
            Kind::Truncated => format!("{}_truncated", self.verdict_prefix),
            other => other.generic_name().to_string(),
        }
    }

    /// Judges a call's result. Pure: the verdict transaction applies what this returns.
    pub fn judge(
        &self,
        ticket_id: i64,
        previous_llm_errors: u32,
        result: &Result<Completion, CallError>,
    ) -> Judgement {
        let (kind, detail, effect) = match result {
            Err(e) => (
                Kind::LlmError,
                Some(e.to_string().replace('\0', "\u{fffd}")),
                Effect::Retry {
                    delay: backoff::llm_error_delay(ticket_id, previous_llm_errors),
                },
            ),
            Ok(c) if c.truncated() => (
                Kind::Truncated,
                Some(format!(
                    "the model stopped at max_tokens ({}) before finishing",
                    self.max_tokens
                )),
                Effect::Reject,
            ),
            // Postgres text cannot hold NUL; storing such an answer would fail the verdict
            // transaction on every retry, so it is judged wrong instead.
            Ok(c) if c.text.contains('\0') => (
                Kind::Wrong,
                Some("the answer contains a NUL character".to_string()),
                Effect::Reject,
            ),
            Ok(c) => match self.judge.check(&c.text) {
                Ok(()) => (
                    Kind::Ok,
                    None,
                    Effect::Accept {
                        output: c.text.clone(),
                    },
                ),
                Err(problem) => (Kind::Wrong, Some(problem), Effect::Reject),
            },
        };
        Judgement {
            verdict: self.verdict(kind),
            kind,
            detail,
            effect,
        }
    }
}

/// The ordered set of phases a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub phases: Vec<PhaseDef>,
}

impl Pipeline {
    /// The pipeline this release ships: refine_spec only.
    pub fn builtin(refine_spec_max_tokens: u32) -> Result<Pipeline, PhaseError> {
        Ok(Pipeline {
            phases: vec![PhaseDef::refine_spec(refine_spec_max_tokens)?],
        })
    }

    /// States a claim may pick up.
    pub fn input_states(&self) -> Vec<String> {
        self.phases.iter().map(|p| p.input_state.clone()).collect()
    }

    /// The phase that works on tickets in `state`.
    pub fn for_state(&self, state: &str) -> Option<&PhaseDef> {
        self.phases.iter().find(|p| p.input_state == state)
    }
}

/// What a phase reads about its ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketInput {
    pub id: i64,
    pub title: String,
    pub body: String,
    pub attempts: i32,
}

/// The kind of verdict, independent of phase naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Wrong,
    Truncated,
    LlmError,
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
            Kind::LlmError => "llm_error",
            Kind::ClaimLost => "claim_lost",
            Kind::Error => "error",
            Kind::Interrupted => "interrupted",
        }
    }
}

/// How the verdict transaction moves the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store the output, move to the phase's accept state, reset attempts.
    Accept { output: String },
    /// Count an attempt; fail the ticket once attempts reach its maximum.
    Reject,
    /// Not the ticket's fault: no attempt consumed, retry after a delay.
    Retry { delay: Duration },
}

impl Effect {
    /// The tag the verdict SQL switches on.
    pub fn tag(&self) -> &'static str {
        match self {
            Effect::Accept { .. } => "accept",
            Effect::Reject => "reject",
            Effect::Retry { .. } => "retry",
        }
    }
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

    fn completion(text: &str, stop: &str) -> Result<Completion, CallError> {
        Ok(Completion {
            text: text.into(),
            stop_reason: Some(stop.into()),
            input_tokens: Some(10),
            output_tokens: Some(20),
        })
    }

    fn good_spec() -> &'static str {
        "## Summary\ns\n## Context\nc\n## Acceptance Criteria\n1. a\n## TDD Plan\nt\n## Out of Scope\no\n## Test Command\ncargo test\n"
    }

    #[test]
    fn refine_spec_defaults_to_4000_and_refuses_below_3000() {
        assert_eq!(PhaseDef::refine_spec(4000).unwrap().max_tokens, 4000);
        assert!(PhaseDef::refine_spec(3000).is_ok());
        assert_eq!(
            PhaseDef::refine_spec(1500),
            Err(PhaseError::MaxTokensTooLow {
                phase: "refine_spec".into(),
                max_tokens: 1500,
                min: 3000
            })
        );
    }

    #[test]
    fn prompt_carries_the_ticket_and_cap() {
        let p = PhaseDef::refine_spec(4000).unwrap();
        let t = TicketInput {
            id: 7,
            title: "Health".into(),
            body: "GET /healthz".into(),
            attempts: 1,
        };
        let prompt = p.prompt(&t);
        assert_eq!(prompt.max_tokens, 4000);
        assert!(prompt.user.contains("Ticket #7: Health") && prompt.user.contains("GET /healthz"));
        assert!(prompt.user.contains("attempt 2"));
        assert!(prompt.system.contains("## Test Command"));
    }

    #[test]
    fn judges_each_outcome() {
        let p = PhaseDef::refine_spec(4000).unwrap();
        let ok = p.judge(1, 0, &completion(good_spec(), "end_turn"));
        assert_eq!((ok.verdict.as_str(), ok.kind), ("spec_ok", Kind::Ok));
        assert_eq!(
            ok.effect,
            Effect::Accept {
                output: good_spec().into()
            }
        );

        // Truncation wins even when the text happens to parse.
        let cut = p.judge(1, 0, &completion(good_spec(), "max_tokens"));
        assert_eq!(
            (cut.verdict.as_str(), cut.effect.clone()),
            ("spec_truncated", Effect::Reject)
        );

        let wrong = p.judge(1, 0, &completion("## Summary\nonly", "end_turn"));
        assert_eq!(wrong.verdict, "spec_wrong");
        assert_eq!(
            wrong.detail.as_deref(),
            Some("section \"## Context\" is missing")
        );

        let err = p.judge(
            1,
            2,
            &Err(CallError::Http {
                status: 429,
                message: "rate".into(),
            }),
        );
        assert_eq!(err.verdict, "llm_error");
        assert_eq!(
            err.effect,
            Effect::Retry {
                delay: backoff::llm_error_delay(1, 2)
            }
        );
        assert_eq!(err.detail.as_deref(), Some("HTTP 429: rate"));
    }

    #[test]
    fn a_nul_in_the_answer_is_wrong_not_an_error() {
        let p = PhaseDef::refine_spec(4000).unwrap();
        let text = format!("{}\0", good_spec());
        let j = p.judge(1, 0, &completion(&text, "end_turn"));
        assert_eq!(
            (j.verdict.as_str(), j.effect),
            ("spec_wrong", Effect::Reject)
        );
        let e = p.judge(1, 0, &Err(CallError::Transport("a\0b".into())));
        assert!(!e.detail.unwrap().contains('\0'));
    }

    #[test]
    fn pipeline_routes_by_state() {
        let pl = Pipeline::builtin(4000).unwrap();
        assert_eq!(pl.input_states(), vec!["new".to_string()]);
        assert_eq!(pl.for_state("new").unwrap().name, "refine_spec");
        assert!(pl.for_state("specified").is_none());
    }
}
