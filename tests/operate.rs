//! Operating damascus without reading its tables by hand: the queue, phase_stats and worker_status views and the
//! analyzer on crafted histories (known counts, known findings, and a clean history with none), multi-cycle
//! ticks for pg_cron, NOTIFY damascus_verdict to a LISTENing client, and retention of old cycle rows.

mod common;

use common::*;
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

/// state, phase, tickets, claimed, stale claims, backing off, waiting.
type QueueRow = (String, Option<String>, i64, i64, i64, i64, i64);

/// Tickets in every situation the queue view tells apart, with known counts per state.
#[test]
fn the_queue_view_counts_each_state() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute(
        "INSERT INTO damascus.tickets (title, state, claimed_at, claim_token, not_before, updated_at) VALUES
           ('ready 1', 'new', NULL, NULL, NULL, now() - interval '2 hours'),
           ('ready 2', 'new', NULL, NULL, NULL, now() - interval '5 minutes'),
           ('backing off', 'new', NULL, NULL, now() + interval '1 hour', now()),
           ('backoff over', 'new', NULL, NULL, now() - interval '1 minute', now()),
           ('claimed', 'new', now(), 1, NULL, now()),
           ('stale', 'new', now() - interval '2 hours', 2, NULL, now()),
           ('specified', 'specified', NULL, NULL, NULL, now() - interval '10 minutes'),
           ('done', 'done', NULL, NULL, NULL, now() - interval '3 days')",
    )
    .unwrap();
    let rows = c
        .query(
            "SELECT state, phase, tickets, claimed, stale_claims, backing_off, waiting,
                    extract(epoch FROM oldest_waiting)::float8 AS oldest
             FROM damascus.queue ORDER BY state",
            &[],
        )
        .unwrap();
    let got: Vec<QueueRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("done".into(), None, 1, 0, 0, 0, 0),
            ("new".into(), Some("refine_spec".into()), 6, 2, 1, 1, 3),
            ("specified".into(), Some("implement".into()), 1, 0, 0, 0, 1),
        ]
    );
    let oldest_new: f64 = rows[1].get(7);
    assert!(
        (7100.0..7300.0).contains(&oldest_new),
        "the oldest unclaimed new ticket waited two hours: {oldest_new}"
    );
    let oldest_done: Option<f64> = rows[0].get(7);
    assert_eq!(oldest_done, None, "a terminal state has no waiting ticket");
}

/// Inserts a finished cycle row of ticket `id`.
fn crafted_cycle(
    c: &mut Client,
    id: i64,
    phase: &str,
    verdict: &str,
    llm_ms: i32,
    (stop_reason, http_status): (Option<&str>, Option<i32>),
    age: &str,
) {
    c.execute(
        "INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, verdict,
                                      llm_ms, input_tokens, output_tokens, stop_reason, http_status,
                                      started_at, finished_at)
         VALUES ($1, $2, 1, 'damascus worker 1 (pid 1)', 1, 1, $3, $4, 100, 10, $5, $6,
                 now() - $7::text::interval, now() - $7::text::interval)",
        &[&id, &phase, &verdict, &llm_ms, &stop_reason, &http_status, &age],
    )
    .unwrap();
}

