//! All SPI lives here: each function runs one statement from `sql/runtime/` inside the caller's transaction.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;

use crate::core::phase::{Effect, Judgement, TicketInput};
use crate::core::ticket::NewTicket;
use crate::error::DamascusError;

const INSERT_TICKET: &str = include_str!("../sql/runtime/insert_ticket.sql");
const CLAIM: &str = include_str!("../sql/runtime/claim.sql");
const BEGIN_PHASE: &str = include_str!("../sql/runtime/begin_phase.sql");
const APPLY_VERDICT: &str = include_str!("../sql/runtime/apply_verdict.sql");
const RECORD_ERROR: &str = include_str!("../sql/runtime/record_error.sql");
const RELEASE_CLAIM: &str = include_str!("../sql/runtime/release_claim.sql");
const EXTENSION_READY: &str = include_str!("../sql/runtime/extension_ready.sql");
const HEARTBEAT: &str = include_str!("../sql/runtime/heartbeat.sql");
const CLAIM_LOST: &str = include_str!("../sql/runtime/claim_lost.sql");

/// A committed claim on one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub ticket_id: i64,
    pub state: String,
    pub token: i64,
    pub claim_xid: i64,
}

/// What the phase transaction recorded and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseStart {
    pub cycle_id: i64,
    pub input: TicketInput,
    pub llm_errors: i32,
}

/// Measurements of the call, stored on the cycle row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub http_status: Option<i32>,
    pub stop_reason: Option<String>,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    pub llm_ms: i32,
}

/// Where the verdict left the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictOutcome {
    pub state: Option<String>,
    pub verdict: String,
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

fn run<T>(
    name: &'static str,
    sql: &str,
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> ReadResult<T>,
) -> Result<T, DamascusError> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, None, args)?;
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

pub fn extension_ready() -> Result<bool, DamascusError> {
    run("extension_ready", EXTENSION_READY, &[], |table| {
        Ok(table.first().get::<bool>(1)?.unwrap_or(false))
    })
}

/// Claim transaction body. `None` when nothing is claimable.
pub fn claim(
    states: &[String],
    stale_minutes: i32,
    worker: &str,
) -> Result<Option<Claim>, DamascusError> {
    run(
        "claim",
        CLAIM,
        &[
            states.to_vec().into(),
            stale_minutes.into(),
            worker.to_string().into(),
        ],
        |table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            Ok(Some(Claim {
                ticket_id: required(&row, 1, "ticket id")?,
                state: required(&row, 2, "state")?,
                token: required(&row, 3, "claim token")?,
                claim_xid: required(&row, 4, "claim xid")?,
            }))
        },
    )
}

/// Phase transaction body. `None` when the claim was already superseded.
pub fn begin_phase(
    claim: &Claim,
    phase: &str,
    worker: &str,
) -> Result<Option<PhaseStart>, DamascusError> {
    run(
        "begin_phase",
        BEGIN_PHASE,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            phase.to_string().into(),
            worker.to_string().into(),
            claim.claim_xid.into(),
        ],
        |table| {
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            Ok(Some(PhaseStart {
                cycle_id: required(&row, 1, "cycle id")?,
                input: TicketInput {
                    id: claim.ticket_id,
                    title: required(&row, 2, "title")?,
                    body: required(&row, 3, "body")?,
                    attempts: required(&row, 4, "attempts")?,
                },
                llm_errors: required(&row, 5, "llm_errors")?,
            }))
        },
    )
}

/// Verdict transaction body, fenced by the claim token.
pub fn apply_verdict(
    claim: &Claim,
    cycle_id: i64,
    phase: &crate::core::phase::PhaseDef,
    judgement: &Judgement,
    facts: &CallFacts,
) -> Result<VerdictOutcome, DamascusError> {
    let (output, delay) = match &judgement.effect {
        Effect::Accept { output } => (Some(output.clone()), 0.0),
        Effect::Reject => (None, 0.0),
        Effect::Retry { delay } => (None, delay.as_secs_f64()),
    };
    run(
        "apply_verdict",
        APPLY_VERDICT,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            judgement.effect.tag().to_string().into(),
            phase.name.clone().into(),
            output.into(),
            phase.accept_state.clone().into(),
            phase.failed_state.clone().into(),
            delay.into(),
            judgement.verdict.clone().into(),
            judgement.detail.clone().into(),
            cycle_id.into(),
            facts.http_status.into(),
            facts.stop_reason.clone().into(),
            facts.input_tokens.into(),
            facts.output_tokens.into(),
            facts.llm_ms.into(),
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
    phase: &str,
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
            phase.to_string().into(),
            worker.to_string().into(),
            claim.claim_xid.into(),
            message.to_string().into(),
        ],
        |table| Ok(table.first().get::<String>(1)?),
    )
}

/// Gives an interrupted cycle's claim back; returns the ticket's state (None if our claim is gone).
pub fn release_claim(
    claim: &Claim,
    cycle_id: Option<i64>,
    detail: &str,
) -> Result<Option<String>, DamascusError> {
    run(
        "release_claim",
        RELEASE_CLAIM,
        &[
            claim.ticket_id.into(),
            claim.token.into(),
            cycle_id.into(),
            detail.to_string().into(),
        ],
        |table| Ok(table.first().get::<String>(1)?),
    )
}

/// Renews the lease; `false` when the claim was superseded.
pub fn heartbeat(claim: &Claim) -> Result<bool, DamascusError> {
    run(
        "heartbeat",
        HEARTBEAT,
        &[claim.ticket_id.into(), claim.token.into()],
        |table| Ok(!table.is_empty()),
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
