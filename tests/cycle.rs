//! The cycle driven by `SELECT damascus_tick()` from a real client, against a real Postgres 15 and a stand-in LLM over 127.0.0.1.
//! No static worker runs in this cluster (damascus.workers = 0), so every cycle here is a manual tick.

mod common;

use common::*;
use std::time::Duration;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[
        // Short, so the tests that wait for a heartbeat do not wait long.
        "damascus.heartbeat_seconds = 2",
        // Small, so the no-free-slot test can fill it.
        "max_worker_processes = 4",
    ])
}

/// Twin of the seed's `test_cycle_uses_three_transactions`: one tick commits three separate transactions.
#[test]
fn test_cycle_uses_three_transactions() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let id = submit(
        &mut c,
        "Add a health endpoint",
        "GET /healthz returns 200 and the git sha",
    );

    let row = tick(&mut c).expect("a ticket was claimable");
    assert_eq!(
        row,
        TickRow {
            ticket_id: id,
            phase: "refine_spec".into(),
            verdict: "spec_ok".into(),
            state: Some("specified".into())
        },
        "{:?}",
        cycles(&mut c, id)
    );
    assert_eq!(
        row,
        TickRow {
            ticket_id: id,
            phase: "refine_spec".into(),
            verdict: "spec_ok".into(),
            state: Some("specified".into())
        }
    );

    let cy = cycles(&mut c, id);
    assert_eq!(cy.len(), 1);
    let (claim, phase, verdict) = (
        cy[0].claim_xid,
        cy[0].phase_xid.unwrap(),
        cy[0].verdict_xid.unwrap(),
    );
    assert!(
        claim < phase && phase < verdict,
        "three distinct, ordered xids: {claim} {phase} {verdict}"
    );
    // All three committed: a txid is committed iff pg_xact_status says so.
    for xid in [claim, phase, verdict] {
        let status: String = c
            .query_one("SELECT txid_status($1)", &[&xid])
            .unwrap()
            .get(0);
        assert_eq!(status, "committed", "xid {xid}");
    }
    assert_eq!(cy[0].verdict.as_deref(), Some("spec_ok"));
    assert_eq!(cy[0].attempt, 1);
    assert_eq!(cy[0].http_status, Some(200));
    assert!(
        cy[0].worker.starts_with("damascus tick"),
        "{}",
        cy[0].worker
    );

    let t = ticket(&mut c, id);
    assert_eq!(t.state, "specified");
    assert!(
        !t.claimed && t.claim_token.is_none() && t.claimed_by.is_none(),
        "claim cleared: {t:?}"
    );
    // The accepted spec is stored verbatim.
    let expected = fakellm::good_spec(&format!("Ticket #{id}: Add a health endpoint"));
    assert_eq!(t.spec.as_deref(), Some(expected.as_str()));
    assert_eq!(llm.request_count(), 1);

    // The ticket is not finished: the next tick takes it on to the next phase.
    let next = tick(&mut c).unwrap();
    assert_eq!((next.ticket_id, next.phase.as_str()), (id, "implement"));
}

/// Twin of the seed's `test_refine_spec_max_tokens_at_least_3000`: the request really carries the cap,
/// the default is 4000, and no phase definition can take it below 3000.
#[test]
fn test_refine_spec_max_tokens_at_least_3000() {
    let _g = setup();
    let _phases = keep_phases();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    submit(&mut c, "Cap check", "body");
    tick(&mut c).unwrap();
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert!(r.header("x-api-key").is_some());
    let body = r.body.as_ref().expect("JSON body");
    assert_eq!(body["max_tokens"], 4000);
    assert!(body["system"].as_str().unwrap().contains("## Test Command"));
    assert_eq!(body["messages"][0]["role"], "user");

    let before = phases_fingerprint(&mut c);
    let err = c
        .batch_execute("UPDATE damascus.phases SET max_tokens = 1500 WHERE name = 'refine_spec'")
        .unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "22023", "{msg}");
    assert!(msg.contains("1500"), "{msg}");
    assert_eq!(phases_fingerprint(&mut c), before, "the phase is unchanged");

    c.batch_execute("UPDATE damascus.phases SET max_tokens = 3000 WHERE name = 'refine_spec'")
        .unwrap();
    llm.clear_requests();
    submit(&mut c, "Cap check 2", "body");
    // The first ticket now waits for implement; only the new one is in refine_spec's state.
    c.batch_execute("UPDATE damascus.tickets SET priority = 1 WHERE state = 'new'")
        .unwrap();
    assert_eq!(tick(&mut c).unwrap().phase, "refine_spec");
    assert_eq!(llm.requests()[0].body.as_ref().unwrap()["max_tokens"], 3000);
}

