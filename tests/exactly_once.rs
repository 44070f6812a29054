//! Exactly once under concurrency: two static workers with eight calls in flight each and four concurrent
//! `damascus_tick()` loops drain 200 tickets through all three phases; every ticket gets exactly one
//! accepted verdict per phase, the stand-in LLM exactly one call per ticket and phase, and no cycle row is
//! left open.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn two_workers_and_four_tick_loops_give_one_accepted_verdict_per_ticket_and_phase() {
    let _g = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.database = 'pgrx_tests'",
        "damascus.workers = 2",
        "damascus.max_inflight = 8",
        "damascus.naptime = 50",
        "damascus.llm_api_key = 'sk-fake'",
        // Short, so the tests that wait for a heartbeat do not wait long.
        "damascus.heartbeat_seconds = 2",
        "max_worker_processes = 16",
    ]);
    let llm = fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute(
        "SELECT count(damascus_submit('Concurrent ' || g, 'body ' || g)) FROM generate_series(1, 200) g",
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut c = client();
                let mut ran = 0;
                while !done.load(Ordering::SeqCst) {
                    match c.query("SELECT * FROM damascus_tick()", &[]) {
                        Ok(rows) if !rows.is_empty() => ran += 1,
                        Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                        // A full set of worker slots is an answer, not a failure: try again.
                        Err(e) if db_error(&e).0 == "53400" => {}
                        Err(e) => panic!("tick failed: {e}"),
                    }
                }
                ran
            })
        })
        .collect();
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_tickets_in(&mut c, "done", 200, Duration::from_secs(180))
    }));
    done.store(true, Ordering::SeqCst);
    let by_ticks: i32 = loops.into_iter().map(|h| h.join().unwrap()).sum();
    if let Err(e) = drained {
        std::panic::resume_unwind(e);
    }
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE n <> 1), count(*) FROM (
               SELECT ticket_id, phase, count(*) AS n FROM damascus.cycles
               WHERE verdict IN ('spec_ok', 'impl_ok', 'approved') GROUP BY 1, 2) AS accepted",
            &[],
        )
        .unwrap();
    assert_eq!(
        r.get::<_, i64>(0),
        0,
        "a ticket and phase with more than one accepted verdict"
    );
    assert_eq!(
        r.get::<_, i64>(1),
        600,
        "one accepted verdict per ticket and phase"
    );
    let open: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE verdict IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no orphaned cycle row");
    assert_eq!(
        llm.request_count(),
        600,
        "one LLM call per ticket and phase"
    );
    let workers: i64 = c
        .query_one(
            "SELECT count(DISTINCT worker) FROM damascus.cycles WHERE worker LIKE 'damascus worker%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(workers, 2, "both static workers took part");
    assert!(by_ticks > 0, "the tick loops took part");
}
