//! The one error type of damascus: each variant carries its SQLSTATE, message, detail and hint.

use pgrx::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::PgLogLevel;

use damascus_core::phase::PhaseError;
use damascus_core::ticket::SubmitError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamascusError {
    /// A required function argument was NULL.
    NullArgument { name: &'static str },
    /// A function argument was refused.
    InvalidArgument { message: String, detail: String },
    /// No background worker slot was free for a tick.
    NoWorkerSlot { max_worker_processes: String },
    /// The tick worker stopped without reporting a result.
    TickWorkerLost { detail: String },
    /// The tick worker ran but could not run a cycle (e.g. the claim statement failed).
    TickFailed { detail: String },
    /// The postmaster died while we waited for a worker.
    PostmasterDied,
    /// An SPI call failed in a way Postgres did not already report.
    Spi {
        statement: &'static str,
        detail: String,
    },
    /// A phase definition was refused (e.g. a token cap below its floor).
    InvalidPhase { name: String, error: PhaseError },
    /// A ticket id that names no ticket.
    UnknownTicket { id: i64 },
    /// A ticket operation that the ticket's state does not allow.
    IllegalMove {
        message: String,
        detail: String,
        hint: String,
    },
    /// The library is newer than the extension's objects in this database.
    SchemaOutdated { installed: String },
    /// The extension is not created in this database.
    ExtensionMissing,
    /// A tick on a server in recovery (a hot standby), which cannot write.
    InRecovery,
}

/// The version of the SQL objects this library expects.
pub const SCHEMA_VERSION: &str = env!("CARGO_PKG_VERSION");

impl From<SubmitError> for DamascusError {
    fn from(e: SubmitError) -> Self {
        DamascusError::InvalidArgument {
            message: format!("invalid ticket: {e}"),
            detail: "damascus_submit(title, body, priority) needs a non-blank title and body; the title may have 500 characters, the body damascus.max_body_bytes bytes."
                .into(),
        }
    }
}

impl DamascusError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            DamascusError::NullArgument { .. } => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            DamascusError::InvalidArgument { .. } => {
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
            }
            DamascusError::NoWorkerSlot { .. } => {
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED
            }
            DamascusError::TickWorkerLost { .. } => PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
            DamascusError::TickFailed { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            DamascusError::PostmasterDied => PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            DamascusError::Spi { .. } => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            DamascusError::InvalidPhase { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            DamascusError::UnknownTicket { .. } => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            DamascusError::IllegalMove { .. } | DamascusError::SchemaOutdated { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            DamascusError::ExtensionMissing => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            DamascusError::InRecovery => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        }
    }

    pub fn message(&self) -> String {
        match self {
            DamascusError::NullArgument { name } => format!("{name} must not be NULL"),
            DamascusError::InvalidArgument { message, .. } => message.clone(),
            DamascusError::NoWorkerSlot { .. } => {
                "damascus_tick: no background worker slot is free".into()
            }
            DamascusError::TickWorkerLost { .. } => {
                "damascus_tick: the tick worker stopped without reporting a result".into()
            }
            DamascusError::TickFailed { .. } => "damascus_tick: the cycle could not run".into(),
            DamascusError::PostmasterDied => "damascus: the postmaster died".into(),
            DamascusError::Spi { statement, .. } => {
                format!("damascus: statement {statement} failed")
            }
            DamascusError::InvalidPhase { name, error } => {
                format!("damascus: invalid definition of phase {name}: {error}")
            }
            DamascusError::UnknownTicket { id } => format!("damascus: ticket {id} does not exist"),
            DamascusError::IllegalMove { message, .. } => message.clone(),
            DamascusError::SchemaOutdated { installed } => format!(
                "damascus: the extension in this database is version {installed}, the library is {SCHEMA_VERSION}"
            ),
            DamascusError::ExtensionMissing => {
                "damascus: the extension is not created in this database".into()
            }
            DamascusError::InRecovery => "damascus_tick() cannot run on a hot standby".into(),
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            DamascusError::InvalidArgument { detail, .. }
            | DamascusError::TickWorkerLost { detail }
            | DamascusError::TickFailed { detail }
            | DamascusError::Spi { detail, .. }
            | DamascusError::IllegalMove { detail, .. } => Some(detail.clone()),
            DamascusError::InvalidPhase { .. } => Some(
                "The phases table is unchanged; no worker could run this definition.".into(),
            ),
            DamascusError::SchemaOutdated { .. } => Some(
                "The server loads the new damascus library, but this database still has the old tables and functions.".into(),
            ),
            DamascusError::NoWorkerSlot {
                max_worker_processes,
            } => Some(format!(
                "Every one of max_worker_processes ({max_worker_processes}) background worker slots is in use."
            )),
            DamascusError::InRecovery => Some(
                "This server is in recovery; a cycle writes its claim, phase and verdict.".into(),
            ),
            DamascusError::PostmasterDied
            | DamascusError::NullArgument { .. }
            | DamascusError::UnknownTicket { .. }
            | DamascusError::ExtensionMissing => None,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            DamascusError::NoWorkerSlot { .. } => Some(
                "Retry later, raise max_worker_processes (needs a restart), or lower damascus.workers.".into(),
            ),
            DamascusError::TickWorkerLost { .. } => {
                Some("The server log has the worker's last messages. The ticket's claim, if any, expires after damascus.stale_claim_minutes.".into())
            }
            DamascusError::InvalidPhase { error, .. } => Some(error.hint()),
            DamascusError::IllegalMove { hint, .. } => Some(hint.clone()),
            DamascusError::SchemaOutdated { .. } => {
                Some("Run ALTER EXTENSION damascus UPDATE in this database.".into())
            }
            DamascusError::ExtensionMissing => Some("Run CREATE EXTENSION damascus.".into()),
            DamascusError::InRecovery => Some("Run damascus_tick() on the primary.".into()),
            _ => None,
        }
    }

    /// Raises this error as a Postgres ERROR; never returns.
    #[track_caller]
    pub fn report(self) -> ! {
        let mut r = ErrorReport::new(self.sqlstate(), self.message(), "damascus");
        if let Some(d) = self.detail() {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint() {
            r = r.set_hint(h);
        }
        r.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// Unwraps a result, raising the error as a Postgres ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, DamascusError> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.report(),
        }
    }
}
