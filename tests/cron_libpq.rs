//! `damascus_tick(max_cycles, max_seconds)` scheduled by pg_cron in its default mode, where the launcher opens
//! a libpq connection per job run (`cron.use_background_workers = off`): a pg_cron-only deployment
//! (`damascus.workers = 0`) moves tickets several cycles per run.

mod common;

use common::*;

#[test]
fn pg_cron_over_libpq_runs_multi_cycle_ticks() {
    let _g = serial();
    boot_with_pg_cron(false);
    assert_pg_cron_moves_a_ticket("SELECT count(*) FROM damascus_tick(10, 50)", "done", 3);
}