#[test]
fn truncated_answer_is_spec_truncated_and_costs_an_attempt() {
    let _g = setup();
    fresh(Behavior::Truncated);
    let mut c = client();
    let id = submit(&mut c, "Long spec", "body");
    let row = tick(&mut c).unwrap();
    assert_eq!(
        (row.verdict.as_str(), row.state.as_deref()),
        ("spec_truncated", Some("new"))
    );
    let t = ticket(&mut c, id);
    assert_eq!((t.attempts, t.claimed, t.spec), (1, false, None));
    let cy = cycles(&mut c, id);
    assert_eq!(cy[0].stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(cy[0].output_tokens, Some(4000));
}

#[test]
fn missing_test_command_is_spec_wrong_and_names_the_section() {
    let _g = setup();
    fresh(Behavior::MissingSection("Test Command".into()));
    let mut c = client();
    let id = submit(&mut c, "No test command", "body");
    let row = tick(&mut c).unwrap();
    assert_eq!(
        (row.verdict.as_str(), row.state.as_deref()),
        ("spec_wrong", Some("new"))
    );
    let cy = cycles(&mut c, id);
    assert_eq!(
        cy[0].detail.as_deref(),
        Some("section \"## Test Command\" is missing")
    );
    let t = ticket(&mut c, id);
    assert_eq!(t.attempts, 1);
    assert_eq!(
        t.last_error.as_deref(),
        Some("section \"## Test Command\" is missing")
    );
}

#[test]
fn a_test_command_heading_inside_a_code_fence_does_not_count() {
    let _g = setup();
    fresh(Behavior::FencedTestCommand);
    let mut c = client();
    let id = submit(&mut c, "Fenced", "body");
    assert_eq!(tick(&mut c).unwrap().verdict, "spec_wrong");
    assert_eq!(
        cycles(&mut c, id)[0].detail.as_deref(),
        Some("section \"## Test Command\" is missing")
    );
}

#[test]
fn three_rejected_answers_fail_the_ticket() {
    let _g = setup();
    fresh(Behavior::EmptySection("Context".into()));
    let mut c = client();
    let id = submit(&mut c, "Always wrong", "body");
    let states: Vec<_> = (0..3)
        .map(|_| tick(&mut c).unwrap().state.unwrap())
        .collect();
    assert_eq!(states, ["new", "new", "failed"]);
    assert_eq!(ticket(&mut c, id).attempts, 3);
    let attempts: Vec<i32> = cycles(&mut c, id).iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(tick(&mut c), None, "a failed ticket is not claimable");
}

/// Once the in-call retries are spent (none here), a failure that says "later" is llm_error: no attempt used,
/// and the ticket waits out a per-ticket backoff.
#[test]
fn transport_failures_are_llm_error_and_cost_no_attempt() {
    let _g = setup();
    let _retries = set_conf_for_test("damascus.llm_max_retries", "0");
    let mut c = client();
    for (behavior, status) in [
        (Behavior::Status(529), Some(529)),
        (Behavior::Status(429), Some(429)),
        (Behavior::Status(500), Some(500)),
        (Behavior::Reset, None),
    ] {
        fresh(behavior.clone());
        let id = submit(&mut c, "Flaky API", "body");
        let row = tick(&mut c).unwrap();
        assert_eq!(
            (row.verdict.as_str(), row.state.as_deref()),
            ("llm_error", Some("new")),
            "{behavior}"
        );
        let t = ticket(&mut c, id);
        assert_eq!(
            (t.attempts, t.llm_errors, t.claimed),
            (0, 1, false),
            "{behavior}: {t:?}"
        );
        let wait = t.not_before_secs.expect("not_before set");
        assert!(
            (5.0..=13.0).contains(&wait),
            "{behavior}: first retry waits ~10-12 s, got {wait}"
        );
        assert_eq!(cycles(&mut c, id)[0].http_status, status, "{behavior}");
        // Pushed out: not claimable again right away.
        assert_eq!(tick(&mut c), None, "{behavior}");
    }
}

/// The claim finds each kind of claimable ticket in its own range: ready tickets behind ones that are backing
/// off or claimed are found, a ticket still backing off and a live claim are left alone, and a ticket whose
/// backoff has ended is claimed again.
#[test]
fn backing_off_and_claimed_tickets_neither_hide_ready_ones_nor_get_claimed() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let backing_off = submit(&mut c, "Backing off", "body");
    let held = submit(&mut c, "Held by someone", "body");
    let ready = submit(&mut c, "Ready", "body");
    c.execute(
        "UPDATE damascus.tickets SET not_before = now() + interval '1 hour', llm_errors = 1 WHERE id = $1",
        &[&backing_off],
    )
    .unwrap();
    c.execute(
        "UPDATE damascus.tickets SET claimed_at = now(), claimed_by = 'someone',
                claim_token = nextval('damascus.claim_tokens') WHERE id = $1",
        &[&held],
    )
    .unwrap();
    let claimed: Vec<(i64, String)> = std::iter::from_fn(|| tick(&mut c))
        .map(|r| (r.ticket_id, r.phase))
        .collect();
    assert_eq!(
        claimed,
        [
            (ready, "refine_spec".to_string()),
            (ready, "implement".to_string()),
            (ready, "review".to_string())
        ],
        "only the ready ticket, through all three phases"
    );
    c.execute(
        "UPDATE damascus.tickets SET not_before = now() - interval '1 second' WHERE id = $1",
        &[&backing_off],
    )
    .unwrap();
    let row = tick(&mut c).expect("the ticket whose backoff ended is claimable");
    assert_eq!(
        (row.ticket_id, row.verdict.as_str()),
        (backing_off, "spec_ok")
    );
    assert!(
        ticket(&mut c, held).claimed,
        "the live claim was left alone"
    );
}

