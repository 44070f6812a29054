//! One cycle as three committed transactions (claim, phase, verdict) with the LLM call in between and no transaction open during it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::error::OrRaise;
use crate::guc;
use crate::shared;
use crate::signals;
use crate::store::{self, CallFacts, Claim};
use damascus_core::lease;
use damascus_core::llm::{CallOutcome, CallPolicy, InFlight, Metered};
use damascus_core::phase::{Judgement, Kind, PhaseDef, TicketInput};
use damascus_core::wire::Provider;

/// Whether this process has already warned that the API key was refused.
static WARNED_UNAUTHORIZED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

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

/// timeout.h, which pgrx does not bind: arms the statement timeout that Postgres arms only for statements
/// from a client. `TimeoutId` is a C enum; STATEMENT_TIMEOUT is its fourth value in PostgreSQL 15.
mod timeout {
    use std::ffi::c_int;

    pub const STATEMENT_TIMEOUT: c_int = 3;

    // SAFETY: the declarations match timeout.h of PostgreSQL 15 (a C enum is an int); the functions raise no
    // ERROR for a timeout InitPostgres registered, so no longjmp crosses these calls.
    unsafe extern "C-unwind" {
        pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
        pub fn disable_timeout(id: c_int, keep_indicator: bool);
        pub fn get_timeout_indicator(id: c_int, reset_indicator: bool) -> bool;
    }
}

/// Runs `body` in its own committed transaction, under `damascus.statement_timeout`. An ERROR (the timeout's
/// included) aborts that transaction and comes back as `Err(message)` instead of killing the process.
pub fn transaction<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    let body = AssertUnwindSafe(body);
    // SAFETY: main thread of a backend whose timeouts were initialised by InitPostgres; the timeout's handler
    // only raises flags that CHECK_FOR_INTERRUPTS turns into an ERROR inside this transaction, and it is
    // disarmed below on every path, before any wait on the latch.
    unsafe {
        timeout::enable_timeout_after(timeout::STATEMENT_TIMEOUT, guc::statement_timeout_ms())
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        BackgroundWorker::transaction(AssertUnwindSafe(|| (body.0)()))
    }));
    // SAFETY: as above. A timeout that fired after the transaction's last check must not be taken for a
    // pg_cancel_backend by the worker's wait, so its pending cancel is dropped with the indicator.
    unsafe {
        timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false);
        if timeout::get_timeout_indicator(timeout::STATEMENT_TIMEOUT, true) {
            pg_sys::QueryCancelPending = 0;
        }
    }
    match result {
        Ok(r) => Ok(r),
        Err(payload) => {
            // SAFETY: main thread, after the ERROR was caught; this is how a worker's own loop recovers.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(describe(payload))
        }
    }
}

/// Like `transaction`, for soft state (claims, phase rows, heartbeats, releases): it commits without
/// waiting for the WAL flush. A crash can lose such a commit, which only lets the ticket be claimed again
/// after the stale window; the verdict, a paid-for answer, always commits durably.
pub fn soft_transaction<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    transaction(|| {
        // GUC_ACTION_LOCAL reverts the setting when this transaction ends, so the verdict transaction is
        // durable again.
        set_setting(
            c"synchronous_commit",
            c"off",
            pg_sys::GucAction::GUC_ACTION_LOCAL,
        );
        body()
    })
}

