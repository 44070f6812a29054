//! All SPI lives here: each function runs one statement from `sql/runtime/` inside the caller's transaction.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::spi::SpiTupleTable;

use pgrx::JsonB;

use crate::error::DamascusError;
use damascus_core::phase::{Effect, Judgement, PhaseRow, TicketInput};
use damascus_core::ticket::NewTicket;

const INSERT_TICKET: &str = include_str!("../sql/runtime/insert_ticket.sql");
const CLAIM: &str = include_str!("../sql/runtime/claim.sql");
const BEGIN_PHASE: &str = include_str!("../sql/runtime/begin_phase.sql");
const APPLY_VERDICT: &str = include_str!("../sql/runtime/apply_verdict.sql");
const RECORD_ERROR: &str = include_str!("../sql/runtime/record_error.sql");
const RELEASE_CLAIM: &str = include_str!("../sql/runtime/release_claim.sql");
const EXTENSION_READY: &str = include_str!("../sql/runtime/extension_ready.sql");
const HEARTBEAT: &str = include_str!("../sql/runtime/heartbeat.sql");
const CLAIM_LOST: &str = include_str!("../sql/runtime/claim_lost.sql");
const DECISION_INPUTS: &str = include_str!("../sql/runtime/decision_inputs.sql");
const RECORD_DECISION: &str = include_str!("../sql/runtime/record_decision.sql");
const RETRY_TICKET: &str = include_str!("../sql/runtime/retry_ticket.sql");
const CANCEL_TICKET: &str = include_str!("../sql/runtime/cancel_ticket.sql");
const RELEASE_TICKET: &str = include_str!("../sql/runtime/release_ticket.sql");
const TICKET_STATUS: &str = include_str!("../sql/runtime/ticket_status.sql");
const PRUNE_CYCLES: &str = include_str!("../sql/runtime/prune_cycles.sql");
const ANYTHING_CLAIMABLE: &str = include_str!("../sql/runtime/anything_claimable.sql");
const RESERVE_BUDGET: &str = include_str!("../sql/runtime/reserve_budget.sql");

/// A committed claim on one ticket, for the phase that claims its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub ticket_id: i64,
    pub state: String,
    pub phase: String,
    pub token: i64,
    pub claim_xid: i64,
}

/// What the phase transaction recorded and read.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseStart {
    pub cycle_id: i64,
    pub input: TicketInput,
    /// The phase row as it is now; `None` when it was changed or removed since the claim.
    pub phase: Option<PhaseRow>,
    /// Whether any budget exists, so the cycle's worst case must be reserved before its call.
    pub budgets: bool,
}

/// Measurements and evidence of the call, stored on the cycle row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub http_status: Option<i32>,
    pub stop_reason: Option<String>,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    pub llm_ms: i32,
    pub provider: String,
    pub model: String,
    pub prompt_sha256: String,
    pub answer: Option<String>,
    pub cache_write_tokens: Option<i32>,
    pub cache_read_tokens: Option<i32>,
    /// The provider's usage object, verbatim.
    pub usage: Option<serde_json::Value>,
    /// The remaining figures of the provider's rate-limit headers.
    pub ratelimit: Option<serde_json::Value>,
}

/// Where the verdict left the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictOutcome {
    pub state: Option<String>,
    pub verdict: String,
}

/// A ticket as an approval decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionInputs {
    pub input: TicketInput,
    pub phase: Option<PhaseRow>,
    pub claimed: bool,
}

/// Why a ticket operation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketStatus {
    pub state: String,
    pub claimed: bool,
    pub last_phase: Option<String>,
}

/// Why a statement's result could not be read.
enum ReadError {
    Spi(pgrx::spi::SpiError),
    Null(&'static str),
}

impl From<pgrx::spi::SpiError> for ReadError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        ReadError::Spi(e)
    }
}

type ReadResult<T> = Result<T, ReadError>;

thread_local! {
    /// Each statement is parsed and planned once per process and kept (SPI_keepplan), not once per call;
    /// Postgres revalidates a kept plan by itself when a table it uses changes. Main thread only, as all SPI.
    static PLANS: RefCell<HashMap<&'static str, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

fn run<T>(
    name: &'static str,
    sql: &'static str,
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> ReadResult<T>,
) -> Result<T, DamascusError> {
    Spi::connect_mut(|client| {
        let table = PLANS.with(|plans| -> ReadResult<SpiTupleTable> {
            let mut plans = plans.borrow_mut();
            let plan = match plans.entry(name) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
                    e.insert(client.prepare_mut(sql, &types)?.keep())
                }
            };
            Ok(client.update(&*plan, None, args)?)
        })?;
        read(table)
    })
    .map_err(|e| DamascusError::Spi {
        statement: name,
        detail: match e {
            ReadError::Spi(e) => e.to_string(),
            ReadError::Null(what) => format!("{what} was NULL"),
        },
    })
}

