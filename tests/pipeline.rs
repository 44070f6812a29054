//! The pipeline as rows, end to end over real HTTP: refine_spec -> implement -> review, rejections that loop
//! back with their reasons, phases changed with plain SQL, refused definitions, the OpenAI wire format,
//! an approval phase, and the ticket operations (retry, cancel, release).

mod common;

use common::*;
use sha2::Digest;
use std::time::Duration;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

fn verdicts(rows: &[TickRow]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|r| {
            (
                r.phase.clone(),
                r.verdict.clone(),
                r.state.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn v(phase: &str, verdict: &str, state: &str) -> (String, String, String) {
    (phase.into(), verdict.into(), state.into())
}

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_ticket_goes_new_to_done_through_all_three_phases() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Add a health endpoint", "GET /healthz returns 200");

    let rows = tick_until_idle(&mut c, 10);
    assert_eq!(
        verdicts(&rows),
        vec![
            v("refine_spec", "spec_ok", "specified"),
            v("implement", "impl_ok", "implemented"),
            v("review", "approved", "done"),
        ]
    );
    let t = ticket(&mut c, id);
    assert_eq!(
        (t.state.as_str(), t.claimed, t.attempts),
        ("done", false, 0)
    );

    // Each phase's accepted output is kept under its name, and each prompt carried what came before.
    let spec = output(&mut c, id, "refine_spec").expect("spec kept");
    let diff = output(&mut c, id, "implement").expect("diff kept");
    assert!(
        output(&mut c, id, "review")
            .unwrap()
            .ends_with("VERDICT: APPROVE")
    );
    assert!(diff.contains("```diff") && diff.contains("@@ "), "{diff}");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3, "one call per phase");
    assert!(
        user_text(&reqs[1]).contains(&spec),
        "implement sees the spec"
    );
    assert!(
        user_text(&reqs[2]).contains(&diff),
        "review sees the change"
    );
    assert!(system_text(&reqs[1]).contains("unified diff"));
    assert!(system_text(&reqs[2]).contains("VERDICT: APPROVE"));

    // Every cycle row keeps the model, a sha256 of exactly what was sent, the raw answer and the usage.
    let rows = c
        .query(
            "SELECT phase, model, prompt_sha256, answer, provider, input_tokens, output_tokens
             FROM damascus.cycles WHERE ticket_id = $1 ORDER BY id",
            &[&id],
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (row, req) in rows.iter().zip(&reqs) {
        assert_eq!(
            row.get::<_, Option<String>>("model").as_deref(),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            row.get::<_, Option<String>>("prompt_sha256"),
            Some(sha256_hex(&req.raw_body))
        );
        assert_eq!(
            row.get::<_, Option<String>>("provider").as_deref(),
            Some("anthropic")
        );
        assert!(row.get::<_, Option<i32>>("input_tokens").unwrap() > 0);
        assert!(row.get::<_, Option<i32>>("output_tokens").unwrap() > 0);
    }
    assert_eq!(rows[0].get::<_, Option<String>>("answer"), Some(spec));
    assert_eq!(rows[1].get::<_, Option<String>>("answer"), Some(diff));
}

#[test]
fn an_answer_without_a_diff_is_impl_wrong_and_costs_an_attempt() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "No diff", "[fakellm:no-diff]");
    assert_eq!(tick(&mut c).unwrap().verdict, "spec_ok");
    let r = tick(&mut c).unwrap();
    assert_eq!(
        (r.verdict.as_str(), r.state.as_deref()),
        ("impl_wrong", Some("specified"))
    );
    let t = ticket(&mut c, id);
    assert_eq!(t.attempts, 1);
    let answer: Option<String> = c
        .query_one(
            "SELECT answer FROM damascus.cycles WHERE ticket_id = $1 AND phase = 'implement'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(
        answer.is_some(),
        "a refused answer is kept on the cycle row too"
    );
    assert_eq!(llm.request_count(), 2);
}