#[test]
fn phase_stats_summarises_the_last_day_per_phase() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Measured", "body");
    for ms in 1..=20 {
        let (verdict, stop) = if ms <= 2 {
            ("spec_truncated", Some("max_tokens"))
        } else {
            ("spec_ok", Some("end_turn"))
        };
        crafted_cycle(
            &mut c,
            id,
            "refine_spec",
            verdict,
            ms * 100,
            (stop, Some(200)),
            "1 hour",
        );
    }
    crafted_cycle(
        &mut c,
        id,
        "refine_spec",
        "llm_error",
        50,
        (None, Some(503)),
        "1 hour",
    );
    crafted_cycle(
        &mut c,
        id,
        "refine_spec",
        "claim_lost",
        0,
        (None, None),
        "1 hour",
    );
    crafted_cycle(
        &mut c,
        id,
        "implement",
        "impl_ok",
        700,
        (Some("end_turn"), Some(200)),
        "2 hours",
    );
    // Older than the day: not counted.
    crafted_cycle(
        &mut c,
        id,
        "implement",
        "impl_ok",
        99_999,
        (None, Some(200)),
        "2 days",
    );
    let r = c
        .query_one(
            "SELECT cycles, verdicts, llm_ms_p50, llm_ms_p95, input_tokens, output_tokens, truncated,
                    transport_errors, transport_error_rate::float8, claim_lost
             FROM damascus.phase_stats WHERE phase = 'refine_spec'",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 22);
    let verdicts: serde_json::Value = r.get(1);
    assert_eq!(
        verdicts,
        serde_json::json!({"spec_ok": 18, "spec_truncated": 2, "llm_error": 1, "claim_lost": 1})
    );
    // llm_ms over 22 rows: 0, 50, 100..2000; p50 is the 11th value, p95 the 21st.
    assert_eq!((r.get::<_, i32>(2), r.get::<_, i32>(3)), (900, 1900));
    assert_eq!((r.get::<_, i64>(4), r.get::<_, i64>(5)), (2200, 220));
    assert_eq!((r.get::<_, i64>(6), r.get::<_, i64>(7)), (2, 1));
    assert!((r.get::<_, f64>(8) - 1.0 / 22.0).abs() < 0.001);
    assert_eq!(r.get::<_, i64>(9), 1);
    let implement: i64 = count(
        &mut c,
        "SELECT cycles FROM damascus.phase_stats WHERE phase = 'implement'",
    );
    assert_eq!(
        implement, 1,
        "the cycle from two days ago is outside the window"
    );
}

fn findings(c: &mut Client) -> Vec<(String, String, serde_json::Value, String)> {
    c.query(
        "SELECT severity, finding, evidence, hint FROM damascus_analyze('1 day')",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// A clean history (every ticket done at the first try) yields no finding; a crafted troubled one yields each
/// finding once, with its numbers.
#[test]
fn the_analyzer_finds_what_a_person_can_act_on_and_nothing_in_a_clean_history() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    for i in 0..3 {
        submit(&mut c, &format!("Clean {i}"), "body");
    }
    let rows = c.query("SELECT * FROM damascus_tick(9, 60)", &[]).unwrap();
    assert_eq!(rows.len(), 9, "three tickets through three phases");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM damascus.tickets WHERE state = 'done'"
        ),
        3
    );
    assert_eq!(findings(&mut c), vec![], "a clean history has no finding");
    assert!(llm.request_count() >= 9);

    fresh(Behavior::Good);
    let t = submit(&mut c, "Troubled", "body");
    // Truncation: 3 of 10 answers of implement cut off.
    for i in 0..10 {
        let (v, stop) = if i < 3 {
            ("impl_truncated", "max_tokens")
        } else {
            ("impl_ok", "end_turn")
        };
        crafted_cycle(
            &mut c,
            t,
            "implement",
            v,
            1000,
            (Some(stop), Some(200)),
            "1 hour",
        );
    }
    // LLM failures: 4 of 6 refine_spec calls.
    for i in 0..6 {
        let (v, status) = if i < 4 {
            ("llm_error", 503)
        } else {
            ("spec_ok", 200)
        };
        crafted_cycle(
            &mut c,
            t,
            "refine_spec",
            v,
            10,
            (None, Some(status)),
            "1 hour",
        );
    }
    // Claims taken over.
    crafted_cycle(&mut c, t, "review", "claim_lost", 0, (None, None), "1 hour");
    // A rejection loop: ticket t rejected twice by review.
    crafted_cycle(
        &mut c,
        t,
        "review",
        "rejected",
        10,
        (Some("end_turn"), Some(200)),
        "1 hour",
    );
    crafted_cycle(
        &mut c,
        t,
        "review",
        "rejected",
        10,
        (Some("end_turn"), Some(200)),
        "1 hour",
    );
    // A ticket nobody has picked up for two hours.
    c.batch_execute(
        "INSERT INTO damascus.tickets (title, state, updated_at) VALUES ('Forgotten', 'new', now() - interval '2 hours')",
    )
    .unwrap();
    // An approval phase with a ticket waiting since two days.
    let _phases = keep_phases();
    c.batch_execute(
        "BEGIN;
         INSERT INTO damascus.phases (name, position, kind, from_state, transitions)
         VALUES ('sign_off', 40, 'approval', 'reviewed', '{\"approved\": \"done\", \"rejected\": \"specified\"}');
         UPDATE damascus.phases SET transitions = '{\"approved\": \"reviewed\", \"rejected\": \"specified\"}'
         WHERE name = 'review';
         COMMIT;
         INSERT INTO damascus.tickets (title, state, updated_at) VALUES ('Awaiting sign-off', 'reviewed', now() - interval '2 days')",
    )
    .unwrap();
    let found = findings(&mut c);
    let about = |needle: &str| {
        found
            .iter()
            .filter(|f| f.1.contains(needle))
            .cloned()
            .collect::<Vec<_>>()
    };
    let truncated = about("cut off at max_tokens");
    assert_eq!(truncated.len(), 1, "{found:#?}");
    assert_eq!(truncated[0].2["truncated"], 3);
    assert_eq!(truncated[0].2["answers"], 10);
    assert!(
        truncated[0].3.contains("max_tokens = 16000"),
        "{:?}",
        truncated[0].3
    );
    let failing = about("LLM calls failed");
    assert_eq!(failing.len(), 1, "{found:#?}");
    assert_eq!(
        (failing[0].0.as_str(), &failing[0].2["failed"]),
        ("critical", &serde_json::json!(4))
    );
    assert_eq!(failing[0].2["http_status"], serde_json::json!([503]));
    assert_eq!(about("lost their claim").len(), 1, "{found:#?}");
    let loop_ = about("rejected 2 times or more by phase review");
    assert_eq!(loop_.len(), 1, "{found:#?}");
    assert_eq!(loop_[0].2["ticket_ids"], serde_json::json!([t]));
    let waiting = about("waited over a day for approval at phase sign_off");
    assert_eq!(waiting.len(), 1, "{found:#?}");
    let stuck = about("have not moved for over an hour");
    assert_eq!(stuck.len(), 1, "{found:#?}");
    assert_eq!(stuck[0].2["state"], "new");
    assert_eq!(found.len(), 6, "nothing invented: {found:#?}");
}

