//! A worker killed with SIGKILL during its LLM call (the postmaster then restarts every backend, as after any
//! crash): after the restart the ticket is claimable only once its claim has gone stale, then completes with
//! exactly one accepted verdict for the phase, and the dead worker's cycle row is closed, not left open.
//! Its own binary, so the restart breaks no other test's connections.

mod common;

use common::*;
use std::time::Duration;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

#[test]
fn a_worker_killed_during_its_call_leaves_a_claim_that_goes_stale_then_the_ticket_completes() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    let id = submit(&mut c, "Killed mid-call", "body");
    let caller = std::thread::spawn(|| {
        client()
            .query("SELECT * FROM damascus_tick()", &[])
            .map(|_| ())
    });
    wait_for("the call to be in flight", Duration::from_secs(10), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    // The phase transaction commits asynchronously; the WAL writer flushes it within moments. Wait for that,
    // so the crash tests the claim, not the loss of an unflushed commit (which only means a fresh claim).
    let lsn: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    wait_for(
        "the phase transaction to reach the disk",
        Duration::from_secs(10),
        || {
            let flushed: bool = c
                .query_one(
                    "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .unwrap()
                .get(0);
            flushed.then_some(())
        },
    );
    let pid: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'damascus tick'",
            &[],
        )
        .unwrap()
        .get(0);
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        caller.join().unwrap().is_err(),
        "the caller's backend went down with the restart"
    );
    drop(c);
    let mut c = wait_for(
        "the cluster to take connections again",
        Duration::from_secs(60),
        || {
            pgrx_tests::client()
                .ok()
                .map(|(c, _)| c)
                .filter(|c| !c.is_closed())
        },
    );
    let t = ticket(&mut c, id);
    assert!(t.claimed, "the dead worker's claim outlives it: {t:?}");
    assert_eq!(t.attempts, 1, "its attempt was counted before the call");
    llm.set_behavior(Behavior::Good);
    assert_eq!(tick(&mut c), None, "not claimable inside the stale window");
    age_claim(&mut c, id, 60);
    let row = tick(&mut c).expect("the stale claim is taken over");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "spec_ok"));
    let cy = cycles(&mut c, id);
    assert_eq!(cy.len(), 2, "{cy:?}");
    let accepted = cy
        .iter()
        .filter(|x| x.phase == "refine_spec" && x.verdict.as_deref() == Some("spec_ok"))
        .count();
    assert_eq!(accepted, 1, "one accepted verdict for the phase");
    assert!(
        cy.iter().all(|x| x.verdict.is_some()),
        "no cycle row left open: {cy:?}"
    );
    assert_eq!(cy[0].verdict.as_deref(), Some("claim_lost"));
}