#[test]
fn a_review_rejection_loops_back_with_its_reasons_in_the_next_implement_request() {
    let _g = setup();
    let llm = fresh(Behavior::Reject);
    let mut c = client();
    let id = submit(&mut c, "Rejected once", "body");
    let rows: Vec<_> = (0..3).map(|_| tick(&mut c).unwrap()).collect();
    assert_eq!(
        verdicts(&rows),
        vec![
            v("refine_spec", "spec_ok", "specified"),
            v("implement", "impl_ok", "implemented"),
            v("review", "rejected", "specified"),
        ]
    );
    let reasons: Option<String> = c
        .query_one(
            "SELECT feedback FROM damascus.tickets WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(
        reasons
            .as_deref()
            .unwrap()
            .contains(fakellm::REJECT_REASONS.trim()),
        "{reasons:?}"
    );

    llm.set_behavior(Behavior::Good);
    let rows = tick_until_idle(&mut c, 5);
    assert_eq!(
        verdicts(&rows),
        vec![
            v("implement", "impl_ok", "implemented"),
            v("review", "approved", "done"),
        ]
    );
    let reqs = llm.requests();
    let second_implement = &reqs[3];
    assert!(system_text(second_implement).contains("unified diff"));
    assert!(
        user_text(second_implement).contains(fakellm::REJECT_REASONS.trim()),
        "the reasons reach the next implement prompt: {}",
        user_text(second_implement)
    );
    let detail: Option<String> = c
        .query_one(
            "SELECT detail FROM damascus.cycles WHERE ticket_id = $1 AND verdict = 'rejected'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(detail, reasons, "the cycle row keeps the reasons too");
}

#[test]
fn three_review_rejections_fail_the_ticket() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Never good enough", "[fakellm:reject]");
    let rows = tick_until_idle(&mut c, 20);
    let rejected = rows.iter().filter(|r| r.verdict == "rejected").count();
    assert_eq!(rejected, 3, "{rows:?}");
    assert_eq!(rows.last().unwrap().state.as_deref(), Some("failed"));
    let t = ticket(&mut c, id);
    assert_eq!(t.state, "failed");
    assert!(
        t.last_error
            .as_deref()
            .unwrap()
            .contains("rejected 3 times"),
        "{t:?}"
    );
}

#[test]
fn a_phase_added_with_sql_is_used_on_the_next_cycle() {
    let _g = setup();
    let _phases = keep_phases();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Security matters", "body");
    assert_eq!(tick(&mut c).unwrap().state.as_deref(), Some("specified"));
    assert_eq!(tick(&mut c).unwrap().state.as_deref(), Some("implemented"));

    // Insert security_review between implement and review: one transaction, checked at commit.
    c.batch_execute(
        "BEGIN;
         INSERT INTO damascus.phases (name, position, from_state, transitions, max_tokens, system_prompt,
                                      prompt_template, validator)
         VALUES ('security_review', 25, 'implemented', '{\"approved\": \"secured\", \"rejected\": \"specified\"}',
                 1500, 'You are a security reviewer. End with VERDICT: APPROVE or VERDICT: REJECT.',
                 'Ticket #{{id}}: {{title}}\n\n{{outputs.implement}}', '{\"kind\": \"verdict_line\"}');
         UPDATE damascus.phases SET from_state = 'secured' WHERE name = 'review';
         COMMIT;",
    )
    .unwrap();
    let rows = tick_until_idle(&mut c, 5);
    assert_eq!(
        verdicts(&rows),
        vec![
            v("security_review", "approved", "secured"),
            v("review", "approved", "done"),
        ]
    );
    let reqs = llm.requests();
    assert!(system_text(&reqs[2]).starts_with("You are a security reviewer"));
    assert_eq!(reqs[2].body.as_ref().unwrap()["max_tokens"], 1500);
    assert!(output(&mut c, id, "security_review").is_some());
}

