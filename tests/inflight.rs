//! One static worker keeps many LLM calls in flight (`damascus.max_inflight`), each its own claim, phase and
//! verdict: it holds eight claims at once, a hanging call does not hold up the others, one heartbeat renews
//! every live claim, and SIGTERM or pg_cancel_backend gives every claim back at once.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Held for a test's length: on the way out, pass or fail, the worker is left with nothing in flight, so a
/// failed test's calls cannot land on the next test's tickets (ids restart with each test).
struct Serial {
    _settled: Settled,
    _serial: std::sync::MutexGuard<'static, ()>,
}

struct Settled;

impl Drop for Settled {
    fn drop(&mut self) {
        if let Err(e) = try_settle(&mut client()) {
            eprintln!("could not settle the worker after the test: {e}");
        }
    }
}

fn setup() -> Serial {
    let guard = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.database = 'pgrx_tests'",
        "damascus.workers = 1",
        "damascus.max_inflight = 8",
        "damascus.naptime = 100",
        "damascus.llm_api_key = 'sk-fake'",
        // Short, so the tests that wait for a heartbeat do not wait long.
        "damascus.heartbeat_seconds = 2",
    ]);
    Serial {
        _settled: Settled,
        _serial: guard,
    }
}

fn claimed_by_worker(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM damascus.tickets WHERE claimed_by LIKE 'damascus worker 1 %'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Waits until the worker shows `n` calls in flight: its claims commit first, and it shows the count once
/// their calls have started.
fn wait_inflight(c: &mut Client, pid: i32, n: usize) {
    // "damascus: 8 calls in flight: ticket 3 refine_spec (0 s), …", or "damascus: 1 call in flight: …".
    let shown = format!(
        "damascus: {n} call{} in flight{}",
        if n == 1 { "" } else { "s" },
        if n == 0 { "" } else { ":%" }
    );
    wait_for(
        &format!("{n} calls in flight"),
        Duration::from_secs(20),
        || {
            c.query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE $2",
                &[&pid, &shown],
            )
            .unwrap()
            .map(|_| ())
        },
    );
}

fn submit_n(c: &mut Client, n: usize, body: &str) -> Vec<i64> {
    (0..n)
        .map(|i| submit(c, &format!("In flight {i}"), body))
        .collect()
}

/// Lets the worker finish what it holds before the next test changes the stand-in's behaviour.
fn settle(c: &mut Client) {
    if let Err(e) = try_settle(c) {
        panic!("{e}");
    }
}

/// `settle` without panicking, for the guard that also runs it after a failed test.
fn try_settle(c: &mut Client) -> Result<(), String> {
    llm().set_behavior(Behavior::Good);
    c.batch_execute(
        "SELECT damascus_cancel(id) FROM damascus.tickets WHERE state NOT IN ('done', 'failed', 'cancelled')",
    )
    .map_err(|e| e.to_string())?;
    let until = |what: &str, sql: &str, c: &mut Client| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.query_opt(sql, &[]) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => return Err(format!("timed out waiting for {what}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    until(
        "no claim left",
        "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM damascus.tickets WHERE claimed_by LIKE 'damascus worker 1 %')",
        c,
    )?;
    // The worker learns of the cancelled claims at its next heartbeat and stops those calls.
    until(
        "no call left in flight",
        "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'damascus worker'
           AND query = 'damascus: 0 calls in flight'",
        c,
    )
}

#[test]
fn one_worker_holds_eight_claims_at_once() {
    let _g = setup();
    fresh(Behavior::Slow(Duration::from_secs(2)));
    let mut c = client();
    let pid = worker_pid(&mut c);
    submit_n(&mut c, 12, "body");
    wait_for(
        "eight claims held by the one worker",
        Duration::from_secs(20),
        || (claimed_by_worker(&mut c) == 8).then_some(()),
    );
    let workers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'damascus worker'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(workers, 1);
    // The claims commit first; the worker shows its count once their calls have started.
    wait_inflight(&mut c, pid, 8);
    // Never more than eight, and all twelve go on to done.
    llm().set_behavior(Behavior::Good);
    wait_tickets_in(&mut c, "done", 12, Duration::from_secs(60));
    let accepted: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE verdict IN ('spec_ok', 'impl_ok', 'approved')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(accepted, 36, "one accepted verdict per ticket and phase");
    assert_eq!(worker_pid(&mut c), pid);
}

#[test]
fn a_hanging_call_does_not_delay_the_others() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let stuck = submit(&mut c, "Hangs forever", "[fakellm:hang]");
    let others = submit_n(&mut c, 5, "body");
    wait_for("the other five done", Duration::from_secs(30), || {
        others
            .iter()
            .all(|id| ticket(&mut c, *id).state == "done")
            .then_some(())
    });
    let t = ticket(&mut c, stuck);
    assert_eq!((t.state.as_str(), t.claimed), ("new", true), "{t:?}");
    settle(&mut c);
}

