//! The SQL functions users call: thin wrappers that validate, then hand over to the store or the tick worker.

use pgrx::prelude::*;

use crate::core::ticket;
use crate::error::{DamascusError, OrRaise};

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
    let t = ticket::validate_submission(title, body.unwrap_or(""), priority.unwrap_or(0))
        .map_err(DamascusError::from)
        .or_raise();
    crate::store::insert_ticket(&t).or_raise()
}

/// Runs one cycle now, in a background worker, and returns what it did (no row when nothing was claimable).
#[pg_extern(volatile, parallel_unsafe)]
fn damascus_tick() -> TableIterator<
    'static,
    (
        name!(ticket_id, i64),
        name!(phase, String),
        name!(verdict, String),
        name!(state, Option<String>),
    ),
> {
    let row = crate::tick::tick().or_raise();
    TableIterator::new(row.map(|r| (r.ticket_id, r.phase, r.verdict, r.state)))
}
