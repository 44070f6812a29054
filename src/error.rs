//! The one error type of damascus: each variant carries its SQLSTATE, message, detail and hint.

use pgrx::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::PgLogLevel;

use crate::core::ticket::SubmitError;

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
    InvalidPhase { detail: String },
}

impl From<SubmitError> for DamascusError {
    fn from(e: SubmitError) -> Self {
        DamascusError::InvalidArgument {
            message: format!("invalid ticket: {e}"),
            detail: "damascus_submit(title, body, priority) needs a non-blank title; title and body have size limits."
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
            DamascusError::InvalidPhase { .. } => "damascus: invalid phase definition".into(),
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            DamascusError::InvalidArgument { detail, .. }
            | DamascusError::TickWorkerLost { detail }
            | DamascusError::TickFailed { detail }
            | DamascusError::Spi { detail, .. }
            | DamascusError::InvalidPhase { detail } => Some(detail.clone()),
            DamascusError::NoWorkerSlot {
                max_worker_processes,
            } => Some(format!(
                "Every one of max_worker_processes ({max_worker_processes}) background worker slots is in use."
            )),
            DamascusError::PostmasterDied | DamascusError::NullArgument { .. } => None,
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
            DamascusError::InvalidPhase { .. } => {
                Some("damascus.refine_spec_max_tokens may not be below 3000.".into())
            }
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