fn required<T: FromDatum + IntoDatum>(
    table: &SpiTupleTable,
    ordinal: usize,
    what: &'static str,
) -> ReadResult<T> {
    table.get::<T>(ordinal)?.ok_or(ReadError::Null(what))
}

pub fn insert_ticket(t: &NewTicket) -> Result<i64, DamascusError> {
    run(
        "insert_ticket",
        INSERT_TICKET,
        &[
            t.title.clone().into(),
            t.body.clone().into(),
            t.priority.into(),
        ],
        |table| required(&table.first(), 1, "ticket id"),
    )
}

/// The version of the extension created in this database, `None` when it is not created.
pub fn extension_version() -> Result<Option<String>, DamascusError> {
    run("extension_ready", EXTENSION_READY, &[], |table| {
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table.first().get::<String>(1)?)
    })
}

/// Deletes one batch of finished cycle rows older than the retention; returns how many went.
pub fn prune_cycles(retention_minutes: i32, batch: i32) -> Result<i64, DamascusError> {
    run(
        "prune_cycles",
        PRUNE_CYCLES,
        &[retention_minutes.into(), batch.into()],
        |table| Ok(table.first().get::<i64>(1)?.unwrap_or(0)),
    )
}

/// Whether a claim could find anything now (no lock taken).
pub fn anything_claimable(stale_minutes: i32) -> Result<bool, DamascusError> {
    run(
        "anything_claimable",
        ANYTHING_CLAIMABLE,
        &[stale_minutes.into()],
        |table| Ok(table.first().get::<bool>(1)?.unwrap_or(true)),
    )
}

/// Claim transaction body: up to `limit` claims, best first (none when nothing is claimable).
pub fn claim(stale_minutes: i32, worker: &str, limit: i32) -> Result<Vec<Claim>, DamascusError> {
    run(
        "claim",
        CLAIM,
        &[
            stale_minutes.into(),
            worker.to_string().into(),
            limit.into(),
        ],
        |table| {
            let mut claims = Vec::new();
            for row in table {
                let get_i64 = |n, what| row.get::<i64>(n)?.ok_or(ReadError::Null(what));
                let get_text = |n, what| row.get::<String>(n)?.ok_or(ReadError::Null(what));
                claims.push(Claim {
                    ticket_id: get_i64(1, "ticket id")?,
                    state: get_text(2, "state")?,
                    phase: get_text(3, "phase")?,
                    token: get_i64(4, "claim token")?,
                    claim_xid: get_i64(5, "claim xid")?,
                });
            }
            Ok(claims)
        },
    )
}

/// Reads the ticket and phase columns that begin_phase.sql and decision_inputs.sql share.
fn ticket_and_phase(
    row: &SpiTupleTable,
    ticket_id: i64,
) -> ReadResult<(TicketInput, Option<PhaseRow>)> {
    let input = TicketInput {
        id: ticket_id,
        state: required(row, 2, "state")?,
        title: required(row, 3, "title")?,
        body: required(row, 4, "body")?,
        outputs: required::<JsonB>(row, 5, "outputs")?.0,
        feedback: row.get::<String>(6)?,
        attempts: required(row, 7, "attempts")?,
        rejections: required(row, 8, "rejections")?,
        llm_errors: required(row, 9, "llm_errors")?,
    };
    let Some(name) = row.get::<String>(10)? else {
        return Ok((input, None));
    };
    let phase = PhaseRow {
        name,
        kind: required(row, 11, "kind")?,
        from_state: required(row, 12, "from_state")?,
        transitions: required::<JsonB>(row, 13, "transitions")?.0,
        max_attempts: required(row, 14, "max_attempts")?,
        max_rejections: required(row, 15, "max_rejections")?,
        max_tokens: required(row, 16, "max_tokens")?,
        model: row.get::<String>(17)?,
        timeout_s: row.get::<i32>(18)?,
        system_prompt: required(row, 19, "system_prompt")?,
        prompt_template: required(row, 20, "prompt_template")?,
        validator: required::<JsonB>(row, 21, "validator")?.0,
        verdict_prefix: row.get::<String>(22)?,
    };
    Ok((input, Some(phase)))
}