/// Sets a server setting for this worker's session (or its transaction), as the worker's own superuser
/// connection may.
fn set_setting(name: &std::ffi::CStr, value: &std::ffi::CStr, action: pg_sys::GucAction::Type) {
    // SAFETY: main thread of a connected backend; both strings are NUL-terminated and outlive the call, which
    // copies them; an invalid value raises an ERROR like any other.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// Session settings of every worker (static or behind a tick), set once after it connects.
///
/// `search_path` is pinned (every statement names its objects with their schema), so a search_path set on the
/// database or role, or an object planted in a schema on it, never runs with the worker's privileges.
/// `plan_cache_mode` keeps each kept statement's first plan, so nothing is planned again per cycle: every
/// statement finds its rows by primary key or through the claim indexes, whatever its parameters.
/// `deadlock_timeout` is far below the 1 s a user session has, so in a deadlock with a user's statement (for
/// one, `DROP EXTENSION damascus` while a worker claims) the worker detects it first and is the one rolled
/// back (a failed claim is tried again later; a failed verdict is recorded as an error), and the user's
/// statement goes through.
pub fn prepare_session() -> Result<(), String> {
    transaction(|| {
        set_setting(
            c"search_path",
            c"pg_catalog, pg_temp",
            pg_sys::GucAction::GUC_ACTION_SET,
        );
        set_setting(
            c"deadlock_timeout",
            c"100ms",
            pg_sys::GucAction::GUC_ACTION_SET,
        );
        set_setting(
            c"plan_cache_mode",
            c"force_generic_plan",
            pg_sys::GucAction::GUC_ACTION_SET,
        );
    })?;
    apply_lock_timeout()
}

/// Makes the session's `lock_timeout` `damascus.lock_timeout`; again after every reload.
pub fn apply_lock_timeout() -> Result<(), String> {
    let ms = std::ffi::CString::new(format!("{}ms", guc::lock_timeout_ms()))
        .map_err(|e| e.to_string())?;
    transaction(|| set_setting(c"lock_timeout", &ms, pg_sys::GucAction::GUC_ACTION_SET))
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

/// How long a stopping worker waits for a lock to give its claims back; a claim it cannot give back goes stale.
const STOP_LOCK_TIMEOUT: &std::ffi::CStr = c"1s";

/// Gives claims back in one transaction; returns the state of each ticket whose claim was still ours.
fn release(ctx: &Context, claims: &[(&Claim, Option<i64>)], why: &str) -> HashMap<i64, String> {
    if claims.is_empty() {
        return HashMap::new();
    }
    signals::clear_stale_cancel();
    match soft_transaction(|| {
        if signals::stopping() {
            set_setting(
                c"lock_timeout",
                STOP_LOCK_TIMEOUT,
                pg_sys::GucAction::GUC_ACTION_LOCAL,
            );
        }
        store::release_claims(claims, why).or_raise()
    }) {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => {
            warning!(
                "damascus: {}: could not release {} claim(s): {e}",
                ctx.worker,
                claims.len()
            );
            HashMap::new()
        }
    }
}

/// After a phase or verdict transaction failed: a worker asked to stop (whose lock wait SIGTERM cancelled)
/// gives the claim back, using no attempt; otherwise the ERROR is the cycle's verdict.
fn failed(ctx: &Context, claim: &Claim, cycle_id: Option<i64>, error: &str) -> TickRow {
    if signals::stopping() {
        let why = format!("the worker was asked to stop before the verdict was written ({error})");
        let mut states = release(ctx, &[(claim, cycle_id)], &why);
        return row(
            claim,
            Kind::Interrupted.generic_name(),
            states.remove(&claim.ticket_id),
        );
    }
    let state = record_error(ctx, claim, cycle_id, error);
    row(claim, Kind::Error.generic_name(), state)
}

/// The verdict transaction, fenced by the claim; an ERROR in it is recorded as the cycle's error instead.
fn write_verdict(
    ctx: &Context,
    claim: &Claim,
    cycle_id: i64,
    judgement: &Judgement,
    facts: &CallFacts,
) -> TickRow {
    let r = match transaction(|| store::apply_verdict(claim, cycle_id, judgement, facts).or_raise())
    {
        Ok(v) => row(claim, &v.verdict, v.state),
        Err(e) => failed(ctx, claim, Some(cycle_id), &e),
    };
    if ctx.settings.log_cycles {
        log!(
            "damascus: ticket {} {} {} -> {} in {} ms ({})",
            r.ticket_id,
            r.phase,
            r.verdict,
            r.state.as_deref().unwrap_or("?"),
            facts.llm_ms,
            ctx.worker
        );
    }
    r
}

/// How the claim and phase transactions ended.
pub enum Begun {
    /// Nothing was claimable.
    Idle,
    /// Nothing could be claimed (the claim statement failed).
    Failed(String),
    /// The cycle ended before its call (claim lost, or an ERROR recorded).
    Ended(TickRow),
    /// The LLM call is in flight; the caller polls it and then finishes the cycle. Boxed: a driver holding
    /// many cycles keeps them in a collection, and the other variants are small.
    Calling(Box<Calling>),
}

/// A cycle between its phase and verdict transactions: nothing open in Postgres, one HTTP call in flight.
/// It keeps the context it started with, so a reload applies to cycles started after it and never waits
/// for these.
pub struct Calling {
    ctx: Rc<Context>,
    phase: PhaseDef,
    input: TicketInput,
    claim: Claim,
    cycle_id: i64,
    model: String,
    prompt_sha256: String,
    call: InFlight,
    started: Instant,
    /// Input and output tokens counted against the provider's limits before the call.
    estimate: (u64, u64),
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Claims up to `want` tickets in one claim transaction, then runs each one's phase transaction and starts
/// its call. An empty result, or one shorter than `want`, means nothing more was claimable.
pub fn begin_many(ctx: &Rc<Context>, want: usize) -> Vec<Begun> {
    // A provider parked after a spend-limit refusal would refuse every call: claim nothing until resumed.
    if shared::provider_parked() {
        return Vec::new();
    }
    let limit = i32::try_from(want).unwrap_or(i32::MAX).max(1);
    match soft_transaction(|| {
        store::claim(ctx.settings.stale_claim_minutes, &ctx.worker, limit).or_raise()
    }) {
        Ok(claims) => claims.into_iter().map(|c| start(ctx, c)).collect(),
        Err(e) => vec![Begun::Failed(format!("claim failed: {e}"))],
    }
}

/// The verdict of a cycle a budget held back before its call (no attempt used).
const BUDGET_HELD: &str = "budget_held";

/// Inside the phase transaction: reserves the cycle's worst case against the budgets of its scope, or holds it
/// back (the reason). The worst case counts one token per byte of the rendered prompt (no tokenizer counts
/// more) plus the phase's max_tokens. A phase row that cannot run reserves nothing; it fails later as ever.
fn reserve(ctx: &Context, claim: &Claim, start: &store::PhaseStart) -> Option<String> {
    let phase = PhaseDef::from_row(start.phase.clone()?).ok()?;
    let prompt = phase.prompt(&start.input);
    let input = clamp_i32((prompt.system.len() + prompt.user.len()) as i64);
    let model = phase
        .model
        .clone()
        .unwrap_or_else(|| ctx.settings.llm.model.clone());
    store::reserve_budget(
        claim,
        start.cycle_id,
        ctx.settings.provider.name(),
        &model,
        input,
        clamp_i32(i64::from(prompt.max_tokens)),
    )
    .or_raise()
}

/// The phase transaction of one claim, then its call.
fn start(ctx: &Rc<Context>, claim: Claim) -> Begun {
    let phase_txn = soft_transaction(|| {
        let start = store::begin_phase(&claim, &ctx.worker).or_raise();
        let held = start
            .as_ref()
            .filter(|s| s.budgets)
            .and_then(|s| reserve(ctx, &claim, s));
        (start, held)
    });
    let start = match phase_txn {
        Ok((Some(_), Some(reason))) => {
            log!(
                "damascus: {}: ticket {} {} held back by a budget: {reason}",
                ctx.worker,
                claim.ticket_id,
                claim.phase
            );
            return Begun::Ended(row(&claim, BUDGET_HELD, Some(claim.state.clone())));
        }
        Ok((Some(s), None)) => s,
        Ok((None, _)) => {
            return Begun::Ended(row(&claim, Kind::ClaimLost.generic_name(), None));
        }
        Err(e) => return Begun::Ended(failed(ctx, &claim, None, &e)),
    };
    let Some(phase_row) = start.phase else {
        // The pipeline changed between claim and phase: give the ticket back at once, so the next claim
        // picks whatever phase claims its state now.
        let why = format!(
            "phase {} was changed or removed after the claim; the ticket was released",
            claim.phase
        );
        let mut states = release(ctx, &[(&claim, Some(start.cycle_id))], &why);
        let state = states.remove(&claim.ticket_id);
        return Begun::Ended(row(&claim, Kind::Interrupted.generic_name(), state));
    };
    let phase = match PhaseDef::from_row(phase_row) {
        Ok(p) => p,
        Err(e) => {
            let state = record_error(ctx, &claim, Some(start.cycle_id), &e.to_string());
            return Begun::Ended(row(&claim, Kind::Error.generic_name(), state));
        }
    };
    if let Some(judgement) = phase.exhausted(&start.input) {
        // No call: record the verdict that fails the ticket, fenced by our claim like any other.
        let facts = CallFacts {
            http_status: None,
            stop_reason: None,
            input_tokens: None,
            output_tokens: None,
            llm_ms: 0,
            provider: ctx.settings.provider.name().to_string(),
            model: phase
                .model
                .clone()
                .unwrap_or_else(|| ctx.settings.llm.model.clone()),
            prompt_sha256: String::new(),
            answer: None,
            ..CallFacts::default()
        };
        return Begun::Ended(write_verdict(
            ctx,
            &claim,
            start.cycle_id,
            &judgement,
            &facts,
        ));
    }
    // SAFETY: a plain read of the backend's transaction state, on the main thread.
    debug_assert!(!unsafe { pg_sys::IsTransactionState() });
    let mut cfg = ctx.settings.llm.clone();
    if let Some(model) = &phase.model {
        cfg.model = model.clone();
    }
    if let Some(timeout) = phase.timeout {
        cfg.timeout = timeout;
    }
    let codec = ctx.settings.provider.codec();
    let prompt = phase.prompt(&start.input);
    // The provider's limits count input as it tokenizes, about four bytes a token; its own count replaces
    // the estimate once it answers (`Gate::settle`). Output counts max_tokens until then, as Anthropic does.
    let estimate = (
        ((prompt.system.len() + prompt.user.len()) / 4).max(1) as u64,
        u64::from(prompt.max_tokens),
    );
    let request = codec.build(&cfg, &prompt);
    let prompt_sha256 = sha256_hex(request.body.as_bytes());
    let policy = CallPolicy {
        timeout: cfg.timeout,
        max_retries: ctx.settings.llm_max_retries,
        max_response_bytes: ctx.settings.llm_max_response_bytes,
    };
    let metered = Metered {
        gate: Arc::new(shared::Gate::new(ctx.settings.rate_limits)),
        input_tokens: estimate.0,
        output_tokens: estimate.1,
    };
    let call = InFlight::send_metered(codec, request, policy, Some(metered), true);
    Begun::Calling(Box::new(Calling {
        ctx: Rc::clone(ctx),
        phase,
        input: start.input,
        claim,
        cycle_id: start.cycle_id,
        model: cfg.model,
        prompt_sha256,
        call,
        started: Instant::now(),
        estimate,
    }))
}

impl Calling {
    /// The claim this cycle holds.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

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
            estimate,
            ..
        } = self;
        if let Ok(c) = &outcome.result {
            // Anthropic does not count cache reads toward its input limit; OpenAI counts all prompt tokens.
            let counted_input = match ctx.settings.provider {
                Provider::Anthropic => {
                    c.input_tokens.unwrap_or(0) + c.cache_write_tokens.unwrap_or(0)
                }
                Provider::OpenAi => c.input_tokens.unwrap_or(0),
            };
            shared::Gate::new(ctx.settings.rate_limits).settle(
                estimate,
                (
                    u64::try_from(counted_input).unwrap_or(0),
                    u64::try_from(c.output_tokens.unwrap_or(0)).unwrap_or(0),
                ),
            );
        }
        let judgement = phase.judge(&input, &outcome.result);
        if let Err(e) = &outcome.result
            && e.http_status() == Some(401)
            && !WARNED_UNAUTHORIZED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // Once per process: every call fails the same way until the key is fixed.
            warning!(
                "damascus: the LLM API refused the API key (HTTP 401); put the right key in the file \
                 damascus.llm_api_key_file names (or in the llm_api_key setting), then SELECT pg_reload_conf()"
            );
        }
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
            cache_write_tokens: completion.and_then(|c| c.cache_write_tokens).map(clamp_i32),
            cache_read_tokens: completion.and_then(|c| c.cache_read_tokens).map(clamp_i32),
            usage: completion.and_then(|c| c.usage.clone()),
            ratelimit: outcome.ratelimit.clone().map(serde_json::Value::Object),
        };
        write_verdict(&ctx, &claim, cycle_id, &judgement, &facts)
    }

    /// Stops the call of a claim that was superseded and closes its cycle row as claim_lost.
    pub fn lost(self) -> TickRow {
        let Calling {
            ctx,
            claim,
            cycle_id,
            call,
            ..
        } = self;
        call.cancel();
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
}