#[test]
fn connection_refused_and_timeout_are_llm_error() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    set_conf("damascus.llm_url", &dead_url);
    let id = submit(&mut c, "Nobody home", "body");
    assert_eq!(tick(&mut c).unwrap().verdict, "llm_error");
    let cy = cycles(&mut c, id);
    assert_eq!(cy[0].http_status, None);
    assert!(
        cy[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("transport error"),
        "{:?}",
        cy[0].detail
    );

    let llm = fresh(Behavior::Hang);
    let _timeout = set_conf_for_test("damascus.llm_timeout", "1");
    let id = submit(&mut c, "Hangs", "body");
    let row = tick(&mut c).unwrap();
    assert_eq!(row.verdict, "llm_error");
    let cy = cycles(&mut c, id);
    assert!(cy[0].llm_ms.unwrap() >= 900, "{:?}", cy[0].llm_ms);
    llm.set_behavior(Behavior::Good);
}

/// Twin of the seed's `test_stale_claim_filter_present_in_state`: a live claim is not stolen by the next tick.
#[test]
fn test_stale_claim_filter_present_in_state() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Held by a live worker", "body");
    let token = backdate_claim(&mut c, id, 10, "someone else");
    assert_eq!(
        tick(&mut c),
        None,
        "claimed 10 minutes ago, window 30: not claimable"
    );
    let t = ticket(&mut c, id);
    assert_eq!(
        (t.claim_token, t.claimed_by.as_deref(), t.state.as_str()),
        (Some(token), Some("someone else"), "new")
    );
    assert!(cycles(&mut c, id).is_empty());

    // Unclaimed work is still served while the claimed ticket waits.
    let other = submit(&mut c, "Free ticket", "body");
    assert_eq!(tick(&mut c).unwrap().ticket_id, other);
}

/// Twin of the seed's `test_stale_claim_uses_literal_interval_not_param`: the window is a value, and
/// changing the setting changes which claims count as stale.
#[test]
fn test_stale_claim_uses_literal_interval_not_param() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Abandoned claim", "body");
    let old_token = backdate_claim(&mut c, id, 10, "crashed worker");

    assert_eq!(
        tick(&mut c),
        None,
        "window 30 minutes: a 10-minute-old claim is live"
    );
    let _window = set_conf_for_test("damascus.stale_claim_minutes", "5");
    let row = tick(&mut c).expect("window 5 minutes: the 10-minute-old claim is stale");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "spec_ok"));
    let cy = cycles(&mut c, id);
    assert!(
        cy[0].claim_token > old_token,
        "a fresh fencing token was taken"
    );

    // And back: with 30 minutes a 10-minute-old claim is live again.
    c.execute("SELECT damascus_cancel($1)", &[&id]).unwrap();
    let id2 = submit(&mut c, "Second abandoned claim", "body");
    backdate_claim(&mut c, id2, 10, "crashed worker");
    set_conf("damascus.stale_claim_minutes", "30");
    assert_eq!(tick(&mut c), None);
}