/// `damascus_tick(5, 10)` runs five cycles in flight together and returns a row for each; `max_seconds` stops
/// calls still in flight and gives their claims back; an idle tick returns nothing.
#[test]
fn a_multi_cycle_tick_runs_its_cycles_together_within_its_time() {
    let _g = setup();
    let llm = fresh(Behavior::Slow(Duration::from_millis(1500)));
    let mut c = client();
    assert!(
        c.query("SELECT * FROM damascus_tick(5, 10)", &[])
            .unwrap()
            .is_empty(),
        "nothing to do: no row"
    );
    let ids: Vec<i64> = (0..5)
        .map(|i| submit(&mut c, &format!("Batch {i}"), "body"))
        .collect();
    let started = Instant::now();
    let rows = c
        .query(
            "SELECT ticket_id, phase, verdict, state FROM damascus_tick(5, 10)",
            &[],
        )
        .unwrap();
    let took = started.elapsed();
    let mut got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        ids.iter()
            .map(|id| (*id, "refine_spec".to_string(), "spec_ok".to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(llm.request_count(), 5);
    // Five 1.5 s calls one after another would take 7.5 s.
    assert!(
        took < Duration::from_secs(6),
        "the calls ran together: {took:?}"
    );

    llm.set_behavior(Behavior::Hang);
    let started = Instant::now();
    let rows = c
        .query("SELECT ticket_id, verdict FROM damascus_tick(3, 2)", &[])
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rows.len(), 3, "three calls started, three rows");
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "interrupted"));
    assert!(
        took < Duration::from_secs(6),
        "stopped at max_seconds: {took:?}"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM damascus.tickets WHERE claimed_at IS NOT NULL"
        ),
        0,
        "every claim was given back"
    );
    llm.set_behavior(Behavior::Good);

    for (args, code) in [("0", "22023"), ("10001", "22023"), ("1, 0", "22023")] {
        let err = c
            .query(&format!("SELECT * FROM damascus_tick({args})"), &[])
            .expect_err("refused");
        assert_eq!(db_error(&err).0, code, "damascus_tick({args})");
    }
}

