//! The static background worker, preloaded into a real Postgres 15: it drains tickets with no manual tick,
//! survives errors, reloads on SIGHUP and gives its claim back on SIGTERM.

mod common;

use common::*;
use std::time::Duration;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let guard = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.database = 'pgrx_tests'",
        "damascus.workers = 1",
        "damascus.naptime = 100",
        "damascus.llm_api_key = 'sk-fake'",
    ]);
    guard
}

/// The pid of the static worker, once it is up.
fn worker_pid(c: &mut Client) -> i32 {
    wait_for("the static worker", Duration::from_secs(30), || {
        c.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'damascus worker' AND application_name = 'damascus worker 1'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    })
}

fn wait_state(c: &mut Client, id: i64, state: &str, timeout: Duration) {
    wait_for(&format!("ticket {id} to reach {state}"), timeout, || {
        (ticket(c, id).state == state).then_some(())
    });
}

#[test]
fn the_static_worker_drains_20_tickets_without_a_manual_tick() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let ids: Vec<i64> = (0..20)
        .map(|i| submit(&mut c, &format!("Ticket number {i}"), "Do the thing"))
        .collect();
    wait_for("all 20 tickets specified", Duration::from_secs(60), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM damascus.tickets WHERE state = 'specified'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 20).then_some(())
    });
    for id in ids {
        let cy = cycles(&mut c, id);
        assert_eq!(cy.len(), 1, "one cycle per ticket");
        assert!(
            cy[0].worker.starts_with("damascus worker 1 (pid "),
            "{}",
            cy[0].worker
        );
        assert_eq!(cy[0].verdict.as_deref(), Some("spec_ok"));
        let t = ticket(&mut c, id);
        assert!(!t.claimed && t.spec.is_some(), "{t:?}");
    }
    assert_eq!(llm.request_count(), 20, "exactly one LLM call per ticket");
}

#[test]
fn a_phase_error_leaves_the_claim_in_place_and_the_worker_alive() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    arm_phase_failure(&mut c, "explode");
    let bad = submit(&mut c, "explode", "body");
    let good: Vec<i64> = (0..3)
        .map(|i| submit(&mut c, &format!("fine {i}"), "body"))
        .collect();
    for id in &good {
        wait_state(&mut c, *id, "specified", Duration::from_secs(30));
    }
    disarm_phase_failure(&mut c);
    let t = ticket(&mut c, bad);
    assert!(
        t.claimed
            && t.claimed_by
                .as_deref()
                .unwrap()
                .starts_with("damascus worker 1"),
        "claim kept: {t:?}"
    );
    assert_eq!(
        (t.state.as_str(), t.last_verdict.as_deref()),
        ("new", Some("error"))
    );
    assert!(t.last_error.as_deref().unwrap().contains("boom"), "{t:?}");
    let cy = cycles(&mut c, bad);
    assert_eq!(cy.len(), 1);
    assert_eq!(cy[0].verdict.as_deref(), Some("error"));
    assert_eq!(
        worker_pid(&mut c),
        pid,
        "the same worker process carried on"
    );
}

#[test]
fn sighup_reloads_the_workers_settings() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let other = FakeLlm::start(Behavior::Good).unwrap();
    set_conf("damascus.llm_url", &other.url());
    let id = submit(&mut c, "After reload", "body");
    wait_state(&mut c, id, "specified", Duration::from_secs(30));
    assert_eq!(other.request_count(), 1, "the worker called the new URL");
    assert_eq!(llm().request_count(), 0, "and not the old one");
    assert_eq!(worker_pid(&mut c), pid, "reloaded in place, not restarted");
    set_conf("damascus.llm_url", &llm().url());
}

#[test]
fn sigterm_gives_the_claim_back_and_the_worker_comes_back() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let id = submit(&mut c, "Stuck call", "body");
    wait_for("the call to start", Duration::from_secs(30), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    let terminated: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(terminated);
    wait_for(
        "the claim to be given back",
        Duration::from_secs(10),
        || (!ticket(&mut c, id).claimed).then_some(()),
    );
    let cy = cycles(&mut c, id);
    assert_eq!(cy[0].verdict.as_deref(), Some("interrupted"));
    assert_eq!(
        ticket(&mut c, id).attempts,
        0,
        "an interrupted call costs no attempt"
    );
    llm.set_behavior(Behavior::Good);
    let new_pid = worker_pid(&mut c);
    assert_ne!(new_pid, pid, "the postmaster started a fresh worker");
    wait_state(&mut c, id, "specified", Duration::from_secs(30));
}

#[test]
fn without_the_extension_the_worker_waits_quietly() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    c.batch_execute("DROP EXTENSION damascus").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        worker_pid(&mut c),
        pid,
        "no crash loop while the extension is missing"
    );
    c.batch_execute("CREATE EXTENSION damascus").unwrap();
    let id = submit(&mut c, "After CREATE EXTENSION", "body");
    wait_state(&mut c, id, "specified", Duration::from_secs(30));
    assert_eq!(worker_pid(&mut c), pid);
}