/// A late verdict from a claim that went stale and was taken over is recorded as claim_lost and changes nothing.
#[test]
fn late_verdict_with_a_superseded_token_is_claim_lost() {
    let _g = setup();
    let llm = fresh(Behavior::Slow(Duration::from_secs(3)));
    let _window = set_conf_for_test("damascus.stale_claim_minutes", "5");
    // Longer than the call, so the late verdict (not a heartbeat) is what finds the claim superseded.
    let _heartbeat = set_conf_for_test("damascus.heartbeat_seconds", "60");
    let id = submit(&mut client(), "Slow first answer", "body");

    // Tick A claims and waits on a slow LLM.
    let a = tick_in_background(id);
    let mut c = client();
    // A's claim goes stale (as if A had stalled for 10 minutes) and tick B takes the ticket over.
    age_claim(&mut c, id, 10);
    llm.set_behavior(Behavior::Good);
    let b = tick(&mut c).expect("tick B claims the stale ticket");
    assert_eq!(
        (b.ticket_id, b.verdict.as_str(), b.state.as_deref()),
        (id, "spec_ok", Some("specified"))
    );
    let after_b = ticket(&mut c, id);

    let a = a.join().unwrap().expect("tick A returns its row");
    assert_eq!((a.ticket_id, a.verdict.as_str()), (id, "claim_lost"));
    assert_eq!(
        ticket(&mut c, id),
        after_b,
        "the late verdict changed nothing"
    );
    let cy = cycles(&mut c, id);
    assert_eq!(cy.len(), 2);
    let lost = cy
        .iter()
        .find(|x| x.verdict.as_deref() == Some("claim_lost"))
        .unwrap();
    assert!(
        lost.detail.as_deref().unwrap().contains("spec_ok"),
        "{:?}",
        lost.detail
    );
    assert!(lost.verdict_xid.is_some());
}

/// The LLM call runs with no transaction or snapshot open and no row lock held.
#[test]
fn the_llm_call_holds_no_transaction_snapshot_or_lock() {
    let _g = setup();
    fresh(Behavior::Slow(Duration::from_secs(2)));
    let id = submit(&mut client(), "Slow answer", "body");
    let t = tick_in_background(id);
    let mut c = client();
    let r = c
        .query_one(
            "SELECT xact_start IS NULL AS no_xact, backend_xmin IS NULL AS no_xmin, backend_xid IS NULL AS no_xid
             FROM pg_stat_activity WHERE backend_type = 'damascus tick'",
            &[],
        )
        .unwrap();
    assert!(
        r.get::<_, bool>("no_xact") && r.get::<_, bool>("no_xmin") && r.get::<_, bool>("no_xid")
    );
    // Nobody holds the ticket's row lock: NOWAIT succeeds.
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT id FROM damascus.tickets WHERE id = $1 FOR UPDATE NOWAIT",
        &[&id],
    )
    .unwrap();
    tx.rollback().unwrap();
    assert_eq!(t.join().unwrap().unwrap().verdict, "spec_ok");
}

/// Cancelling a tick (statement_timeout here) stops its worker, which gives the claim back at once.
#[test]
fn a_cancelled_tick_gives_its_claim_back() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    let id = submit(&mut c, "Never answered", "body");
    c.batch_execute("SET statement_timeout = '1s'").unwrap();
    let err = c.query("SELECT * FROM damascus_tick()", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "57014");
    c.batch_execute("RESET statement_timeout").unwrap();
    wait_for("the claim to be released", Duration::from_secs(10), || {
        let t = ticket(&mut c, id);
        (!t.claimed).then_some(())
    });
    let cy = cycles(&mut c, id);
    assert_eq!(cy[0].verdict.as_deref(), Some("interrupted"));
    let t = ticket(&mut c, id);
    assert_eq!((t.state.as_str(), t.attempts), ("new", 0));
    llm.set_behavior(Behavior::Good);
    assert_eq!(
        tick(&mut c).unwrap().verdict,
        "spec_ok",
        "claimable again at once"
    );
}