/// Phase transaction body. `None` when the claim was already superseded.
pub fn begin_phase(claim: &Claim, worker: &str) -> Result<Option<PhaseStart>, DamascusError> {
    run(
        "begin_phase",
        BEGIN_PHASE,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            claim.phase.clone().into(),
            worker.to_string().into(),
            claim.claim_xid.into(),
        ],
        |table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            let (input, phase) = ticket_and_phase(&row, claim.ticket_id)?;
            Ok(Some(PhaseStart {
                cycle_id: required(&row, 1, "cycle id")?,
                input,
                phase,
                budgets: row.get::<bool>(23)?.unwrap_or(false),
            }))
        },
    )
}

/// A cycle's worst case against the budgets of its scope, in its phase transaction: `None` when reserved, the
/// reason when the cycle is held back (then its claim is given back and its cycle row closed as budget_held).
pub fn reserve_budget(
    claim: &Claim,
    cycle_id: i64,
    provider: &str,
    model: &str,
    input_tokens: i32,
    max_tokens: i32,
) -> Result<Option<String>, DamascusError> {
    run(
        "reserve_budget",
        RESERVE_BUDGET,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            cycle_id.into(),
            claim.phase.clone().into(),
            provider.to_string().into(),
            model.to_string().into(),
            input_tokens.into(),
            max_tokens.into(),
        ],
        |table| Ok(table.first().get::<String>(1)?),
    )
}

/// Verdict transaction body, fenced by the claim token.
pub fn apply_verdict(
    claim: &Claim,
    cycle_id: i64,
    judgement: &Judgement,
    facts: &CallFacts,
) -> Result<VerdictOutcome, DamascusError> {
    let (retry, state, attempts, rejections, feedback, key, output, delay) = match &judgement.effect
    {
        Effect::Move(m) => (
            false,
            Some(m.state.clone()),
            Some(m.attempts),
            Some(m.rejections),
            m.feedback.clone(),
            m.output.as_ref().map(|_| claim.phase.clone()),
            m.output.clone(),
            0.0,
        ),
        Effect::Retry { delay } => (
            true,
            None,
            None,
            None,
            None,
            None,
            None,
            delay.as_secs_f64(),
        ),
    };
    run(
        "apply_verdict",
        APPLY_VERDICT,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            cycle_id.into(),
            judgement.verdict.clone().into(),
            judgement.detail.clone().into(),
            retry.into(),
            state.into(),
            attempts.into(),
            rejections.into(),
            feedback.into(),
            key.into(),
            output.into(),
            delay.into(),
            facts.http_status.into(),
            facts.stop_reason.clone().into(),
            facts.input_tokens.into(),
            facts.output_tokens.into(),
            facts.llm_ms.into(),
            facts.provider.clone().into(),
            facts.model.clone().into(),
            facts.prompt_sha256.clone().into(),
            facts.answer.clone().into(),
            facts.cache_write_tokens.into(),
            facts.cache_read_tokens.into(),
            facts.usage.clone().map(JsonB).into(),
            facts.ratelimit.clone().map(JsonB).into(),
        ],
        |table| {
            let row = table.first();
            Ok(VerdictOutcome {
                state: row.get::<String>(1)?,
                verdict: required(&row, 2, "verdict")?,
            })
        },
    )
}

/// Records a caught ERROR; returns the ticket's state (None if our claim is gone).
pub fn record_error(
    claim: &Claim,
    cycle_id: Option<i64>,
    worker: &str,
    message: &str,
) -> Result<Option<String>, DamascusError> {
    run(
        "record_error",
        RECORD_ERROR,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            cycle_id.into(),
            claim.phase.clone().into(),
            worker.to_string().into(),
            claim.claim_xid.into(),
            message.to_string().into(),
        ],
        |table| Ok(table.first().get::<String>(1)?),
    )
}