#[test]
fn one_heartbeat_keeps_every_live_claim() {
    let _g = setup();
    fresh(Behavior::Hang);
    let _window = set_conf_for_test("damascus.stale_claim_minutes", "1");
    let mut c = client();
    worker_pid(&mut c);
    submit_n(&mut c, 8, "body");
    wait_for("eight calls in flight", Duration::from_secs(20), || {
        (claimed_by_worker(&mut c) == 8).then_some(())
    });
    // As if every call had been running for ten minutes: without a heartbeat all would be stale.
    c.batch_execute("UPDATE damascus.tickets SET claimed_at = now() - interval '10 minutes' WHERE claim_token IS NOT NULL")
        .unwrap();
    wait_for(
        "the heartbeat to renew all eight",
        Duration::from_secs(30),
        || {
            let fresh: i64 = c
            .query_one(
                "SELECT count(*) FROM damascus.tickets WHERE claimed_at > now() - interval '30 seconds'",
                &[],
            )
            .unwrap()
            .get(0);
            (fresh == 8).then_some(())
        },
    );
    assert_eq!(tick(&mut c), None, "renewed claims are not taken over");
    settle(&mut c);
}

#[test]
fn sigterm_with_eight_in_flight_gives_all_eight_back_within_two_seconds() {
    let _g = setup();
    fresh(Behavior::Hang);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let ids = submit_n(&mut c, 8, "body");
    wait_for("eight claims", Duration::from_secs(20), || {
        (claimed_by_worker(&mut c) == 8).then_some(())
    });
    wait_inflight(&mut c, pid, 8);
    let started = Instant::now();
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_for(
        "all eight claims given back",
        Duration::from_secs(2),
        || (claimed_by_worker(&mut c) == 0).then_some(()),
    );
    let took = started.elapsed();
    for id in ids {
        let cy = cycles(&mut c, id);
        assert_eq!(cy[0].verdict.as_deref(), Some("interrupted"), "{took:?}");
        assert_eq!(ticket(&mut c, id).attempts, 0);
    }
    settle(&mut c);
    assert_ne!(worker_pid(&mut c), pid, "a fresh worker took over");
}

#[test]
fn pg_cancel_backend_cancels_every_cycle_and_keeps_the_worker() {
    let _g = setup();
    fresh(Behavior::Hang);
    let mut c = client();
    let pid = worker_pid(&mut c);
    submit_n(&mut c, 8, "body");
    wait_for("eight claims", Duration::from_secs(20), || {
        (claimed_by_worker(&mut c) == 8).then_some(())
    });
    wait_inflight(&mut c, pid, 8);
    llm().set_behavior(Behavior::Good);
    c.query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    wait_for("eight interrupted cycles", Duration::from_secs(10), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM damascus.cycles WHERE verdict = 'interrupted'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 8).then_some(())
    });
    // The same worker takes them up again (the stand-in now answers) and finishes them.
    wait_tickets_in(&mut c, "done", 8, Duration::from_secs(60));
    assert_eq!(worker_pid(&mut c), pid);
}