/// A phase that raises an ERROR leaves the claim in place; the stale window decides when it is retried.
#[test]
fn a_phase_error_leaves_the_claim_in_place() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    arm_phase_failure(&mut c, "explode");
    let id = submit(&mut c, "explode", "body");
    let row = tick(&mut c).unwrap();
    disarm_phase_failure(&mut c);
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "error"));
    let t = ticket(&mut c, id);
    assert!(t.claimed && t.claim_token.is_some(), "claim kept: {t:?}");
    assert_eq!(t.last_verdict.as_deref(), Some("error"));
    assert!(
        t.last_error
            .as_deref()
            .unwrap()
            .contains("boom: injected phase failure"),
        "{t:?}"
    );
    let cy = cycles(&mut c, id);
    assert_eq!((cy.len(), cy[0].verdict.as_deref()), (1, Some("error")));
    assert_eq!(cy[0].phase_xid, None, "the phase transaction rolled back");
    assert_eq!(tick(&mut c), None, "still claimed inside the stale window");
}

/// `damascus_tick()` works inside an explicit transaction at any isolation level: its work is its own.
#[test]
fn tick_inside_a_repeatable_read_transaction() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Inside BEGIN", "body");
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let rows = tx.query("SELECT * FROM damascus_tick()", &[]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>("verdict"), "spec_ok");
    tx.rollback().unwrap();
    assert_eq!(
        ticket(&mut c, id).state,
        "specified",
        "the cycle committed on its own"
    );
}

#[test]
fn no_free_worker_slot_is_a_clear_error() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    for i in 0..6 {
        submit(&mut c, &format!("Slot filler {i}"), "body");
    }
    // Hanging ticks hold worker slots until their statement_timeout cancels them.
    let fillers: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(|| {
                let mut c = client();
                c.batch_execute("SET statement_timeout = '4s'").unwrap();
                c.query("SELECT * FROM damascus_tick()", &[])
                    .map(|_| ())
                    .map_err(|e| db_error(&e))
            })
        })
        .collect();
    let results: Vec<_> = fillers.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|(code, _)| code == "53400")
        .collect();
    assert!(
        !refused.is_empty(),
        "some tick found no free slot: {results:?}"
    );
    assert_eq!(
        refused[0].1,
        "damascus_tick: no background worker slot is free"
    );
    llm.set_behavior(Behavior::Good);
    // Every claim the cancelled ticks took is given back.
    wait_for("all claims released", Duration::from_secs(10), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM damascus.tickets WHERE claimed_at IS NOT NULL",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
}