/// Gives interrupted cycles' claims back in one statement; returns (ticket id, state) of each claim that was
/// still ours.
pub fn release_claims(
    claims: &[(&Claim, Option<i64>)],
    detail: &str,
) -> Result<Vec<(i64, String)>, DamascusError> {
    let ids: Vec<i64> = claims.iter().map(|(c, _)| c.ticket_id).collect();
    let tokens: Vec<i64> = claims.iter().map(|(c, _)| c.token).collect();
    let cycles: Vec<Option<i64>> = claims.iter().map(|(_, cycle)| *cycle).collect();
    run(
        "release_claim",
        RELEASE_CLAIM,
        &[
            ids.into(),
            tokens.into(),
            cycles.into(),
            detail.to_string().into(),
        ],
        |table| {
            let mut out = Vec::new();
            for row in table {
                out.push((
                    row.get::<i64>(1)?.ok_or(ReadError::Null("ticket id"))?,
                    row.get::<String>(2)?.ok_or(ReadError::Null("state"))?,
                ));
            }
            Ok(out)
        },
    )
}

/// Renews the leases of all the given claims in one statement; returns the ticket ids whose claim is still
/// ours (the others were superseded).
pub fn heartbeat(claims: &[&Claim]) -> Result<Vec<i64>, DamascusError> {
    let ids: Vec<i64> = claims.iter().map(|c| c.ticket_id).collect();
    let tokens: Vec<i64> = claims.iter().map(|c| c.token).collect();
    run(
        "heartbeat",
        HEARTBEAT,
        &[ids.into(), tokens.into()],
        |table| {
            let mut alive = Vec::new();
            for row in table {
                alive.push(row.get::<i64>(1)?.ok_or(ReadError::Null("ticket id"))?);
            }
            Ok(alive)
        },
    )
}

/// Closes a cycle whose claim was superseded while its call ran.
pub fn record_claim_lost(cycle_id: i64, detail: &str) -> Result<(), DamascusError> {
    run(
        "claim_lost",
        CLAIM_LOST,
        &[cycle_id.into(), detail.to_string().into()],
        |_| Ok(()),
    )
}

/// Locks a ticket and reads it with the enabled phase that claims its state. `None`: no such ticket.
pub fn decision_inputs(ticket_id: i64) -> Result<Option<DecisionInputs>, DamascusError> {
    run(
        "decision_inputs",
        DECISION_INPUTS,
        &[ticket_id.into()],
        |table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            let (input, phase) = ticket_and_phase(&row, ticket_id)?;
            Ok(Some(DecisionInputs {
                input,
                phase,
                claimed: required(&row, 23, "claimed")?,
            }))
        },
    )
}

/// An approval decision as the phase's rules decided it.
pub struct Decision<'a> {
    pub ticket_id: i64,
    pub phase: &'a str,
    pub verdict: &'a str,
    pub note: Option<&'a str>,
    pub state: &'a str,
    pub attempts: i32,
    pub rejections: i32,
    pub feedback: Option<&'a str>,
    pub last_error: Option<&'a str>,
    pub attempt: i32,
}

/// Applies an approval decision and records its cycle row; returns the new state.
pub fn record_decision(d: &Decision) -> Result<String, DamascusError> {
    run(
        "record_decision",
        RECORD_DECISION,
        &[
            d.ticket_id.into(),
            d.phase.to_string().into(),
            d.verdict.to_string().into(),
            d.note.map(str::to_string).into(),
            d.state.to_string().into(),
            d.attempts.into(),
            d.rejections.into(),
            d.feedback.map(str::to_string).into(),
            d.last_error.map(str::to_string).into(),
            d.attempt.into(),
        ],
        |table| required(&table.first(), 1, "state"),
    )
}

/// The ticket operations that are one fenced UPDATE each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketOp {
    Retry,
    Cancel,
    Release,
}

/// Runs a ticket operation; `None` when it changed nothing (see `ticket_status` for why).
pub fn ticket_op(op: TicketOp, ticket_id: i64) -> Result<Option<String>, DamascusError> {
    let (name, sql) = match op {
        TicketOp::Retry => ("retry_ticket", RETRY_TICKET),
        TicketOp::Cancel => ("cancel_ticket", CANCEL_TICKET),
        TicketOp::Release => ("release_ticket", RELEASE_TICKET),
    };
    run(name, sql, &[ticket_id.into()], |table| {
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table.first().get::<String>(1)?)
    })
}

/// A ticket's state, claim and last phase; `None` when there is no such ticket.
pub fn ticket_status(ticket_id: i64) -> Result<Option<TicketStatus>, DamascusError> {
    run(
        "ticket_status",
        TICKET_STATUS,
        &[ticket_id.into()],
        |table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            Ok(Some(TicketStatus {
                state: required(&row, 1, "state")?,
                claimed: required(&row, 2, "claimed")?,
                last_phase: row.get::<String>(3)?,
            }))
        },
    )
}
