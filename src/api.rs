//! The SQL functions users call: thin wrappers that validate, then hand over to the store or the tick worker.

use pgrx::prelude::*;

use crate::error::{DamascusError, OrRaise};
use crate::store;
use damascus_core::phase::{self, PhaseDef};
use damascus_core::ticket;

/// Queues a ticket in state `new` and returns its id.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_submit(
    title: Option<&str>,
    body: Option<&str>,
    priority: default!(Option<i32>, 0),
) -> i64 {
    let Some(title) = title else {
        DamascusError::NullArgument { name: "title" }.report()
    };
    let Some(body) = body else {
        DamascusError::NullArgument { name: "body" }.report()
    };
    let t = ticket::validate_submission(
        title,
        body,
        priority.unwrap_or(0),
        crate::guc::max_body_bytes(),
    )
    .map_err(DamascusError::from)
    .or_raise();
    crate::store::insert_ticket(&t).or_raise()
}

/// Lets calls go to the LLM provider again after it refused for its spend limit (and ends any cooldown);
/// returns whether it was parked.
#[pg_extern(volatile, parallel_unsafe)]
fn damascus_resume_provider() -> bool {
    crate::shared::resume_provider()
}

/// The C symbol 0.1.0's `damascus_tick()` is bound to (0.2.0's function has its own): reachable only from a
/// schema that was not updated, so it refuses with the error that says to run ALTER EXTENSION damascus UPDATE.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn damascus_tick_wrapper(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    crate::tick::ready_to_run().or_raise();
    DamascusError::SchemaOutdated {
        installed: "0.1.0".into(),
    }
    .report()
}

/// Version-1 calling convention record of `damascus_tick_wrapper`, which Postgres looks up before calling it.
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_damascus_tick_wrapper() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Runs up to `max_cycles` cycles now (in flight together, as a worker would, within `max_seconds` when given)
/// in a background worker and returns one row per cycle (none when nothing was claimable).
#[pg_extern(name = "damascus_tick", volatile, parallel_unsafe)]
fn damascus_tick_cycles(
    // NULL counts as 1.
    max_cycles: default!(Option<i32>, 1),
    max_seconds: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ticket_id, i64),
        name!(phase, String),
        name!(verdict, String),
        name!(state, Option<String>),
    ),
> {
    let rows = crate::tick::tick(max_cycles.unwrap_or(1), max_seconds).or_raise();
    TableIterator::new(
        rows.into_iter()
            .map(|r| (r.ticket_id, r.phase, r.verdict, r.state)),
    )
}

/// Functions in the `damascus` schema (not meant to be called by users directly).
#[pg_schema]
mod damascus {
    use pgrx::prelude::*;

    use crate::error::DamascusError;
    use damascus_core::phase;

    /// Trigger on `damascus.tickets`: wakes the idle static workers when the transaction that made a ticket
    /// claimable commits, so it is claimed in milliseconds rather than after `damascus.naptime`.
    #[pg_trigger]
    fn wake_workers<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
        crate::shared::wake_at_commit();
        Ok(None)
    }

    /// The running static workers and how many cycles each finished since it started (shared memory; empty
    /// when damascus is not in shared_preload_libraries). Read by `damascus.worker_status`.
    #[pg_extern(volatile, parallel_safe)]
    fn worker_counters() -> TableIterator<'static, (name!(pid, i32), name!(cycles_done, i64))> {
        TableIterator::new(crate::shared::workers())
    }

    /// The LLM provider's state in shared memory: parked after a spend-limit refusal, and how long a cooldown
    /// a 429's retry-after started still runs (0 when none).
    #[pg_extern(volatile, parallel_safe)]
    fn provider_state() -> TableIterator<'static, (name!(parked, bool), name!(cooldown_ms, i64))> {
        let (parked, until_ms) = crate::shared::provider_state();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let left = i64::try_from(until_ms.saturating_sub(now_ms)).unwrap_or(i64::MAX);
        TableIterator::once((parked, left))
    }

    /// Refuses a phase definition no worker could run; called by the `damascus.phases` trigger.
    #[pg_extern(immutable, parallel_safe)]
    fn check_phase(
        name: &str,
        kind: &str,
        max_tokens: i32,
        prompt_template: &str,
        validator: pgrx::JsonB,
        transitions: pgrx::JsonB,
    ) {
        if let Err(error) = phase::check(
            name,
            kind,
            max_tokens,
            prompt_template,
            &validator.0,
            &transitions.0,
        ) {
            DamascusError::InvalidPhase {
                name: name.to_string(),
                error,
            }
            .report()
        }
    }
}

fn required_id(ticket_id: Option<i64>) -> i64 {
    match ticket_id {
        Some(id) => id,
        None => DamascusError::NullArgument { name: "ticket_id" }.report(),
    }
}

/// Approves a ticket waiting at an approval phase; returns its new state.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_approve(ticket_id: Option<i64>, note: default!(Option<&str>, "NULL")) -> String {
    decide(required_id(ticket_id), phase::APPROVED, note).or_raise()
}

