//! The LLM misbehaves, over real HTTP from the stand-in: failures that say "later" are retried inside the
//! cycle (honouring retry-after) and cost no attempt; requests the API refuses for good are llm_rejected and
//! answers that are not answers llm_bad_response, each costing an attempt; an answer that never ends is cut
//! off by the call's timeout. The worker never crashes or hangs.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

/// 429 twice with `retry-after: 1`, then an answer: one cycle, spec_ok, no attempt and no llm_error used,
/// and the two waits the server asked for were kept.
#[test]
fn rate_limits_are_retried_within_the_cycle_honouring_retry_after() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Rate limited", "body [fakellm:flaky=429:2]");
    let started = Instant::now();
    let row = tick(&mut c).expect("claimed");
    let took = started.elapsed();
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "spec_ok"));
    assert_eq!(llm.request_count(), 3, "two refusals, then the answer");
    assert!(
        took >= Duration::from_secs(2),
        "retry-after honoured: {took:?}"
    );
    let t = ticket(&mut c, id);
    assert_eq!((t.attempts, t.llm_errors), (0, 0), "{t:?}");
    assert_eq!(cycles(&mut c, id).len(), 1, "one cycle");
}

/// More failures than `damascus.llm_max_retries`: llm_error after 1 + max_retries requests, no attempt used.
#[test]
fn retries_stop_at_llm_max_retries_and_the_cycle_is_llm_error() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let _retries = set_conf_for_test("damascus.llm_max_retries", "1");
    let mut c = client();
    let id = submit(&mut c, "Overloaded", "body [fakellm:flaky=529:5]");
    let row = tick(&mut c).expect("claimed");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "llm_error"));
    assert_eq!(llm.request_count(), 2);
    let t = ticket(&mut c, id);
    assert_eq!((t.attempts, t.llm_errors), (0, 1), "{t:?}");
    assert_eq!(cycles(&mut c, id)[0].http_status, Some(529));
}

/// 400, 401, 403, 404, 413, 422: sent once, verdict llm_rejected with the provider's message, one attempt
/// used; at max_attempts the ticket fails instead of being retried for ever.
#[test]
fn requests_the_api_refuses_for_good_are_llm_rejected_and_cost_an_attempt() {
    let _g = setup();
    let mut c = client();
    for status in [400, 401, 403, 404, 413, 422] {
        let llm = fresh(Behavior::Status(status));
        let id = submit(&mut c, "Refused", "body");
        let row = tick(&mut c).expect("claimed");
        assert_eq!(
            (row.ticket_id, row.verdict.as_str()),
            (id, "llm_rejected"),
            "{status}"
        );
        assert_eq!(llm.request_count(), 1, "{status}: not retried");
        let t = ticket(&mut c, id);
        assert_eq!(
            (t.attempts, t.llm_errors, t.claimed),
            (1, 0, false),
            "{status}: {t:?}"
        );
        let cy = cycles(&mut c, id);
        assert_eq!(cy[0].http_status, Some(i32::from(status)));
        assert!(
            cy[0]
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("HTTP {status}")),
            "{status}: {:?}",
            cy[0].detail
        );
    }
    let llm = fresh(Behavior::Status(401));
    let id = submit(&mut c, "Refused three times", "body");
    for _ in 0..3 {
        tick(&mut c).expect("claimed");
    }
    assert_eq!(ticket(&mut c, id).state, "failed");
    assert_eq!(tick(&mut c), None, "a failed ticket is not retried");
    assert_eq!(llm.request_count(), 3);
}

/// Answers that are not answers: not JSON (an HTML page), JSON of another shape, bytes that are not UTF-8,
/// no text, only a block of an unexpected type, a 100 MiB body over damascus.llm_max_response_bytes (8 MB). Each is
/// llm_bad_response with a detail, costs an attempt, and the next tick works.
#[test]
fn answers_that_are_not_answers_are_llm_bad_response() {
    let _g = setup();
    let mut c = client();
    for marker in [
        "garbage",
        "wrong-shape",
        "not-utf8",
        "empty-content",
        "odd-block",
        // 100 MiB against the default cap of 8 MB: the rest is never read.
        "huge=100",
    ] {
        fresh(Behavior::Good);
        let id = submit(&mut c, "Bad answer", &format!("body [fakellm:{marker}]"));
        let row = tick(&mut c).expect("claimed");
        assert_eq!(
            (row.ticket_id, row.verdict.as_str()),
            (id, "llm_bad_response"),
            "{marker}"
        );
        let t = ticket(&mut c, id);
        assert_eq!((t.attempts, t.claimed), (1, false), "{marker}: {t:?}");
        assert!(t.last_error.is_some(), "{marker}: a detail says why");
    }
    // The last ticket was the huge answer (ids restart with each fresh()).
    let last: i64 = c
        .query_one("SELECT max(id) FROM damascus.tickets", &[])
        .unwrap()
        .get(0);
    let cy = cycles(&mut c, last);
    assert!(
        cy[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("llm_max_response_bytes"),
        "{:?}",
        cy[0].detail
    );
    fresh(Behavior::Good);
    let id = submit(&mut c, "After the bad answers", "body");
    assert_eq!(
        tick(&mut c).map(|r| (r.ticket_id, r.verdict)),
        Some((id, "spec_ok".to_string()))
    );
}

/// An answer whose headers arrive but whose body never ends is cut off by the call's timeout: llm_error,
/// no attempt used, and the tick returns.
#[test]
fn an_answer_that_never_ends_is_cut_off_by_the_timeout() {
    let _g = setup();
    fresh(Behavior::Good);
    let _timeout = set_conf_for_test("damascus.llm_timeout", "2");
    let mut c = client();
    let id = submit(&mut c, "Endless", "body [fakellm:endless]");
    let started = Instant::now();
    let row = tick(&mut c).expect("claimed");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "llm_error"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ticket(&mut c, id).attempts, 0);
}

/// A host name that does not resolve (DNS failure) is a transport failure like a refused connection:
/// llm_error with the reason, no attempt used, the ticket backs off, and nothing reaches any server.
#[test]
fn a_host_name_that_does_not_resolve_is_llm_error() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let _url = set_conf_for_test(
        "damascus.llm_url",
        "http://no-such-host.invalid:9/v1/messages",
    );
    let _retries = set_conf_for_test("damascus.llm_max_retries", "0");
    let mut c = client();
    let id = submit(&mut c, "Unresolvable", "body");
    let started = Instant::now();
    let row = tick(&mut c).expect("claimed");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "llm_error"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "name resolution has its own bound: {:?}",
        started.elapsed()
    );
    let t = ticket(&mut c, id);
    assert_eq!(
        (t.attempts, t.llm_errors, t.claimed),
        (0, 1, false),
        "{t:?}"
    );
    assert!(t.not_before_secs.unwrap_or_default() > 0.0, "{t:?}");
    let detail = cycles(&mut c, id)[0].detail.clone().unwrap_or_default();
    assert!(!detail.is_empty(), "a detail says why");
    eprintln!("DNS failure detail: {detail}");
    assert_eq!(llm.request_count(), 0);
}
