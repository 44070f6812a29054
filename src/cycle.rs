//! One cycle as three committed transactions (claim, phase, verdict) with the LLM call in between and no transaction open during it.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::error::OrRaise;
use crate::guc;
use crate::store::{self, CallFacts, Claim};
use damascus_core::lease;
use damascus_core::llm::{CallOutcome, InFlight};
use damascus_core::phase::{Kind, PhaseDef, TicketInput};

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

/// Everything a cycle needs besides its phase, fixed for its whole length; settings are read on the main
/// thread. Phases are not cached here: the phase transaction reads the row, so a change applies to the next claim.
pub struct Context {
    pub worker: String,
    pub settings: guc::Snapshot,
}

impl Context {
    pub fn load(worker: String) -> Context {
        Context {
            worker,
            settings: guc::snapshot(),
        }
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
    message: &str,
) -> Option<String> {
    warning!(
        "damascus: {}: ticket {} {}: {message}",
        ctx.worker,
        claim.ticket_id,
        claim.phase
    );
    match transaction(|| store::record_error(claim, cycle_id, &ctx.worker, message).or_raise()) {
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

/// How the claim and phase transactions ended.
pub enum Begun<'a> {
    /// Nothing was claimable.
    Idle,
    /// Nothing could be claimed (the claim statement failed).
    Failed(String),
    /// The cycle ended before its call (claim lost, or an ERROR recorded).
    Ended(TickRow),
    /// The LLM call is in flight; the caller polls it and then finishes the cycle. Boxed: a driver holding
    /// many cycles keeps them in a collection, and the other variants are small.
    Calling(Box<Calling<'a>>),
}

/// A cycle between its phase and verdict transactions: nothing open in Postgres, one HTTP call in flight.
/// A worker loop may hold several of these and poll each.
pub struct Calling<'a> {
    ctx: &'a Context,
    phase: PhaseDef,
    input: TicketInput,
    claim: Claim,
    cycle_id: i64,
    model: String,
    prompt_sha256: String,
    call: InFlight,
    last_beat: Instant,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Claim and phase transactions, then starts the LLM call with no transaction open.
pub fn begin(ctx: &Context) -> Begun<'_> {
    let claim = match transaction(|| {
        store::claim(ctx.settings.stale_claim_minutes, &ctx.worker).or_raise()
    }) {
        Ok(Some(c)) => c,
        Ok(None) => return Begun::Idle,
        Err(e) => return Begun::Failed(format!("claim failed: {e}")),
    };
    let start = match transaction(|| store::begin_phase(&claim, &ctx.worker).or_raise()) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Begun::Ended(row(&claim, Kind::ClaimLost.generic_name(), None));
        }
        Err(e) => {
            let state = record_error(ctx, &claim, None, &e);
            return Begun::Ended(row(&claim, Kind::Error.generic_name(), state));
        }
    };
    let Some(phase_row) = start.phase else {
        // The pipeline changed between claim and phase: give the ticket back at once, so the next claim
        // picks whatever phase claims its state now.
        let state = release(
            ctx,
            &claim,
            Some(start.cycle_id),
            &format!(
                "phase {} was changed or removed after the claim; the ticket was released",
                claim.phase
            ),
        );
        return Begun::Ended(row(&claim, Kind::Interrupted.generic_name(), state));
    };
    let phase = match PhaseDef::from_row(phase_row) {
        Ok(p) => p,
        Err(e) => {
            let state = record_error(ctx, &claim, Some(start.cycle_id), &e.to_string());
            return Begun::Ended(row(&claim, Kind::Error.generic_name(), state));
        }
    };
    debug_assert!(!unsafe { pg_sys::IsTransactionState() });
    let mut cfg = ctx.settings.llm.clone();
    if let Some(model) = &phase.model {
        cfg.model = model.clone();
    }
    if let Some(timeout) = phase.timeout {
        cfg.timeout = timeout;
    }
    let prompt = phase.prompt(&start.input);
    let codec = ctx.settings.provider.codec();
    let prompt_sha256 = sha256_hex(codec.build(&cfg, &prompt).body.as_bytes());
    let call = InFlight::start(codec, &cfg, &prompt, true);
    Begun::Calling(Box::new(Calling {
        ctx,
        phase,
        input: start.input,
        claim,
        cycle_id: start.cycle_id,
        model: cfg.model,
        prompt_sha256,
        call,
        last_beat: Instant::now(),
    }))
}

impl<'a> Calling<'a> {
    /// The call's outcome once it has finished; never blocks.
    pub fn poll(&mut self) -> Option<CallOutcome> {
        self.call.poll()
    }