#[test]
fn an_update_of_max_tokens_or_model_shows_in_the_next_request() {
    let _g = setup();
    let _phases = keep_phases();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    submit(&mut c, "Default cap", "body");
    tick(&mut c).unwrap();
    let body = llm.requests()[0].body.clone().unwrap();
    assert_eq!(
        (body["max_tokens"].as_u64(), body["model"].as_str()),
        (Some(4000), Some("claude-sonnet-4-5"))
    );

    c.batch_execute(
        "UPDATE damascus.phases SET max_tokens = 3500, model = 'claude-test-model' WHERE name = 'refine_spec'",
    )
    .unwrap();
    let id = submit(&mut c, "Updated cap", "body");
    // The first ticket now waits for implement; make this one the next claim.
    c.execute(
        "UPDATE damascus.tickets SET priority = 10 WHERE id = $1",
        &[&id],
    )
    .unwrap();
    let r = tick(&mut c).unwrap();
    assert_eq!((r.ticket_id, r.phase.as_str()), (id, "refine_spec"));
    let body = llm.requests()[1].body.clone().unwrap();
    assert_eq!(
        (body["max_tokens"].as_u64(), body["model"].as_str()),
        (Some(3500), Some("claude-test-model"))
    );
    let model: Option<String> = c
        .query_one(
            "SELECT model FROM damascus.cycles WHERE ticket_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(model.as_deref(), Some("claude-test-model"));
}

#[test]
fn refused_phase_definitions_change_nothing() {
    let _g = setup();
    let _phases = keep_phases();
    fresh(Behavior::Good);
    let mut c = client();
    let before = phases_fingerprint(&mut c);
    let cases: [(&str, &str, &str); 7] = [
        (
            "UPDATE damascus.phases SET prompt_template = 'Do {{titel}}' WHERE name = 'implement'",
            "22023",
            "{{titel}}",
        ),
        (
            "UPDATE damascus.phases SET transitions = '{\"impl_ok\": \"nowhere\"}' WHERE name = 'implement'",
            "23514",
            "nowhere",
        ),
        (
            "UPDATE damascus.phases SET max_tokens = 0 WHERE name = 'implement'",
            "22023",
            "max_tokens 0",
        ),
        (
            "UPDATE damascus.phases SET max_tokens = 1500 WHERE name = 'refine_spec'",
            "22023",
            "below its floor of 3000",
        ),
        (
            "INSERT INTO damascus.phases (name, position, from_state, transitions)
             VALUES ('second_spec', 11, 'new', '{\"second_spec_ok\": \"specified\"}')",
            "23P01",
            "phases_one_per_state",
        ),
        (
            "UPDATE damascus.phases SET validator = '{\"kind\": \"regex\"}' WHERE name = 'review'",
            "22023",
            "regex",
        ),
        (
            "DELETE FROM damascus.phases WHERE name = 'review'",
            "23514",
            "implemented",
        ),
    ];
    for (sql, code, needle) in cases {
        let err = c.batch_execute(sql).unwrap_err();
        let (got, msg) = db_error(&err);
        assert_eq!(got, code, "{sql}: {msg}");
        assert!(msg.contains(needle), "{sql}: {msg}");
        assert_eq!(
            phases_fingerprint(&mut c),
            before,
            "{sql} changed the table"
        );
    }
}

#[test]
fn the_openai_format_works_end_to_end_with_truncation() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let _provider = set_conf_for_test("damascus.llm_provider", "openai");
    let mut c = client();
    let id = submit(&mut c, "Local model", "Runs on vLLM");
    let rows = tick_until_idle(&mut c, 5);
    assert_eq!(
        rows.last().unwrap().state.as_deref(),
        Some("done"),
        "{rows:?}"
    );
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(r.header("authorization"), Some("Bearer sk-fake"));
        assert!(r.header("x-api-key").is_none());
        assert_eq!(r.body.as_ref().unwrap()["messages"][0]["role"], "system");
    }
    assert_eq!(reqs[0].body.as_ref().unwrap()["max_tokens"], 4000);
    let usage = c
        .query_one(
            "SELECT provider, input_tokens, output_tokens, stop_reason FROM damascus.cycles
             WHERE ticket_id = $1 ORDER BY id LIMIT 1",
            &[&id],
        )
        .unwrap();
    assert_eq!(usage.get::<_, Option<String>>(0).as_deref(), Some("openai"));
    assert!(usage.get::<_, Option<i32>>(1).unwrap() > 0);
    assert!(usage.get::<_, Option<i32>>(2).unwrap() > 0);
    assert_eq!(usage.get::<_, Option<String>>(3).as_deref(), Some("stop"));

    let cut = submit(&mut c, "Cut short", "[fakellm:truncated]");
    let r = tick(&mut c).unwrap();
    assert_eq!(
        (r.ticket_id, r.verdict.as_str(), r.state.as_deref()),
        (cut, "spec_truncated", Some("new"))
    );
    let cy = cycles(&mut c, cut);
    assert_eq!(cy[0].stop_reason.as_deref(), Some("length"));
    assert_eq!(cy[0].output_tokens, Some(4000));
    assert_eq!(ticket(&mut c, cut).attempts, 1);
}

