//! The static background worker, preloaded into a real Postgres 15: it drains tickets through every phase with
//! no manual tick, survives errors, reloads on SIGHUP, gives its claim back on SIGTERM, and waits (without
//! crash-looping) while the extension is missing or older than the library.

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
        // Short, so the tests that wait for a heartbeat do not wait long.
        "damascus.heartbeat_seconds = 2",
    ]);
    guard
}

fn wait_state(c: &mut Client, id: i64, state: &str, timeout: Duration) {
    wait_for(&format!("ticket {id} to reach {state}"), timeout, || {
        (ticket(c, id).state == state).then_some(())
    });
}

#[test]
fn the_static_worker_drains_20_tickets_through_all_phases_without_a_manual_tick() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let ids: Vec<i64> = (0..20)
        .map(|i| submit(&mut c, &format!("Ticket number {i}"), "Do the thing"))
        .collect();
    wait_tickets_in(&mut c, "done", 20, Duration::from_secs(90));
    for id in ids {
        let cy = cycles(&mut c, id);
        let seen: Vec<(&str, Option<&str>)> = cy
            .iter()
            .map(|x| (x.phase.as_str(), x.verdict.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("refine_spec", Some("spec_ok")),
                ("implement", Some("impl_ok")),
                ("review", Some("approved"))
            ],
            "one cycle per phase"
        );
        assert!(
            cy.iter()
                .all(|x| x.worker.starts_with("damascus worker 1 (pid ")),
            "{cy:?}"
        );
        let t = ticket(&mut c, id);
        assert!(!t.claimed && t.spec.is_some(), "{t:?}");
    }
    assert_eq!(
        llm.request_count(),
        60,
        "exactly one LLM call per ticket and phase"
    );
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
        wait_state(&mut c, *id, "done", Duration::from_secs(30));
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
    let _url = set_conf_for_test("damascus.llm_url", &other.url());
    let id = submit(&mut c, "After reload", "body");
    wait_state(&mut c, id, "done", Duration::from_secs(30));
    assert_eq!(
        other.request_count(),
        3,
        "the worker called the new URL, once per phase"
    );
    assert_eq!(llm().request_count(), 0, "and not the old one");
    assert_eq!(worker_pid(&mut c), pid, "reloaded in place, not restarted");
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
    wait_state(&mut c, id, "done", Duration::from_secs(30));
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
    wait_state(&mut c, id, "done", Duration::from_secs(30));
    assert_eq!(worker_pid(&mut c), pid);
}

/// A worker that finds the tickets table locked waits for it holding no lock on the other tables, the order
/// in which DROP EXTENSION takes them: so a DROP EXTENSION while the worker claims goes through instead of
/// deadlocking with it (it did, in CI), and the worker waits for CREATE EXTENSION without a restart.
#[test]
fn drop_extension_while_the_worker_claims_goes_through() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let _restore = FreshExtension;
    // A no-op ALTER invalidates the worker's kept plans, so its next claim is parsed afresh (the path that
    // deadlocked); that claim comes after the lock below unless the worker claims in between (it naps 100 ms).
    c.batch_execute("ALTER TABLE damascus.phases RESET (fillfactor)")
        .unwrap();
    let mut dropper = client();
    dropper
        .batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '20s'; LOCK TABLE damascus.tickets IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    wait_for(
        "the worker to wait for the tickets table",
        Duration::from_secs(30),
        || {
            c.query_opt(
                "SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted AND relation = 'damascus.tickets'::regclass",
                &[&pid],
            )
            .unwrap()
            .map(|_| ())
        },
    );
    let held: Vec<String> = c
        .query(
            "SELECT relation::regclass::text FROM pg_locks
             WHERE pid = $1 AND granted AND relation IN (SELECT oid FROM pg_class WHERE relnamespace = 'damascus'::regnamespace)",
            &[&pid],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        held.is_empty(),
        "while it waits for damascus.tickets the worker holds {held:?}"
    );
    dropper
        .batch_execute("DROP EXTENSION damascus; COMMIT")
        .expect("DROP EXTENSION goes through while the worker claims");
    c.batch_execute("CREATE EXTENSION damascus").unwrap();
    let id = submit(&mut c, "After DROP and CREATE EXTENSION", "body");
    wait_state(&mut c, id, "done", Duration::from_secs(30));
    assert_eq!(worker_pid(&mut c), pid, "the worker was not restarted");
}

/// Puts the 0.2 extension back however the test that replaced it ends.
struct FreshExtension;

impl Drop for FreshExtension {
    fn drop(&mut self) {
        client()
            .batch_execute("DROP EXTENSION IF EXISTS damascus CASCADE; CREATE EXTENSION damascus")
            .unwrap();
    }
}