/// Each verdict is announced with NOTIFY damascus_verdict and a JSON payload, delivered to a LISTENing client
/// when the verdict commits.
#[test]
fn each_verdict_is_notified_to_listeners() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut listener = client();
    listener.batch_execute("LISTEN damascus_verdict").unwrap();
    let mut c = client();
    let id = submit(&mut c, "Announced", "body");
    tick(&mut c).expect("claimed");
    let mut got = Vec::new();
    wait_for("the notification", Duration::from_secs(10), || {
        // A round trip lets the client read what the server sent meanwhile.
        listener.batch_execute("SELECT 1").unwrap();
        let mut n = listener.notifications();
        let mut it = n.iter();
        while let Ok(Some(note)) = it.next() {
            got.push((
                note.channel().to_string(),
                serde_json::from_str::<serde_json::Value>(note.payload()).unwrap(),
            ));
        }
        (!got.is_empty()).then_some(())
    });
    assert_eq!(
        got,
        vec![(
            "damascus_verdict".to_string(),
            serde_json::json!({"ticket_id": id, "phase": "refine_spec", "verdict": "spec_ok", "state": "specified"})
        )]
    );
}

/// Finished cycle rows older than damascus.cycle_retention are deleted in batches by a multi-cycle tick (the
/// static worker's job when there is one); recent rows and open cycles stay.
#[test]
fn retention_prunes_old_cycle_rows_and_keeps_recent_ones() {
    let _g = setup();
    fresh(Behavior::Good);
    let _keep = set_conf_for_test("damascus.cycle_retention", "10080"); // minutes: 7 days
    let mut c = client();
    let id = submit(&mut c, "Old history", "body");
    for _ in 0..1500 {
        crafted_cycle(
            &mut c,
            id,
            "refine_spec",
            "llm_error",
            1,
            (None, Some(503)),
            "8 days",
        );
    }
    crafted_cycle(
        &mut c,
        id,
        "refine_spec",
        "llm_error",
        1,
        (None, Some(503)),
        "6 days",
    );
    // An open cycle of a ticket no claim touches (a claim of its own ticket would close it as claim_lost).
    let open_id: i64 = c
        .query_one(
            "WITH t AS (INSERT INTO damascus.tickets (title, state) VALUES ('Elsewhere', 'done') RETURNING id)
             INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, started_at)
             SELECT t.id, 'refine_spec', 1, 'gone', 1, 1, now() - interval '9 days' FROM t RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    // Two batches of 1000: two ticks that each run a cycle.
    submit(&mut c, "Second", "body");
    for _ in 0..2 {
        c.query("SELECT * FROM damascus_tick(2)", &[]).unwrap();
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM damascus.cycles WHERE started_at < now() - interval '7 days' AND verdict IS NOT NULL"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM damascus.cycles WHERE started_at BETWEEN now() - interval '7 days' AND now() - interval '5 days'"
        ),
        1,
        "a recent row stays"
    );
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM damascus.cycles WHERE id = {open_id}")
        ),
        1,
        "an open cycle is never pruned"
    );
}

/// The views and the analyzer are for pg_monitor and damascus_user, and nobody else.
#[test]
fn the_views_are_readable_by_monitors_and_users_only() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'op_monitor') THEN CREATE ROLE op_monitor; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'op_user') THEN CREATE ROLE op_user; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'op_nobody') THEN CREATE ROLE op_nobody; END IF;
         END $$;
         GRANT pg_monitor TO op_monitor; GRANT damascus_user TO op_user;",
    )
    .unwrap();
    for view in [
        "damascus.queue",
        "damascus.phase_stats",
        "damascus.worker_status",
        "damascus_analyze()",
    ] {
        for (role, allowed) in [
            ("op_monitor", true),
            ("op_user", true),
            ("op_nobody", false),
        ] {
            let r = c.batch_execute(&format!(
                "SET ROLE {role}; SELECT * FROM {view}; RESET ROLE"
            ));
            c.batch_execute("RESET ROLE").unwrap();
            assert_eq!(r.is_ok(), allowed, "{role} on {view}: {r:?}");
        }
    }
}