/// Rejects a ticket waiting at an approval phase; the reasons become its feedback. Returns its new state.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_reject(ticket_id: Option<i64>, reasons: Option<&str>) -> String {
    let id = required_id(ticket_id);
    let Some(reasons) = reasons.map(str::trim).filter(|r| !r.is_empty()) else {
        DamascusError::InvalidArgument {
            message: "damascus_reject: reasons must not be empty".into(),
            detail:
                "The reasons are stored as the ticket's feedback for the phase it goes back to."
                    .into(),
        }
        .report()
    };
    decide(id, phase::REJECTED, Some(reasons)).or_raise()
}

/// An approval decision: the same transition rules a worker's verdict follows, applied to the locked ticket.
fn decide(id: i64, verdict: &str, note: Option<&str>) -> Result<String, DamascusError> {
    let inputs = store::decision_inputs(id)?.ok_or(DamascusError::UnknownTicket { id })?;
    let waiting = inputs
        .phase
        .filter(|p| p.kind == "approval")
        .filter(|_| !inputs.claimed);
    let Some(row) = waiting else {
        return Err(DamascusError::IllegalMove {
            message: format!(
                "damascus: ticket {id} is not waiting for approval (it is {}{})",
                inputs.input.state,
                if inputs.claimed { ", claimed" } else { "" }
            ),
            detail: "damascus_approve and damascus_reject decide tickets whose state an enabled phase of kind 'approval' claims.".into(),
            hint: "SELECT name, from_state FROM damascus.phases WHERE kind = 'approval' lists the approval phases.".into(),
        });
    };
    let def = PhaseDef::from_row(row).map_err(|error| DamascusError::InvalidPhase {
        name: inputs.input.state.clone(),
        error,
    })?;
    let reasons = (verdict == phase::REJECTED).then_some(note).flatten();
    let mv = def.decide(verdict, &inputs.input, reasons, None);
    store::record_decision(&store::Decision {
        ticket_id: id,
        phase: &def.name,
        verdict,
        note,
        state: &mv.state,
        attempts: mv.attempts,
        rejections: mv.rejections,
        feedback: mv.feedback.as_deref(),
        last_error: mv.failure.as_deref().or(reasons),
        attempt: inputs.input.attempts + 1,
    })
}

/// Runs a retry, cancel or release; when it changes nothing, says why.
fn ticket_op(op: store::TicketOp, id: i64) -> Result<String, DamascusError> {
    if let Some(state) = store::ticket_op(op, id)? {
        return Ok(state);
    }
    let status = store::ticket_status(id)?.ok_or(DamascusError::UnknownTicket { id })?;
    let (what, detail, hint) = match op {
        store::TicketOp::Retry => match &status.last_phase {
            _ if status.state != phase::FAILED => (
                "retry",
                "Only a failed ticket can be retried.".to_string(),
                "damascus_release drops a claim; damascus_cancel stops a ticket.".to_string(),
            ),
            Some(p) => (
                "retry",
                format!("Its last phase, {p}, no longer exists, so there is no state to go back to."),
                "UPDATE damascus.tickets SET state = '<a claimed state>', attempts = 0 WHERE id = ... moves it by hand.".to_string(),
            ),
            None => (
                "retry",
                "It has no cycle, so no phase to go back to.".to_string(),
                "UPDATE damascus.tickets SET state = 'new', attempts = 0 WHERE id = ... moves it by hand.".to_string(),
            ),
        },
        store::TicketOp::Cancel => (
            "cancel",
            "A done or cancelled ticket cannot be cancelled.".to_string(),
            "Nothing to do: the ticket is already finished.".to_string(),
        ),
        store::TicketOp::Release => (
            "release",
            "Only a claimed ticket has a claim to drop.".to_string(),
            "SELECT id, claimed_by, claimed_at FROM damascus.tickets WHERE claim_token IS NOT NULL lists the claims.".to_string(),
        ),
    };
    Err(DamascusError::IllegalMove {
        message: format!(
            "damascus: cannot {what} ticket {id} in state {}{}",
            status.state,
            if status.claimed { " (claimed)" } else { "" }
        ),
        detail,
        hint,
    })
}

/// Sends a failed ticket back to the state its last phase claims; returns that state.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_retry(ticket_id: Option<i64>) -> String {
    ticket_op(store::TicketOp::Retry, required_id(ticket_id)).or_raise()
}

/// Cancels a ticket; a running cycle's verdict becomes claim_lost. Returns `cancelled`.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_cancel(ticket_id: Option<i64>) -> String {
    ticket_op(store::TicketOp::Cancel, required_id(ticket_id)).or_raise()
}

/// Drops a ticket's claim now; returns its state.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn damascus_release(ticket_id: Option<i64>) -> String {
    ticket_op(store::TicketOp::Release, required_id(ticket_id)).or_raise()
}