/// The new library on a database still at 0.1.0 (installed, restarted, not yet updated): the worker says what
/// to run, once in the log and in pg_stat_activity, waits without crash-looping, and after
/// `ALTER EXTENSION damascus UPDATE` works on with no restart.
#[test]
fn on_an_old_schema_the_worker_waits_for_alter_extension_update() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let _restore = FreshExtension;
    c.batch_execute("DROP EXTENSION damascus; CREATE EXTENSION damascus VERSION '0.1.0'")
        .expect("the 0.1.0 install script is installed (make test copies sql/damascus--0.1.0.sql)");
    let id = submit(&mut c, "Queued on 0.1.0", "body");
    let activity: String = wait_for(
        "the worker to say what it waits for",
        Duration::from_secs(30),
        || {
            c.query_opt(
            "SELECT query FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%ALTER EXTENSION damascus UPDATE%'",
            &[&pid],
        )
        .unwrap()
        .map(|r| r.get(0))
        },
    );
    assert!(activity.contains("version 0.1.0"), "{activity}");
    assert_eq!(
        ticket(&mut c, id).state,
        "new",
        "nothing ran on the old schema"
    );
    assert_eq!(worker_pid(&mut c), pid, "no crash loop");

    c.batch_execute("ALTER EXTENSION damascus UPDATE").unwrap();
    wait_state(&mut c, id, "done", Duration::from_secs(30));
    assert_eq!(
        worker_pid(&mut c),
        pid,
        "the same worker went on after the update"
    );
}

/// A submit wakes the idle worker when it commits: with a naptime of a minute the ticket is still claimed
/// within a few seconds.
#[test]
fn a_submit_wakes_the_idle_worker_at_commit() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let pid = worker_pid(&mut c);
    let _nap = set_conf_for_test("damascus.naptime", "60000");
    // A first ticket through the pipeline, so the worker has taken up the new naptime and is idle after it.
    let first = submit(&mut c, "Warm-up", "body");
    wait_state(&mut c, first, "done", Duration::from_secs(30));
    wait_for("the worker to be idle", Duration::from_secs(10), || {
        c.query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query = 'damascus: 0 calls in flight'",
            &[&pid],
        )
        .unwrap()
        .map(|_| ())
    });
    let started = std::time::Instant::now();
    let id = submit(&mut c, "Wake up", "body");
    wait_for("the claim", Duration::from_secs(30), || {
        (ticket(&mut c, id).attempts > 0 || ticket(&mut c, id).state != "new").then_some(())
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "claimed {took:?} after the commit, not after the 60 s naptime"
    );
}

/// damascus.worker_status shows the live worker, its call in flight (ticket, phase, since when) and the
/// cycles it finished; pg_stat_activity.query names the ticket, phase and age of each call.
#[test]
fn worker_status_shows_calls_in_flight_and_cycles_done() {
    let _g = setup();
    let llm = fresh(Behavior::Slow(Duration::from_secs(4)));
    let mut c = client();
    let pid = worker_pid(&mut c);
    let done_before: i64 = c
        .query_one(
            "SELECT cycles_done FROM damascus.worker_status WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    let id = submit(&mut c, "Watched", "body");
    let (calls, activity): (serde_json::Value, String) =
        wait_for("the call in worker_status", Duration::from_secs(20), || {
            c.query_opt(
                // The cycle row commits before the call starts, and the worker shows the call after that.
                "SELECT calls, activity FROM damascus.worker_status
                 WHERE pid = $1 AND kind = 'damascus worker' AND calls_in_flight = 1
                   AND activity LIKE 'damascus: 1 call in flight: %'",
                &[&pid],
            )
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
        });
    assert_eq!(calls[0]["ticket_id"], id);
    assert_eq!(calls[0]["phase"], "refine_spec");
    assert!(calls[0]["since"].is_string(), "{calls}");
    assert!(
        activity.starts_with(&format!(
            "damascus: 1 call in flight: ticket {id} refine_spec ("
        )),
        "{activity}"
    );
    llm.set_behavior(Behavior::Good);
    // With the next phases woken at commit, the ticket may pass `specified` faster than a poll sees it.
    wait_for("the spec", Duration::from_secs(20), || {
        ticket(&mut c, id).spec.map(|_| ())
    });
    wait_for("cycles_done to count it", Duration::from_secs(10), || {
        let done: i64 = c
            .query_one(
                "SELECT cycles_done FROM damascus.worker_status WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        (done > done_before).then_some(())
    });
}

/// The first static worker deletes finished cycle rows past damascus.cycle_retention (30 days by default) in
/// batches, and keeps the recent ones.
#[test]
fn the_worker_prunes_cycle_rows_past_the_retention() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let id = submit(&mut c, "History", "body");
    wait_state(&mut c, id, "done", Duration::from_secs(30));
    c.execute(
        "INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, verdict,
                                      started_at, finished_at)
         SELECT $1, 'refine_spec', 1, 'old', 1, 1, 'llm_error', now() - interval '31 days', now() - interval '31 days'
         FROM generate_series(1, 2500)",
        &[&id],
    )
    .unwrap();
    wait_for("the old rows to be pruned", Duration::from_secs(40), || {
        let old: i64 = c
            .query_one(
                "SELECT count(*) FROM damascus.cycles WHERE worker = 'old'",
                &[],
            )
            .unwrap()
            .get(0);
        (old == 0).then_some(())
    });
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE ticket_id = $1 AND worker <> 'old'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, 3, "the three recent cycles stay");
}