/// Rows deleted per retention batch: small, so a batch holds no lock for long and never competes with cycles.
pub const PRUNE_BATCH: i32 = 1000;

/// Deletes one batch of cycle rows past `damascus.cycle_retention`; returns how many went (0 when retention
/// is off or the batch failed, which is logged).
pub fn prune(ctx: &Context) -> i64 {
    let minutes = ctx.settings.cycle_retention_minutes;
    if minutes <= 0 {
        return 0;
    }
    match soft_transaction(|| store::prune_cycles(minutes, PRUNE_BATCH).or_raise()) {
        Ok(n) => n,
        Err(e) => {
            warning!(
                "damascus: {}: pruning old cycle rows failed: {e}",
                ctx.worker
            );
            0
        }
    }
}

/// What a worker shows in `pg_stat_activity.query`: its calls in flight, each with its ticket, phase and age.
pub fn describe_calls(calls: &[Box<Calling>]) -> String {
    use std::fmt::Write;
    let mut text = format!(
        "damascus: {} call{} in flight",
        calls.len(),
        if calls.len() == 1 { "" } else { "s" }
    );
    for (i, c) in calls.iter().enumerate() {
        let _ = write!(
            text,
            "{} ticket {} {} ({} s)",
            if i == 0 { ":" } else { "," },
            c.claim.ticket_id,
            c.claim.phase,
            c.started.elapsed().as_secs()
        );
    }
    text
}

