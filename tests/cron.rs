//! `SELECT damascus_tick()` scheduled by pg_cron (Debian's postgresql-15-cron, minute granularity) moves a
//! ticket, with pg_cron running its jobs in background workers (`cron.use_background_workers = on`); the
//! same with libpq connections is tests/cron_libpq.rs.

mod common;

use common::*;

#[test]
fn pg_cron_in_background_workers_runs_damascus_tick() {
    let _g = serial();
    boot_with_pg_cron(true);
    assert_pg_cron_moves_a_ticket("SELECT damascus_tick()", "specified", 1);
}