/// Puts a human gate between review and done.
fn add_approval_gate(c: &mut Client) {
    c.batch_execute(
        "BEGIN;
         INSERT INTO damascus.phases (name, position, kind, from_state, transitions)
         VALUES ('human_gate', 40, 'approval', 'reviewed', '{\"approved\": \"done\", \"rejected\": \"specified\"}');
         UPDATE damascus.phases SET transitions = '{\"approved\": \"reviewed\", \"rejected\": \"specified\"}'
         WHERE name = 'review';
         COMMIT;",
    )
    .unwrap();
}

#[test]
fn an_approval_phase_waits_with_no_claim_until_approved() {
    let _g = setup();
    let _phases = keep_phases();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    add_approval_gate(&mut c);
    let id = submit(&mut c, "Needs a human", "body");
    let early = submit(&mut c, "Not there yet", "body");
    c.execute(
        "UPDATE damascus.tickets SET priority = -1 WHERE id = $1",
        &[&early],
    )
    .unwrap();

    // Approving a ticket that is not waiting at an approval phase is refused, and changes nothing.
    let err = c
        .query("SELECT damascus_approve($1)", &[&early])
        .unwrap_err();
    assert_eq!(db_error(&err).0, "55000", "{err}");
    assert_eq!(ticket(&mut c, early).state, "new");

    for _ in 0..3 {
        tick(&mut c).unwrap();
    }
    let t = ticket(&mut c, id);
    assert_eq!((t.state.as_str(), t.claimed), ("reviewed", false));
    let calls = llm.request_count();
    // The waiting ticket is never claimed: the only thing left is the other ticket.
    c.execute(
        "UPDATE damascus.tickets SET state = 'cancelled' WHERE id = $1",
        &[&early],
    )
    .unwrap();
    assert_eq!(tick(&mut c), None);
    assert_eq!(
        llm.request_count(),
        calls,
        "no LLM call for an approval phase"
    );

    let state: String = c
        .query_one("SELECT damascus_approve($1, 'looks right')", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(state, "done");
    let me: String = c
        .query_one("SELECT session_user::text", &[])
        .unwrap()
        .get(0);
    let last = cycles(&mut c, id).pop().unwrap();
    assert_eq!(
        (
            last.phase.as_str(),
            last.verdict.as_deref(),
            last.worker.as_str(),
            last.detail.as_deref()
        ),
        (
            "human_gate",
            Some("approved"),
            me.as_str(),
            Some("looks right")
        )
    );
    assert_eq!(llm.request_count(), calls);

    // Twice is an error: it is done now.
    let err = c.query("SELECT damascus_approve($1)", &[&id]).unwrap_err();
    assert_eq!(db_error(&err).0, "55000");
    let err = c.query("SELECT damascus_approve(987654)", &[]).unwrap_err();
    assert_eq!(db_error(&err).0, "P0002");
}

#[test]
fn an_approval_rejection_sends_the_ticket_back_with_its_reasons() {
    let _g = setup();
    let _phases = keep_phases();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    add_approval_gate(&mut c);
    let id = submit(&mut c, "Needs docs", "body");
    for _ in 0..3 {
        tick(&mut c).unwrap();
    }
    assert_eq!(ticket(&mut c, id).state, "reviewed");

    let err = c
        .query("SELECT damascus_reject($1, '  ')", &[&id])
        .unwrap_err();
    assert_eq!(db_error(&err).0, "22023");
    assert_eq!(ticket(&mut c, id).state, "reviewed");

    let state: String = c
        .query_one(
            "SELECT damascus_reject($1, 'Document the endpoint in the README.')",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "specified");
    let last = cycles(&mut c, id).pop().unwrap();
    assert_eq!(
        (last.phase.as_str(), last.verdict.as_deref()),
        ("human_gate", Some("rejected"))
    );
    let r = tick(&mut c).unwrap();
    assert_eq!(r.phase, "implement");
    let reqs = llm.requests();
    assert!(user_text(reqs.last().unwrap()).contains("Document the endpoint in the README."));
}

#[test]
fn retry_cancel_and_release_move_tickets_and_refuse_illegal_moves() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let code = |c: &mut Client, sql: &str, id: i64| -> String {
        db_error(&c.query(sql, &[&id]).unwrap_err()).0
    };

    // A ticket that fails refine_spec three times, then is retried.
    let failing = submit(&mut c, "Always wrong", "[fakellm:missing=Context]");
    for _ in 0..3 {
        tick(&mut c).unwrap();
    }
    assert_eq!(ticket(&mut c, failing).state, "failed");
    let state: String = c
        .query_one("SELECT damascus_retry($1)", &[&failing])
        .unwrap()
        .get(0);
    assert_eq!(state, "new");
    let t = ticket(&mut c, failing);
    assert_eq!((t.state.as_str(), t.attempts), ("new", 0));
    assert_eq!(
        code(&mut c, "SELECT damascus_retry($1)", failing),
        "55000",
        "not failed any more"
    );

    // Cancel: once, then refused; a cancelled ticket cannot be retried either.
    let state: String = c
        .query_one("SELECT damascus_cancel($1)", &[&failing])
        .unwrap()
        .get(0);
    assert_eq!(state, "cancelled");
    assert_eq!(code(&mut c, "SELECT damascus_cancel($1)", failing), "55000");
    assert_eq!(code(&mut c, "SELECT damascus_retry($1)", failing), "55000");

    // A done ticket can be neither retried nor cancelled.
    let done = submit(&mut c, "Finishes", "body");
    tick_until_idle(&mut c, 5);
    assert_eq!(ticket(&mut c, done).state, "done");
    assert_eq!(code(&mut c, "SELECT damascus_retry($1)", done), "55000");
    assert_eq!(code(&mut c, "SELECT damascus_cancel($1)", done), "55000");
    assert_eq!(ticket(&mut c, done).state, "done");

    // Release drops a claim now; an unclaimed ticket has none to drop.
    let held = submit(&mut c, "Held", "body");
    backdate_claim(&mut c, held, 1, "a stuck worker");
    assert_eq!(tick(&mut c), None, "the claim is live for 30 minutes");
    let state: String = c
        .query_one("SELECT damascus_release($1)", &[&held])
        .unwrap()
        .get(0);
    assert_eq!(state, "new");
    assert!(!ticket(&mut c, held).claimed);
    assert_eq!(code(&mut c, "SELECT damascus_release($1)", held), "55000");
    assert_eq!(tick(&mut c).unwrap().ticket_id, held);

    // Unknown ids and NULLs.
    for f in ["damascus_retry", "damascus_cancel", "damascus_release"] {
        assert_eq!(
            code(&mut c, &format!("SELECT {f}($1)"), 424242),
            "P0002",
            "{f}"
        );
        let err = c.query(&format!("SELECT {f}(NULL)"), &[]).unwrap_err();
        assert_eq!(db_error(&err).0, "22004", "{f}");
    }
}

#[test]
fn cancel_or_release_during_a_call_makes_its_verdict_claim_lost() {
    let _g = setup();
    fresh(Behavior::Slow(Duration::from_millis(1500)));
    let mut c = client();
    let id = submit(&mut c, "Cancelled mid-call", "body");
    let running = tick_in_background(id);
    let state: String = c
        .query_one("SELECT damascus_cancel($1)", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(state, "cancelled");
    let r = running.join().unwrap().unwrap();
    assert_eq!(r.verdict, "claim_lost");
    let t = ticket(&mut c, id);
    assert_eq!((t.state.as_str(), t.spec), ("cancelled", None));

    let id = submit(&mut c, "Released mid-call", "body");
    let running = tick_in_background(id);
    c.query_one("SELECT damascus_release($1)", &[&id]).unwrap();
    assert_eq!(running.join().unwrap().unwrap().verdict, "claim_lost");
    let t = ticket(&mut c, id);
    assert_eq!((t.state.as_str(), t.claimed), ("new", false));
    // Released, so the next tick takes it at once, without waiting out the stale window.
    let r = tick(&mut c).unwrap();
    assert_eq!((r.ticket_id, r.verdict.as_str()), (id, "spec_ok"));
}
