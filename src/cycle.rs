//! One cycle as three committed transactions (claim, phase, verdict) with the LLM call in between and no transaction open during it.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::core::phase::{Kind, Pipeline};
use crate::core::wire::Anthropic;
use crate::error::{DamascusError, OrRaise};
use crate::guc;
use crate::llm::InFlight;
use crate::store::{self, CallFacts, Claim};

/// What a wait on the latch says the cycle should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nothing happened (or the call finished): go on.
    Continue,
    /// Cancel this cycle, give its claim back, keep the worker.
    Interrupt,
    /// The process is stopping: give the claim back and leave.
    Stop,
}

/// How a cycle ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleEnd {
    /// Nothing was claimable.
    Idle,
    /// A ticket was worked on; the row `damascus_tick()` returns.
    Done(TickRow),
    /// No ticket could even be claimed (e.g. the claim statement failed).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickRow {
    pub ticket_id: i64,
    pub phase: String,
    pub verdict: String,
    pub state: Option<String>,
}

/// Everything a cycle needs, fixed for its whole length; settings are read on the main thread.
pub struct Context {
    pub worker: String,
    pub settings: guc::Snapshot,
    pub pipeline: Pipeline,
}

impl Context {
    pub fn load(worker: String) -> Result<Context, DamascusError> {
        let settings = guc::snapshot();
        let pipeline = Pipeline::builtin(settings.refine_spec_max_tokens).map_err(|e| {
            DamascusError::InvalidPhase {
                detail: e.to_string(),
            }
        })?;
        Ok(Context {
            worker,
            settings,
            pipeline,
        })
    }
}

fn describe(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(caught) = payload.downcast_ref::<CaughtError>() {
        return match caught {
            CaughtError::PostgresError(r)
            | CaughtError::ErrorReport(r)
            | CaughtError::RustPanic { ereport: r, .. } => match r.detail() {
                Some(d) => format!("{} ({d})", r.message()),
                None => r.message().to_string(),
            },
        };
    }
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    "unknown panic".to_string()
}

/// Runs `body` in its own committed transaction. An ERROR aborts that transaction and comes back as
/// `Err(message)` instead of killing the process.
pub fn transaction<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    let body = AssertUnwindSafe(body);
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        BackgroundWorker::transaction(AssertUnwindSafe(|| (body.0)()))
    })) {
        Ok(r) => Ok(r),
        Err(payload) => {
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(describe(payload))
        }
    }
}

fn record_error(
    ctx: &Context,
    claim: &Claim,
    cycle_id: Option<i64>,
    phase: &str,
    message: &str,
) -> Option<String> {
    warning!(
        "damascus: {}: ticket {} {phase}: {message}",
        ctx.worker,
        claim.ticket_id
    );
    match transaction(|| {
        store::record_error(claim, cycle_id, phase, &ctx.worker, message).or_raise()
    }) {
        Ok(state) => state,
        Err(e) => {
            warning!(
                "damascus: {}: could not record the error on ticket {}: {e}",
                ctx.worker,
                claim.ticket_id
            );
            None
        }
    }
}

fn release(ctx: &Context, claim: &Claim, cycle_id: Option<i64>, why: &str) -> Option<String> {
    match transaction(|| store::release_claim(claim, cycle_id, why).or_raise()) {
        Ok(state) => state,
        Err(e) => {
            warning!(
                "damascus: {}: could not release ticket {}: {e}",
                ctx.worker,
                claim.ticket_id
            );
            None
        }
    }
}

/// Runs one cycle. `wait` sleeps on the latch for at most the given time and says what to do next.
pub fn run_one(ctx: &Context, wait: &mut dyn FnMut(Duration) -> Wake) -> (CycleEnd, Wake) {
    // 1. Claim.
    let states = ctx.pipeline.input_states();
    let claim = match transaction(|| {
        store::claim(&states, ctx.settings.stale_claim_minutes, &ctx.worker).or_raise()
    }) {
        Ok(Some(c)) => c,
        Ok(None) => return (CycleEnd::Idle, Wake::Continue),
        Err(e) => {
            return (
                CycleEnd::Failed(format!("claim failed: {e}")),
                Wake::Continue,
            );
        }
    };
    let Some(phase) = ctx.pipeline.for_state(&claim.state) else {
        // The claim query only selects input states, so this means the pipeline changed under us.
        let msg = format!("no phase takes state {}", claim.state);
        let state = record_error(ctx, &claim, None, "none", &msg);
        return (done(&claim, "none", "error", state), Wake::Continue);
    };
    let row = |verdict: &str, state: Option<String>| done(&claim, &phase.name, verdict, state);

    // 2. Phase: record the attempt and read the inputs, then call the LLM with no transaction open.
    let start =
        match transaction(|| store::begin_phase(&claim, &phase.name, &ctx.worker).or_raise()) {
            Ok(Some(s)) => s,
            Ok(None) => return (row(Kind::ClaimLost.generic_name(), None), Wake::Continue),
            Err(e) => {
                let state = record_error(ctx, &claim, None, &phase.name, &e);
                return (row(Kind::Error.generic_name(), state), Wake::Continue);
            }
        };
    debug_assert!(!unsafe { pg_sys::IsTransactionState() });
    let prompt = phase.prompt(&start.input);
    let mut call = InFlight::start(&Anthropic, &ctx.settings.llm, &prompt, true);
    let outcome = loop {
        if let Some(o) = call.poll() {
            break o;
        }
        match wait(Duration::from_millis(250)) {
            Wake::Continue => {}
            stop @ (Wake::Interrupt | Wake::Stop) => {
                call.cancel();
                let why = if stop == Wake::Stop {
                    "the worker was asked to stop during the LLM call"
                } else {
                    "the cycle was cancelled during the LLM call"
                };
                let state = release(ctx, &claim, Some(start.cycle_id), why);
                return (row(Kind::Interrupted.generic_name(), state), stop);
            }
        }
    };

    // 3. Verdict, fenced by the claim token.
    let judgement = phase.judge(
        claim.ticket_id,
        start.llm_errors.max(0) as u32,
        &outcome.result,
    );
    let (http_status, completion) = match &outcome.result {
        Ok(c) => (Some(200), Some(c)),
        Err(e) => (e.http_status().map(i32::from), None),
    };
    let facts = CallFacts {
        http_status,
        stop_reason: completion.and_then(|c| c.stop_reason.clone()),
        input_tokens: completion.and_then(|c| c.input_tokens).map(clamp_i32),
        output_tokens: completion.and_then(|c| c.output_tokens).map(clamp_i32),
        llm_ms: clamp_i32(outcome.elapsed.as_millis() as i64),
    };
    match transaction(|| {
        store::apply_verdict(&claim, start.cycle_id, phase, &judgement, &facts).or_raise()
    }) {
        Ok(v) => (row(&v.verdict, v.state), Wake::Continue),
        Err(e) => {
            let state = record_error(ctx, &claim, Some(start.cycle_id), &phase.name, &e);
            (row(Kind::Error.generic_name(), state), Wake::Continue)
        }
    }
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(0, i32::MAX as i64) as i32
}

fn done(claim: &Claim, phase: &str, verdict: &str, state: Option<String>) -> CycleEnd {
    CycleEnd::Done(TickRow {
        ticket_id: claim.ticket_id,
        phase: phase.to_string(),
        verdict: verdict.to_string(),
        state,
    })
}
