//! Provider rate limits enforced before the call, shared by two static workers × 16 calls in flight: against a
//! stand-in that enforces its own token buckets, damascus's matching limits draw no 429 and use the allowed
//! rate; a 429 with retry-after holds every worker off the provider; a spend-limit 429 parks the provider until
//! an administrator resumes it. None of it costs a ticket an attempt.

mod common;

use common::*;
use fakellm::RateLimits;
use std::time::{Duration, Instant};

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let guard = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.database = 'pgrx_tests'",
        "damascus.workers = 2",
        "damascus.max_inflight = 16",
        "damascus.naptime = 100",
        "damascus.llm_api_key = 'sk-fake'",
        "damascus.heartbeat_seconds = 2",
    ]);
    guard
}

fn wait_all_done(c: &mut Client, n: i64, timeout: Duration) {
    wait_for(&format!("{n} tickets done"), timeout, || {
        (count(
            c,
            "SELECT count(*) FROM damascus.tickets WHERE state = 'done'",
        ) == n)
            .then_some(())
    });
}

/// 300 tickets through a provider allowing 240 requests a minute (a burst of 240, then 4 a second): with
/// damascus's limits set to the provider's own, the provider refuses nothing, and after the burst the workers
/// keep within 80% of the allowed rate.
#[test]
fn matching_limits_draw_no_429_and_use_the_allowed_rate() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let _phases = refine_spec_only(&mut c);
    let limits = RateLimits {
        rpm: 240,
        input_tpm: 60_000,
        output_tpm: 600_000,
    };
    let _rpm = set_conf_for_test("damascus.llm_rpm", "240");
    let _itpm = set_conf_for_test("damascus.llm_input_tpm", "60000");
    let _otpm = set_conf_for_test("damascus.llm_output_tpm", "600000");
    llm.set_rate_limits(Some(limits));
    llm.clear_requests();
    c.batch_execute(
        "SELECT count(damascus_submit('Limited ' || g, 'body')) FROM generate_series(1, 300) AS g",
    )
    .unwrap();
    wait_all_done(&mut c, 300, Duration::from_secs(120));
    let refused = llm.rate_limited_count();
    llm.set_rate_limits(None);
    assert_eq!(refused, 0, "no request was refused for the rate limit");
    let mut at: Vec<Instant> = llm.requests().iter().map(|r| r.received_at).collect();
    at.sort();
    assert_eq!(at.len(), 300, "one request per ticket");
    // After the burst of 240, the bucket allows 4 a second: the last 59 requests span at most 59 / (0.8 * 4) s.
    let steady = at[299].duration_since(at[240]);
    let rate = 59.0 / steady.as_secs_f64();
    assert!(
        rate >= 0.8 * 4.0,
        "{rate:.2} requests/s after the burst, allowed 4"
    );
    assert!(rate <= 4.0 * 1.1, "{rate:.2} requests/s is above the limit");
    let with_headers = count(
        &mut c,
        "SELECT count(*) FROM damascus.cycles WHERE ratelimit ? 'anthropic-ratelimit-requests-remaining'",
    );
    assert_eq!(
        with_headers, 300,
        "each cycle keeps the provider's remaining figures"
    );
    let attempts = count(
        &mut c,
        "SELECT count(*) FROM damascus.cycles WHERE verdict <> 'spec_ok'",
    );
    assert_eq!(attempts, 0);
}

/// A 429 with `retry-after: 3` holds every worker off the provider for 3 s, not only the call that got it; that
/// call is retried within its cycle and uses no attempt.
#[test]
fn a_429_with_retry_after_holds_every_worker_off() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    worker_pid(&mut c);
    let _phases = refine_spec_only(&mut c);
    let first = submit(&mut c, "Rate limited", "body [fakellm:cooldown=3]");
    wait_for("the 429", Duration::from_secs(20), || {
        (llm.request_count() >= 1).then_some(())
    });
    c.batch_execute(
        "SELECT count(damascus_submit('After ' || g, 'body')) FROM generate_series(1, 20) AS g",
    )
    .unwrap();
    wait_all_done(&mut c, 21, Duration::from_secs(60));
    let requests = llm.requests();
    let refused_at = requests[0].received_at;
    assert!(requests[0].raw_body.contains("cooldown=3"));
    for r in &requests[1..] {
        let after = r.received_at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(2900),
            "a request arrived {after:?} after the 429 with retry-after: 3"
        );
    }
    assert_eq!(
        requests.len(),
        22,
        "the refused call once more, and one per other ticket"
    );
    let cycles = c
        .query(
            "SELECT verdict, detail FROM damascus.cycles WHERE ticket_id = $1",
            &[&first],
        )
        .unwrap();
    assert_eq!(
        cycles.len(),
        1,
        "retried within its one cycle, which used no other attempt"
    );
    assert_eq!(
        cycles[0].get::<_, Option<String>>(0).as_deref(),
        Some("spec_ok")
    );
}

/// A 429 saying the spend limit is reached parks the provider: nothing is claimed or sent, the analyzer says
/// so, and `damascus_resume_provider()` lets work go on; no attempt is used.
#[test]
fn a_spend_limit_parks_the_provider_until_resumed() {
    let _g = setup();
    let llm = fresh(Behavior::SpendLimit);
    let mut c = client();
    worker_pid(&mut c);
    let _phases = refine_spec_only(&mut c);
    let refused = submit(&mut c, "Over the spend limit", "body");
    wait_for("the provider to be parked", Duration::from_secs(20), || {
        c.query_one("SELECT parked FROM damascus.provider_state()", &[])
            .unwrap()
            .get::<_, bool>(0)
            .then_some(())
    });
    wait_for(
        "the refused cycle's verdict",
        Duration::from_secs(20),
        || {
            (count(
                &mut c,
                "SELECT count(*) FROM damascus.cycles WHERE verdict IS NOT NULL",
            ) == 1)
                .then_some(())
        },
    );
    let t = ticket(&mut c, refused);
    assert_eq!(
        (t.attempts, t.last_verdict.as_deref()),
        (0, Some("llm_error")),
        "{t:?}"
    );
    assert_eq!(llm.request_count(), 1, "refused once, not retried");
    llm.set_behavior(Behavior::Good);
    let waiting = submit(&mut c, "Waiting", "body");
    assert!(
        c.query("SELECT * FROM damascus_tick()", &[])
            .unwrap()
            .is_empty(),
        "a parked provider gets no claim"
    );
    let findings: Vec<String> = c
        .query("SELECT finding FROM damascus_analyze()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        findings.iter().any(|f| f.contains("parked")),
        "{findings:?}"
    );
    assert_eq!(llm.request_count(), 1, "nothing sent while parked");
    let was: bool = c
        .query_one("SELECT damascus_resume_provider()", &[])
        .unwrap()
        .get(0);
    assert!(was);
    wait_for("the waiting ticket to run", Duration::from_secs(20), || {
        (ticket(&mut c, waiting).state == "done").then_some(())
    });
    assert_eq!(ticket(&mut c, waiting).attempts, 0);
}