#[test]
fn submit_refuses_bad_input_with_a_sqlstate() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let cases = [
        ("SELECT damascus_submit('', 'b')", "22023"),
        ("SELECT damascus_submit(NULL, 'b')", "22004"),
        ("SELECT damascus_submit(repeat('x', 501), 'b')", "22023"),
        ("SELECT damascus_submit('t', repeat('x', 1048577))", "22023"),
    ];
    for (sql, code) in cases {
        let err = c.query(sql, &[]).unwrap_err();
        assert_eq!(db_error(&err).0, code, "{sql}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM damascus.tickets", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing half-written");
    // Priority orders claims: higher first, then oldest.
    let low = submit(&mut c, "low", "b");
    let high: i64 = c
        .query_one("SELECT damascus_submit('high', 'b', 10)", &[])
        .unwrap()
        .get(0);
    // Across phases too: the high-priority ticket's next phases come before the low one's first.
    let order: Vec<(i64, String)> = tick_until_idle(&mut c, 10)
        .into_iter()
        .map(|r| (r.ticket_id, r.phase))
        .collect();
    let phases = ["refine_spec", "implement", "review"];
    let expected: Vec<(i64, String)> = [high, low]
        .iter()
        .flat_map(|id| phases.iter().map(move |p| (*id, p.to_string())))
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn the_api_key_is_sent_but_never_shown() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    // Its value never shows, so the guard could not read it back: it restores the cluster's boot key.
    let _key = ApiKeyGuard::set("sk-test-secret", "sk-fake");
    submit(&mut c, "Keyed", "body");
    tick(&mut c).unwrap();
    assert_eq!(
        llm.requests()[0].header("x-api-key"),
        Some("sk-test-secret")
    );
    let listed: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_settings WHERE name = 'damascus.llm_api_key'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(listed, 0, "hidden from pg_settings");
    let shown = c.simple_query("SHOW ALL").unwrap();
    let names: Vec<String> = shown
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(
        !names.iter().any(|n| n == "damascus.llm_api_key"),
        "hidden from SHOW ALL"
    );
    c.batch_execute("CREATE ROLE damascus_nobody LOGIN")
        .unwrap();
    c.batch_execute("SET ROLE damascus_nobody").unwrap();
    let err = c.query("SHOW damascus.llm_api_key", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let err = c.query("SELECT * FROM damascus_tick()", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "tick is not granted to PUBLIC");
    c.batch_execute("RESET ROLE; DROP ROLE damascus_nobody")
        .unwrap();
}

/// A claim is a lease: during a long call the holder's heartbeat renews it, so the next tick cannot take a
/// live claim; and when the claim is superseded anyway, the next heartbeat stops the call.
#[test]
fn the_heartbeat_keeps_a_live_claim_and_notices_a_lost_one() {
    let _g = setup();
    fresh(Behavior::Hang);
    let _window = set_conf_for_test("damascus.stale_claim_minutes", "1");
    let id = submit(&mut client(), "Very long call", "body");
    let a = tick_in_background(id);
    let mut c = client();
    // As if the call had been running for 10 minutes: without a heartbeat the claim would be stale.
    age_claim(&mut c, id, 10);
    wait_for(
        "the heartbeat to renew the lease",
        Duration::from_secs(15),
        || {
            let fresh: bool = c
            .query_one(
                "SELECT claimed_at > now() - interval '30 seconds' FROM damascus.tickets WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0);
            fresh.then_some(())
        },
    );
    assert_eq!(tick(&mut c), None, "a renewed claim is not taken over");

    // Supersede the claim (as a takeover would): the next heartbeat stops the call.
    c.execute(
        "UPDATE damascus.tickets SET claim_token = nextval('damascus.claim_tokens'), claimed_by = 'thief' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let a = a.join().unwrap().expect("tick A returns");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped by the heartbeat, not the 300 s timeout"
    );
    assert_eq!(a.verdict, "claim_lost");
    let t = ticket(&mut c, id);
    // The attempt counted before the call stays: the claim was taken over, so its holder cannot give it
    // back (a holder that died is how poison tickets run out of attempts).
    assert_eq!(
        (t.claimed_by.as_deref(), t.state.as_str(), t.attempts),
        (Some("thief"), "new", 1)
    );
    let cy = cycles(&mut c, id);
    assert_eq!(cy[0].verdict.as_deref(), Some("claim_lost"));
    assert!(
        cy[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("superseded during the LLM call")
    );
    llm().set_behavior(Behavior::Good);
}

/// Drops the probe that `soft_state_commits_asynchronously_and_the_verdict_durably` installs.
struct SyncProbe;

impl Drop for SyncProbe {
    fn drop(&mut self) {
        let _ = client().batch_execute(
            "DROP TRIGGER IF EXISTS sync_probe ON damascus.cycles;
             DROP TRIGGER IF EXISTS sync_probe ON damascus.tickets;
             DROP FUNCTION IF EXISTS public.sync_probe();
             DROP TABLE IF EXISTS public.sync_seen;",
        );
    }
}

/// Claims and phase rows are soft state, committed without waiting for the WAL flush; the verdict is not.
#[test]
fn soft_state_commits_asynchronously_and_the_verdict_durably() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let _probe = SyncProbe;
    c.batch_execute(
        "CREATE TABLE public.sync_seen (what text, setting text);
         CREATE FUNCTION public.sync_probe() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO public.sync_seen VALUES (
             CASE WHEN TG_TABLE_NAME = 'tickets' AND NEW.claim_token IS NOT NULL
                       AND OLD.claim_token IS DISTINCT FROM NEW.claim_token THEN 'claim'
                  WHEN TG_TABLE_NAME = 'tickets' AND NEW.claim_token IS NOT NULL THEN 'phase on ticket'
                  WHEN TG_TABLE_NAME = 'tickets' THEN 'verdict on ticket'
                  WHEN TG_OP = 'INSERT' THEN 'phase'
                  ELSE 'verdict on cycle' END,
             current_setting('synchronous_commit'));
           RETURN NEW;
         END $$;
         CREATE TRIGGER sync_probe BEFORE UPDATE ON damascus.tickets
           FOR EACH ROW EXECUTE FUNCTION public.sync_probe();
         CREATE TRIGGER sync_probe BEFORE INSERT OR UPDATE ON damascus.cycles
           FOR EACH ROW EXECUTE FUNCTION public.sync_probe();",
    )
    .unwrap();
    submit(&mut c, "Durability", "body");
    assert_eq!(tick(&mut c).unwrap().verdict, "spec_ok");
    let seen: Vec<(String, String)> = c
        .query(
            "SELECT what, setting FROM public.sync_seen ORDER BY what",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        seen,
        vec![
            pair("claim", "off"),
            pair("phase", "off"),
            pair("verdict on cycle", "on"),
            pair("verdict on ticket", "on"),
        ]
    );
}