/// When the claims of in-flight cycles are next renewed.
pub struct Lease {
    every: Duration,
    last: Instant,
}

impl Lease {
    pub fn new(heartbeat_seconds: i32) -> Lease {
        Lease {
            every: lease::heartbeat_interval(heartbeat_seconds),
            last: Instant::now(),
        }
    }

    /// How long until the next renewal is due (zero when it is).
    pub fn due_in(&self) -> Duration {
        self.every.saturating_sub(self.last.elapsed())
    }

    /// Renews every in-flight claim in one transaction when due, and ends the cycles whose claim was
    /// superseded (their calls are stopped). Returns the rows of the cycles it ended.
    pub fn renew(&mut self, ctx: &Context, calls: &mut Vec<Box<Calling>>) -> Vec<TickRow> {
        if calls.is_empty() || !self.due_in().is_zero() {
            return Vec::new();
        }
        self.last = Instant::now();
        let claims: Vec<&Claim> = calls.iter().map(|c| &c.claim).collect();
        let alive = match soft_transaction(|| store::heartbeat(&claims).or_raise()) {
            Ok(alive) => alive,
            Err(e) => {
                // A failed heartbeat is not a lost claim; the next one may succeed.
                warning!(
                    "damascus: {}: heartbeat for {} claim(s) failed: {e}",
                    ctx.worker,
                    claims.len()
                );
                return Vec::new();
            }
        };
        let (kept, lost): (Vec<_>, Vec<_>) = std::mem::take(calls)
            .into_iter()
            .partition(|c| alive.contains(&c.claim.ticket_id));
        *calls = kept;
        lost.into_iter().map(|c| c.lost()).collect()
    }
}

/// Interrupts every call and gives all their claims back in one transaction.
pub fn abandon(ctx: &Context, calls: Vec<Box<Calling>>, why: &str) -> Vec<TickRow> {
    let mut stopped = Vec::with_capacity(calls.len());
    for c in calls {
        let Calling {
            claim,
            cycle_id,
            call,
            ..
        } = *c;
        call.cancel();
        stopped.push((claim, cycle_id));
    }
    let claims: Vec<(&Claim, Option<i64>)> = stopped.iter().map(|(c, id)| (c, Some(*id))).collect();
    let mut states = release(ctx, &claims, why);
    stopped
        .iter()
        .map(|(c, _)| {
            row(
                c,
                Kind::Interrupted.generic_name(),
                states.remove(&c.ticket_id),
            )
        })
        .collect()
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