    /// Verdict transaction, fenced by the claim token.
    pub fn finish(self, outcome: CallOutcome) -> TickRow {
        let Calling {
            ctx,
            phase,
            input,
            claim,
            cycle_id,
            model,
            prompt_sha256,
            ..
        } = self;
        let judgement = phase.judge(&input, &outcome.result);
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
            provider: ctx.settings.provider.name().to_string(),
            model,
            prompt_sha256,
            // Postgres text cannot hold NUL; the answer is kept with it replaced so it can still be read.
            answer: completion.map(|c| c.text.replace('\0', "\u{fffd}")),
        };
        match transaction(|| store::apply_verdict(&claim, cycle_id, &judgement, &facts).or_raise())
        {
            Ok(v) => row(&claim, &v.verdict, v.state),
            Err(e) => {
                let state = record_error(ctx, &claim, Some(cycle_id), &e);
                row(&claim, Kind::Error.generic_name(), state)
            }
        }
    }

    /// Renews the claim's lease when due. `false` means the claim was superseded: the caller should give up.
    pub fn heartbeat(&mut self) -> bool {
        if self.last_beat.elapsed()
            < lease::heartbeat_interval(self.ctx.settings.stale_claim_minutes)
        {
            return true;
        }
        self.last_beat = Instant::now();
        match transaction(|| store::heartbeat(&self.claim).or_raise()) {
            Ok(alive) => alive,
            Err(e) => {
                // A failed heartbeat is not a lost claim; the next one may succeed.
                warning!(
                    "damascus: {}: heartbeat for ticket {} failed: {e}",
                    self.ctx.worker,
                    self.claim.ticket_id
                );
                true
            }
        }
    }

    /// Interrupts the call; what is left is what the closing transaction needs.
    fn stop_call(self) -> (&'a Context, Claim, i64) {
        let Calling {
            ctx,
            claim,
            cycle_id,
            call,
            ..
        } = self;
        call.cancel();
        (ctx, claim, cycle_id)
    }

    /// Stops the call of a claim that was superseded and closes its cycle row as claim_lost.
    pub fn lost(self) -> TickRow {
        let (ctx, claim, cycle_id) = self.stop_call();
        let detail = format!(
            "claim token {} was superseded during the LLM call; the call was stopped",
            claim.token
        );
        if let Err(e) = transaction(|| store::record_claim_lost(cycle_id, &detail).or_raise()) {
            warning!(
                "damascus: {}: could not close cycle {cycle_id}: {e}",
                ctx.worker
            );
        }
        row(&claim, Kind::ClaimLost.generic_name(), None)
    }

    /// Interrupts the call and gives the claim back at once.
    pub fn abandon(self, why: &str) -> TickRow {
        let (ctx, claim, cycle_id) = self.stop_call();
        let state = release(ctx, &claim, Some(cycle_id), why);
        row(&claim, Kind::Interrupted.generic_name(), state)
    }
}

/// Runs one cycle to its end. `wait` sleeps on the latch for at most the given time and says what to do next.
pub fn run_one(ctx: &Context, wait: &mut dyn FnMut(Duration) -> Wake) -> (CycleEnd, Wake) {
    let mut calling = match begin(ctx) {
        Begun::Idle => return (CycleEnd::Idle, Wake::Continue),
        Begun::Failed(e) => return (CycleEnd::Failed(e), Wake::Continue),
        Begun::Ended(r) => return (CycleEnd::Done(r), Wake::Continue),
        Begun::Calling(c) => c,
    };
    loop {
        if let Some(outcome) = calling.poll() {
            return (CycleEnd::Done(calling.finish(outcome)), Wake::Continue);
        }
        if !calling.heartbeat() {
            return (CycleEnd::Done(calling.lost()), Wake::Continue);
        }
        match wait(Duration::from_millis(250)) {
            Wake::Continue => {}
            Wake::Interrupt => {
                let r = calling.abandon("the cycle was cancelled during the LLM call");
                return (CycleEnd::Done(r), Wake::Interrupt);
            }
            Wake::Stop => {
                let r = calling.abandon("the worker was asked to stop during the LLM call");
                return (CycleEnd::Done(r), Wake::Stop);
            }
        }
    }
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(0, i32::MAX as i64) as i32
}

fn row(claim: &Claim, verdict: &str, state: Option<String>) -> TickRow {
    TickRow {
        ticket_id: claim.ticket_id,
        phase: claim.phase.clone(),
        verdict: verdict.to_string(),
        state,
    }
}
