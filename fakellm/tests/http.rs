//! End-to-end checks over real loopback HTTP, with a hand-written std-only client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fakellm::{
    Behavior, FakeLlm, REJECT_REASONS, RateLimits, SECTIONS, good_diff, good_review, good_spec,
};
use serde_json::{Value, json};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Everything received, for the cases where nothing (or not HTTP) comes back.
    raw: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body exactly as sent; `body` is its lossy decoding.
    fn body_bytes(&self) -> &[u8] {
        &self.raw[blank_line(&self.raw).unwrap() + 4..]
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn text(&self) -> String {
        self.json()["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn error_type(&self) -> String {
        let v = self.json();
        assert_eq!(v["type"], "error", "{v}");
        v["error"]["type"].as_str().unwrap().to_string()
    }
}

fn host(url: &str) -> &str {
    url.strip_prefix("http://").unwrap()
}

fn connect(url: &str) -> TcpStream {
    let stream = TcpStream::connect(host(url)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Where the head ends: the offset of its closing `\r\n\r\n`.
fn blank_line(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n")
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let Some(head_end) = blank_line(&raw) else {
        return Reply {
            status: 0,
            headers: vec![],
            body: String::new(),
            raw,
        };
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect::<Vec<_>>();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert_eq!(body.len(), len, "content-length must match the body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
        raw,
    }
}

fn send_raw(url: &str, raw: &[u8]) -> Reply {
    let mut stream = connect(url);
    stream.write_all(raw).unwrap();
    read_reply(&mut stream)
}

/// One request on its own connection; it asks the server to close it after the answer, so the reply can
/// be read to the end of the stream.
fn request(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    send_raw(
        url,
        request_text(url, method, path, headers, body).as_bytes(),
    )
}

fn request_text(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        host(url)
    );
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw
}

const AUTH: [(&str, &str); 3] = [
    ("x-api-key", "test-key"),
    ("anthropic-version", "2023-06-01"),
    ("content-type", "application/json"),
];

fn body_for(prompt: &str) -> String {
    json!({
        "model": "claude-test-1",
        "max_tokens": 777,
        "system": "You write specs.",
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

fn ask(llm: &FakeLlm, prompt: &str) -> Reply {
    request(&llm.url(), "POST", "/v1/messages", &AUTH, &body_for(prompt))
}

fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_string)
        .collect()
}

/// Lines that a Markdown parser would see as headings: those outside code fences.
fn headings_outside_fences(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && let Some(h) = line.strip_prefix("## ") {
            out.push(h.to_string());
        }
    }
    out
}

#[test]
fn good_answer_has_the_exact_message_shape() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    assert!(llm.url().starts_with("http://127.0.0.1:") && !llm.url().ends_with('/'));
    let reply = ask(&llm, "\nAdd a password reset flow\nDetails follow.");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("connection"),
        Some("close"),
        "the client asked for close"
    );
    let v = reply.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "content",
            "id",
            "model",
            "role",
            "stop_reason",
            "stop_sequence",
            "type",
            "usage"
        ]
    );
    assert!(v["id"].as_str().unwrap().starts_with("msg_fake_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-test-1");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(v["content"].as_array().unwrap().len(), 1);
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() >= 1);
    let text = reply.text();
    assert_eq!(
        v["usage"]["output_tokens"].as_u64().unwrap(),
        (text.chars().count() / 4) as u64
    );
    assert_eq!(text, good_spec("Add a password reset flow"));
    assert_eq!(headings(&text), SECTIONS);
    assert!(text.contains("\n1. ") && text.contains("\n2. ") && text.contains("\n3. "));
    assert!(text.contains("## Test Command\n\n```sh\ncargo test\n```"));
}

#[test]
fn different_tickets_give_different_specs_and_ids() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let a = ask(&llm, "Add CSV export");
    let b = ask(&llm, "Fix the login timeout");
    assert_ne!(a.text(), b.text());
    assert!(b.text().contains("Fix the login timeout"));
    assert_ne!(a.json()["id"], b.json()["id"]);
}

#[test]
fn truncated_stops_on_max_tokens_inside_tdd_plan() {
    let llm = FakeLlm::start(Behavior::Truncated).unwrap();
    let v = ask(&llm, "Add CSV export").json();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 777);
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(headings(text), &SECTIONS[..4]);
    assert!(!text.contains("## Test Command") && !text.contains("## Out of Scope"));
}

#[test]
fn missing_and_empty_sections() {
    let llm = FakeLlm::start(Behavior::MissingSection("Test Command".into())).unwrap();
    let reply = ask(&llm, "Add CSV export");
    assert_eq!(reply.json()["stop_reason"], "end_turn");
    let text = reply.text();
    assert!(!text.contains("## Test Command") && !text.contains("cargo test"));
    assert_eq!(headings(&text), &SECTIONS[..5]);

    llm.set_behavior(Behavior::EmptySection("Acceptance Criteria".into()));
    let text = ask(&llm, "Add CSV export").text();
    assert_eq!(headings(&text), SECTIONS);
    assert!(text.contains("## Acceptance Criteria\n\n## TDD Plan"));
}

#[test]
fn fenced_test_command_is_only_inside_a_fence() {
    let llm = FakeLlm::start(Behavior::FencedTestCommand).unwrap();
    let reply = ask(&llm, "Add CSV export");
    assert_eq!(reply.json()["stop_reason"], "end_turn");
    let text = reply.text();
    assert!(text.lines().any(|l| l == "## Test Command"));
    assert_eq!(headings_outside_fences(&text), &SECTIONS[..5]);
}

#[test]
fn simulated_statuses_use_real_error_bodies() {
    let llm = FakeLlm::start(Behavior::Status(429)).unwrap();
    let reply = ask(&llm, "x");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.error_type(), "rate_limit_error");
    assert_eq!(reply.header("retry-after"), Some("1"));
    for (code, kind, retry_after) in [
        (529, "overloaded_error", Some("1")),
        (500, "api_error", None),
        (503, "api_error", Some("1")),
    ] {
        llm.set_behavior(Behavior::Status(code));
        let reply = ask(&llm, "x");
        assert_eq!(reply.status, code);
        assert_eq!(reply.error_type(), kind);
        assert_eq!(reply.header("retry-after"), retry_after, "{code}");
    }
}

#[test]
fn garbage_and_wrong_shape() {
    let llm = FakeLlm::start(Behavior::Garbage).unwrap();
    let reply = ask(&llm, "x");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(serde_json::from_str::<Value>(&reply.body).is_err());

    llm.set_behavior(Behavior::WrongShape);
    let reply = ask(&llm, "x");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"hello": "world"}));
}

#[test]
fn validation_errors() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let url = llm.url();
    let body = body_for("x");

    let reply = request(&url, "POST", "/v1/messages", &AUTH[1..], &body);
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (401, "authentication_error")
    );

    let reply = request(&url, "POST", "/v1/messages", &AUTH[..1], &body);
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (400, "invalid_request_error")
    );

    let reply = request(&url, "POST", "/v1/messages", &AUTH, "{not json");
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (400, "invalid_request_error")
    );

    let reply = request(
        &url,
        "POST",
        "/v1/messages",
        &AUTH,
        r#"{"model":"m","messages":[]}"#,
    );
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (400, "invalid_request_error")
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );

    let reply = request(&url, "POST", "/v1/complete", &AUTH, &body);
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (404, "not_found_error")
    );

    let reply = request(&url, "GET", "/v1/messages", &AUTH, "");
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));

    let reply = send_raw(&url, b"this is not http\r\n\r\n");
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (400, "invalid_request_error")
    );

    // The server refuses before reading the body, so the client need not send 9 MiB.
    let reply = send_raw(
        &url,
        b"POST /v1/messages HTTP/1.1\r\nx-api-key: k\r\nanthropic-version: v\r\nContent-Length: 9437184\r\n\r\n",
    );
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (413, "request_too_large")
    );

    // Every one of them, even the refused ones, was recorded (the non-HTTP one could not be).
    assert_eq!(llm.request_count(), 7);
    // And the server is still healthy.
    assert_eq!(ask(&llm, "x").status, 200);
}

#[test]
fn marker_overrides_the_default() {
    let llm = FakeLlm::start(Behavior::Status(500)).unwrap();
    assert_eq!(ask(&llm, "Add CSV export").status, 500);
    let reply = ask(&llm, "Add CSV export [fakellm:good]");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), good_spec("Add CSV export"));

    llm.set_behavior(Behavior::Good);
    let reply = ask(&llm, "[fakellm:status=529]\nAdd CSV export");
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (529, "overloaded_error")
    );
    let text = ask(&llm, "Add CSV export\n[fakellm:missing=Out of Scope]").text();
    assert!(!text.contains("## Out of Scope"));
    let reply = ask(&llm, "[fakellm:nonsense]");
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (400, "invalid_request_error")
    );
}

#[test]
fn requests_are_recorded_with_headers_and_body() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    ask(&llm, "Add CSV export");
    request(&llm.url(), "POST", "/v1/messages", &AUTH, "not json");
    let recorded = llm.requests();
    assert_eq!(recorded.len(), 2);
    let first = &recorded[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.header("X-API-KEY"), Some("test-key"));
    assert_eq!(first.header("anthropic-version"), Some("2023-06-01"));
    assert!(
        first
            .headers
            .iter()
            .all(|(n, _)| *n == n.to_ascii_lowercase())
    );
    let body = first.body.as_ref().unwrap();
    assert_eq!(body["messages"][0]["content"], "Add CSV export");
    assert_eq!(body["max_tokens"], 777);
    assert_eq!(recorded[1].body, None);
    assert_eq!(recorded[1].raw_body, "not json");
    llm.clear_requests();
    assert_eq!(llm.request_count(), 0);
}

#[test]
fn hang_answers_nothing_and_shutdown_is_prompt() {
    let llm = FakeLlm::start(Behavior::Hang).unwrap();
    let url = llm.url();
    let client = thread::spawn(move || {
        let start = Instant::now();
        let reply = request(&url, "POST", "/v1/messages", &AUTH, &body_for("x"));
        (reply, start.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while llm.request_count() == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        thread::sleep(Duration::from_millis(10));
    }
    // Other clients are still served while one hangs.
    let other = ask(&llm, "[fakellm:good] Add CSV export");
    assert_eq!(other.status, 200);
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    llm.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let (reply, waited) = client.join().unwrap();
    assert!(reply.raw.is_empty(), "hang must not answer");
    assert!(waited >= Duration::from_millis(200));
    assert!(
        waited < Duration::from_secs(4),
        "client was not released: {waited:?}"
    );
}

#[test]
fn reset_closes_without_answering() {
    let llm = FakeLlm::start(Behavior::Reset).unwrap();
    let reply = ask(&llm, "x");
    assert!(reply.raw.is_empty());
    assert_eq!(llm.request_count(), 1);
}

#[test]
fn slow_waits_then_answers() {
    let llm = FakeLlm::start(Behavior::Slow(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let reply = ask(&llm, "Add CSV export");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.text(), good_spec("Add CSV export"));
}

#[test]
fn slow_ends_early_on_shutdown() {
    let llm = FakeLlm::start(Behavior::Slow(Duration::from_secs(60))).unwrap();
    let url = llm.url();
    let client =
        thread::spawn(move || request(&url, "POST", "/v1/messages", &AUTH, &body_for("x")));
    while llm.request_count() == 0 {
        thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    drop(llm);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(client.join().unwrap().raw.is_empty());
}

#[test]
fn expect_continue_and_split_writes() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let body = body_for("Add CSV export");
    let mut stream = connect(&llm.url());
    write!(
        stream,
        "POST /v1/messages HTTP/1.1\r\nx-api-key: k\r\nanthropic-version: v\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    reader.read_line(&mut line).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    stream.write_all(a.as_bytes()).unwrap();
    stream.flush().unwrap();
    thread::sleep(Duration::from_millis(50));
    stream.write_all(b.as_bytes()).unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), good_spec("Add CSV export"));
}

#[test]
fn binary_serves_and_logs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakellm"))
        .args(["--addr", "127.0.0.1:0", "--behavior", "truncated"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("fakellm listening on ")
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{line}"
    );
    let reply = request(&url, "POST", "/v1/messages", &AUTH, &body_for("x"));
    assert_eq!(reply.json()["stop_reason"], "max_tokens");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("POST /v1/messages -> 200 truncated"),
        "{stderr}"
    );
}

#[test]
fn binary_rejects_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_fakellm"))
        .args(["--behavior", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: fakellm"));
    assert!(out.stdout.is_empty());
}

// ---- phases and the OpenAI format ----

const OPENAI_PATH: &str = "/v1/chat/completions";

const OPENAI_AUTH: [(&str, &str); 2] = [
    ("authorization", "Bearer sk-test"),
    ("content-type", "application/json"),
];

const SPEC_SYSTEM: &str = "You write specs.";
const IMPLEMENT_SYSTEM: &str = "Answer with one sentence, then a Unified Diff in a diff fence.";
const REVIEW_SYSTEM: &str =
    "Review the unified diff. End with one line: VERDICT: APPROVE or VERDICT: REJECT.";

#[derive(Clone, Copy, Debug)]
enum Api {
    Anthropic,
    OpenAi,
}

const APIS: [Api; 2] = [Api::Anthropic, Api::OpenAi];

fn openai_body(system: &str, prompt: &str) -> Value {
    json!({
        "model": "gpt-test-1",
        "max_tokens": 555,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
        ],
    })
}

fn openai_request(llm: &FakeLlm, body: &Value) -> Reply {
    request(
        &llm.url(),
        "POST",
        OPENAI_PATH,
        &OPENAI_AUTH,
        &body.to_string(),
    )
}

/// Asks in `api`'s format with `system` as the system text.
fn ask_as(llm: &FakeLlm, api: Api, system: &str, prompt: &str) -> Reply {
    send_raw(&llm.url(), ask_as_text(llm, api, system, prompt).as_bytes())
}

/// The request `ask_as` sends, for tests that read the answer themselves.
fn ask_as_text(llm: &FakeLlm, api: Api, system: &str, prompt: &str) -> String {
    match api {
        Api::Anthropic => {
            let body = json!({
                "model": "claude-test-1",
                "max_tokens": 777,
                "system": system,
                "messages": [{"role": "user", "content": prompt}],
            });
            request_text(&llm.url(), "POST", "/v1/messages", &AUTH, &body.to_string())
        }
        Api::OpenAi => request_text(
            &llm.url(),
            "POST",
            OPENAI_PATH,
            &OPENAI_AUTH,
            &openai_body(system, prompt).to_string(),
        ),
    }
}

/// The answer text and the provider's stop word, whichever the format.
fn text_and_stop(api: Api, reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, 200, "{api:?}: {}", reply.body);
    let v = reply.json();
    let (text, stop) = match api {
        Api::Anthropic => (&v["content"][0]["text"], &v["stop_reason"]),
        Api::OpenAi => (
            &v["choices"][0]["message"]["content"],
            &v["choices"][0]["finish_reason"],
        ),
    };
    (
        text.as_str().unwrap().to_string(),
        stop.as_str().unwrap().to_string(),
    )
}

fn openai_error(reply: &Reply) -> (u16, String, Value) {
    let v = reply.json();
    let error = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert!(v["error"]["param"].is_null());
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    (
        reply.status,
        v["error"]["type"].as_str().unwrap().to_string(),
        v["error"]["code"].clone(),
    )
}

#[test]
fn each_phase_gets_its_own_answer_in_both_formats() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    for api in APIS {
        let (text, stop) = text_and_stop(api, &ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export"));
        assert_eq!(text, good_spec("Add CSV export"), "{api:?}");
        assert!(stop == "end_turn" || stop == "stop");

        let (text, _) = text_and_stop(api, &ask_as(&llm, api, IMPLEMENT_SYSTEM, "Add CSV export"));
        assert_eq!(text, good_diff("Add CSV export"), "{api:?}");
        assert!(text.contains(
            "```diff\n--- a/src/add_csv_export.rs\n+++ b/src/add_csv_export.rs\n@@ -1,3 +1,4 @@\n"
        ));
        let (other, _) = text_and_stop(api, &ask_as(&llm, api, IMPLEMENT_SYSTEM, "Fix login"));
        assert_ne!(other, text);

        let (text, _) = text_and_stop(api, &ask_as(&llm, api, REVIEW_SYSTEM, "Add CSV export"));
        assert_eq!(text, good_review("Add CSV export"), "{api:?}");
        assert_eq!(text.lines().last(), Some("VERDICT: APPROVE"));
    }
}

#[test]
fn reject_and_no_diff_apply_only_to_their_phase() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    for api in APIS {
        let (text, stop) = text_and_stop(
            api,
            &ask_as(&llm, api, REVIEW_SYSTEM, "Add CSV export [fakellm:reject]"),
        );
        assert!(stop == "end_turn" || stop == "stop");
        assert_eq!(text.lines().last(), Some("VERDICT: REJECT"), "{api:?}");
        assert!(text.contains(REJECT_REASONS));
        assert!(!text.contains("APPROVE") && !text.contains("fakellm"));

        let (text, _) = text_and_stop(
            api,
            &ask_as(
                &llm,
                api,
                IMPLEMENT_SYSTEM,
                "[fakellm:no-diff] Add CSV export",
            ),
        );
        assert!(text.contains("Add CSV export"));
        assert!(!text.contains("```") && !text.contains("@@") && !text.contains("--- a/"));

        // Aimed at another phase, they answer like good.
        let (text, _) = text_and_stop(
            api,
            &ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export [fakellm:reject]"),
        );
        assert_eq!(text, good_spec("Add CSV export"));
        let (text, _) = text_and_stop(
            api,
            &ask_as(&llm, api, REVIEW_SYSTEM, "Add CSV export [fakellm:no-diff]"),
        );
        assert_eq!(text, good_review("Add CSV export"));
        let (text, _) = text_and_stop(
            api,
            &ask_as(
                &llm,
                api,
                IMPLEMENT_SYSTEM,
                "Add CSV export [fakellm:reject]",
            ),
        );
        assert_eq!(text, good_diff("Add CSV export"));
        for marker in ["missing=Context", "empty=Summary", "fenced"] {
            let prompt = format!("Add CSV export [fakellm:{marker}]");
            let (text, _) = text_and_stop(api, &ask_as(&llm, api, REVIEW_SYSTEM, &prompt));
            assert_eq!(text, good_review("Add CSV export"), "{marker}");
            let (text, _) = text_and_stop(api, &ask_as(&llm, api, IMPLEMENT_SYSTEM, &prompt));
            assert_eq!(text, good_diff("Add CSV export"), "{marker}");
        }
    }
    // As a server default too.
    llm.set_behavior(Behavior::Reject);
    let (text, _) = text_and_stop(Api::OpenAi, &ask_as(&llm, Api::OpenAi, REVIEW_SYSTEM, "x"));
    assert!(text.ends_with("\nVERDICT: REJECT"));
    llm.set_behavior(Behavior::parse("no-diff").unwrap());
    let (text, _) = text_and_stop(
        Api::OpenAi,
        &ask_as(&llm, Api::OpenAi, IMPLEMENT_SYSTEM, "x"),
    );
    assert!(!text.contains("```"));
}

#[test]
fn truncation_in_both_formats_and_every_phase() {
    let llm = FakeLlm::start(Behavior::Truncated).unwrap();
    for (system, full) in [
        (SPEC_SYSTEM, good_spec("Add CSV export")),
        (IMPLEMENT_SYSTEM, good_diff("Add CSV export")),
        (REVIEW_SYSTEM, good_review("Add CSV export")),
    ] {
        let reply = ask_as(&llm, Api::Anthropic, system, "Add CSV export");
        let (text, stop) = text_and_stop(Api::Anthropic, &reply);
        assert_eq!(stop, "max_tokens");
        assert_eq!(reply.json()["usage"]["output_tokens"], 777);
        assert!(
            full.starts_with(&text) && text.len() < full.len() * 3 / 4,
            "{system}"
        );

        let reply = ask_as(&llm, Api::OpenAi, system, "Add CSV export");
        let (openai_text, stop) = text_and_stop(Api::OpenAi, &reply);
        assert_eq!(stop, "length");
        assert_eq!(openai_text, text);
        assert_eq!(reply.json()["usage"]["completion_tokens"], 555);
    }
    let review = text_and_stop(Api::OpenAi, &ask_as(&llm, Api::OpenAi, REVIEW_SYSTEM, "x")).0;
    assert!(!review.contains("VERDICT"));

    // The newer cap field is honoured, and remembered as sent.
    let mut body = openai_body(SPEC_SYSTEM, "Add CSV export");
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(321);
    let reply = openai_request(&llm, &body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 321);
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "length");

    // A marker truncates a single request under a good default.
    llm.set_behavior(Behavior::Good);
    let reply = ask_as(
        &llm,
        Api::OpenAi,
        IMPLEMENT_SYSTEM,
        "Add CSV export [fakellm:truncated]",
    );
    assert_eq!(text_and_stop(Api::OpenAi, &reply).1, "length");
}

#[test]
fn openai_good_answer_has_the_exact_shape() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let body = json!({
        "model": "gpt-test-1",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "You write specs."}]},
            {"role": "user", "content": [{"type": "text", "text": "Add a password reset flow"}]},
        ],
    });
    let reply = openai_request(&llm, &body);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let v = reply.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["choices", "created", "id", "model", "object", "usage"]
    );
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test-1");
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["choices"][0],
        json!({
            "index": 0,
            "message": {"role": "assistant", "content": good_spec("Add a password reset flow")},
            "finish_reason": "stop",
        })
    );
    let usage = &v["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p >= 1);
    assert_eq!(
        c,
        (good_spec("Add a password reset flow").chars().count() / 4) as u64
    );
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    // Ids are unique across answers.
    assert_ne!(openai_request(&llm, &body).json()["id"], v["id"]);
}

#[test]
fn openai_validation_errors() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let url = llm.url();
    let good = openai_body(SPEC_SYSTEM, "x").to_string();

    for auth in [
        &[][..],
        &[("authorization", "Bearer ")],
        &[("authorization", "Basic dXNlcjpwdw==")],
        &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
    ] {
        let reply = request(&url, "POST", OPENAI_PATH, auth, &good);
        assert_eq!(
            openai_error(&reply),
            (
                401,
                "invalid_request_error".into(),
                json!("invalid_api_key")
            ),
            "{auth:?}"
        );
    }

    let bad_bodies: Vec<(&str, String)> = vec![
        ("not valid JSON", "{not json".to_string()),
        ("model", json!({"messages": [{"role": "user", "content": "x"}]}).to_string()),
        ("model", json!({"model": "", "messages": [{"role": "user", "content": "x"}]}).to_string()),
        ("messages", json!({"model": "m"}).to_string()),
        ("messages", json!({"model": "m", "messages": []}).to_string()),
        ("messages", json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).to_string()),
        ("messages", json!({"model": "m", "messages": [{"role": "user", "content": 3}]}).to_string()),
        ("messages", json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}).to_string()),
        ("max_tokens", json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}).to_string()),
        ("max_completion_tokens", json!({"model": "m", "max_completion_tokens": "9", "messages": [{"role": "user", "content": "x"}]}).to_string()),
        ("stream", json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}).to_string()),
        ("bad fakellm marker", openai_body(SPEC_SYSTEM, "[fakellm:nonsense]").to_string()),
    ];
    for (what, body) in &bad_bodies {
        let reply = request(&url, "POST", OPENAI_PATH, &OPENAI_AUTH, body);
        assert_eq!(
            openai_error(&reply),
            (400, "invalid_request_error".into(), Value::Null),
            "{what}"
        );
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(what), "{what}: {message}");
    }

    let reply = request(&url, "GET", OPENAI_PATH, &OPENAI_AUTH, "");
    assert_eq!(openai_error(&reply).0, 405);
    assert_eq!(reply.header("allow"), Some("POST"));

    // Refused before the body is read, still in the route's own envelope.
    let reply = send_raw(
        &url,
        b"POST /v1/chat/completions HTTP/1.1\r\nauthorization: Bearer k\r\nContent-Length: 9437184\r\n\r\n",
    );
    assert_eq!(openai_error(&reply).0, 413);

    // The Anthropic route still wants its own headers, Bearer or not.
    let reply = request(&url, "POST", "/v1/messages", &OPENAI_AUTH, &body_for("x"));
    assert_eq!(
        (reply.status, reply.error_type().as_str()),
        (401, "authentication_error")
    );

    assert_eq!(llm.request_count(), 4 + bad_bodies.len() + 3);
    assert_eq!(
        openai_request(&llm, &openai_body(SPEC_SYSTEM, "x")).status,
        200
    );
}

#[test]
fn openai_failure_behaviours() {
    let llm = FakeLlm::start(Behavior::Status(429)).unwrap();
    let reply = openai_request(&llm, &openai_body(SPEC_SYSTEM, "x"));
    assert_eq!(
        openai_error(&reply),
        (429, "requests".into(), json!("rate_limit_exceeded"))
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    for (code, retry_after) in [(500, None), (503, Some("1")), (529, Some("1"))] {
        llm.set_behavior(Behavior::Status(code));
        let reply = openai_request(&llm, &openai_body(REVIEW_SYSTEM, "x"));
        assert_eq!(
            openai_error(&reply),
            (code, "server_error".into(), Value::Null)
        );
        assert_eq!(reply.header("retry-after"), retry_after, "{code}");
    }

    llm.set_behavior(Behavior::Good);
    let reply = openai_request(&llm, &openai_body(IMPLEMENT_SYSTEM, "[fakellm:garbage] x"));
    assert_eq!(reply.status, 200);
    assert!(serde_json::from_str::<Value>(&reply.body).is_err());
    let reply = openai_request(&llm, &openai_body(SPEC_SYSTEM, "[fakellm:wrong-shape] x"));
    assert_eq!(reply.json(), json!({"hello": "world"}));
    let reply = openai_request(&llm, &openai_body(SPEC_SYSTEM, "[fakellm:reset] x"));
    assert!(reply.raw.is_empty());

    let started = Instant::now();
    let reply = openai_request(&llm, &openai_body(REVIEW_SYSTEM, "[fakellm:slow=200] x"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(text_and_stop(Api::OpenAi, &reply).0, good_review("x"));
}

#[test]
fn openai_hang_is_released_by_shutdown() {
    let llm = FakeLlm::start(Behavior::Hang).unwrap();
    let url = llm.url();
    let body = openai_body(SPEC_SYSTEM, "x").to_string();
    let client = thread::spawn(move || request(&url, "POST", OPENAI_PATH, &OPENAI_AUTH, &body));
    let deadline = Instant::now() + Duration::from_secs(3);
    while llm.request_count() == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    llm.shutdown();
    assert!(client.join().unwrap().raw.is_empty());
}

#[test]
fn openai_requests_are_recorded() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    openai_request(&llm, &openai_body(REVIEW_SYSTEM, "Add CSV export"));
    request(&llm.url(), "POST", OPENAI_PATH, &[], "not json");
    let recorded = llm.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, OPENAI_PATH);
    assert_eq!(recorded[0].header("Authorization"), Some("Bearer sk-test"));
    let body = recorded[0].body.as_ref().unwrap();
    assert_eq!(body["max_tokens"], 555);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(recorded[1].header("authorization"), None);
    assert_eq!(recorded[1].raw_body, "not json");
}

#[test]
fn binary_logs_openai_requests_with_their_phase() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakellm"))
        .args(["--addr", "127.0.0.1:0", "--behavior", "reject"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("fakellm listening on ")
        .unwrap()
        .to_string();
    let body = openai_body(REVIEW_SYSTEM, "x").to_string();
    let reply = request(&url, "POST", OPENAI_PATH, &OPENAI_AUTH, &body);
    assert!(
        text_and_stop(Api::OpenAi, &reply)
            .0
            .ends_with("VERDICT: REJECT")
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("POST /v1/chat/completions -> 200 reject (review)"),
        "{stderr}"
    );
}

#[test]
fn help_describes_both_formats_and_the_new_spellings() {
    let out = Command::new(env!("CARGO_BIN_EXE_fakellm"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/v1/messages",
        "/v1/chat/completions",
        "reject",
        "no-diff",
        "VERDICT:",
        "unified diff",
        "flaky=<code>:<n>",
        "huge=<MiB>",
        "not-utf8",
        "empty-content",
        "odd-block",
        "endless",
        "retry-after: 1",
        "cooldown=<secs>",
        "spend-limit",
        "enforced_spend_limit_reached",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// Without `connection: close` the connection stays open for the next request, as with the real APIs, and
/// both requests are recorded with the same connection number.
#[test]
fn connections_are_kept_alive_between_requests() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let mut stream = connect(&llm.url());
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for prompt in ["First feature", "Second feature"] {
        let body = body_for(prompt);
        write!(
            stream,
            "POST /v1/messages HTTP/1.1\r\nx-api-key: k\r\nanthropic-version: v\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK\r\n");
        let mut length = 0usize;
        let mut connection = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap(),
                "connection" => connection = value.to_string(),
                _ => {}
            }
        }
        assert_eq!(connection, "keep-alive");
        let mut answer = vec![0u8; length];
        reader.read_exact(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["type"], "message");
    }
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].connection, reqs[1].connection);
}

// ---- a misbehaving API ----

const MIB: usize = 1024 * 1024;

/// The status and error type of an error answer, whichever the format, checking its envelope.
fn error_of(api: Api, reply: &Reply) -> (u16, String) {
    match api {
        Api::Anthropic => (reply.status, reply.error_type()),
        Api::OpenAi => {
            let (status, kind, _) = openai_error(reply);
            (status, kind)
        }
    }
}

/// The answer's JSON with undecodable bytes replaced, for bodies that are deliberately not UTF-8.
fn lossy_json(reply: &Reply) -> Value {
    serde_json::from_str(&String::from_utf8_lossy(reply.body_bytes())).unwrap()
}

#[test]
fn flaky_fails_each_prompt_text_n_times_then_answers() {
    for api in APIS {
        let llm = FakeLlm::start(Behavior::parse("flaky=429:2").unwrap()).unwrap();
        let rate_limited = match api {
            Api::Anthropic => "rate_limit_error",
            Api::OpenAi => "requests",
        };
        // Interleaved, so each text is seen to keep its own count.
        for _ in 0..2 {
            for prompt in ["Add CSV export", "Fix the login timeout"] {
                let reply = ask_as(&llm, api, SPEC_SYSTEM, prompt);
                assert_eq!(
                    error_of(api, &reply),
                    (429, rate_limited.to_string()),
                    "{api:?} {prompt}"
                );
                assert_eq!(reply.header("retry-after"), Some("1"));
            }
        }
        for prompt in ["Add CSV export", "Fix the login timeout"] {
            for _ in 0..2 {
                let reply = ask_as(&llm, api, SPEC_SYSTEM, prompt);
                assert_eq!(text_and_stop(api, &reply).0, good_spec(prompt), "{api:?}");
                assert_eq!(reply.header("retry-after"), None);
            }
        }
        // A text not seen before starts its own count, in any phase.
        let reply = ask_as(&llm, api, IMPLEMENT_SYSTEM, "Add PDF export");
        assert_eq!(error_of(api, &reply).0, 429);

        // As a marker, with its own status and count.
        let marked = "[fakellm:flaky=529:1] Add CSV export";
        let reply = ask_as(&llm, api, REVIEW_SYSTEM, marked);
        assert_eq!(error_of(api, &reply).0, 529, "{api:?}");
        assert_eq!(reply.header("retry-after"), Some("1"));
        let reply = ask_as(&llm, api, REVIEW_SYSTEM, marked);
        assert_eq!(text_and_stop(api, &reply).0, good_review("Add CSV export"));

        let marked = "[fakellm:flaky=500:1] Add CSV export";
        let reply = ask_as(&llm, api, SPEC_SYSTEM, marked);
        assert_eq!(error_of(api, &reply).0, 500);
        assert_eq!(reply.header("retry-after"), None);
        assert_eq!(ask_as(&llm, api, SPEC_SYSTEM, marked).status, 200);
    }
}

#[test]
fn huge_streams_a_message_of_that_many_mib() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    // More than damascus reads (8 MiB), in the size a capped client would have to give up on.
    let reply = ask_as(
        &llm,
        Api::Anthropic,
        SPEC_SYSTEM,
        "[fakellm:huge=9] Add CSV export",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply
            .header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        reply.body_bytes().len()
    );
    let v = reply.json();
    assert_eq!(v["type"], "message");
    let (text, stop) = text_and_stop(Api::Anthropic, &reply);
    assert_eq!(stop, "end_turn");
    assert_eq!(text.len(), 9 * MIB);
    assert!(text.starts_with("fakellm filler. fakellm filler. "));
    assert_eq!(v["usage"]["output_tokens"], (9 * MIB / 4) as u64);

    llm.set_behavior(Behavior::Huge(1));
    let reply = ask_as(&llm, Api::OpenAi, SPEC_SYSTEM, "Add CSV export");
    let (text, stop) = text_and_stop(Api::OpenAi, &reply);
    assert_eq!((text.len(), stop.as_str()), (MIB, "stop"));
    assert_eq!(reply.json()["usage"]["completion_tokens"], (MIB / 4) as u64);
}

#[test]
fn huge_ends_quietly_when_the_client_stops_reading() {
    let llm = FakeLlm::start(Behavior::Huge(200)).unwrap();
    let mut stream = connect(&llm.url());
    stream
        .write_all(ask_as_text(&llm, Api::Anthropic, SPEC_SYSTEM, "Add CSV export").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < MIB {
        let n = stream.read(&mut buf).unwrap();
        assert_ne!(n, 0, "the answer ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let head_end = blank_line(&got).unwrap();
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let announced = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert!(announced > 200 * MIB, "{announced}");
    // A client over its cap hangs up mid-body.
    drop(stream);
    // Nothing on the server minded: the next request is answered as usual.
    let reply = ask(&llm, "[fakellm:good] Add CSV export");
    assert_eq!(reply.text(), good_spec("Add CSV export"));
}

#[test]
fn not_utf8_sends_a_json_envelope_with_bytes_that_are_not_utf8() {
    let llm = FakeLlm::start(Behavior::NotUtf8).unwrap();
    for api in APIS {
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.body_bytes();
        assert!(std::str::from_utf8(body).is_err(), "{api:?}");
        assert!(body.windows(2).any(|w| w == [0xff, 0xfe]));
        // Otherwise it is the format's message, so only a UTF-8 check can catch it.
        let v = lossy_json(&reply);
        let text = match api {
            Api::Anthropic => &v["content"][0]["text"],
            Api::OpenAi => &v["choices"][0]["message"]["content"],
        };
        assert!(text.as_str().unwrap().contains('\u{fffd}'), "{v}");
    }
}

#[test]
fn empty_content_is_a_valid_message_without_text() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let reply = ask_as(
        &llm,
        Api::Anthropic,
        SPEC_SYSTEM,
        "[fakellm:empty-content] x",
    );
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"], json!([]));
    assert_eq!(v["stop_reason"], "end_turn");

    llm.set_behavior(Behavior::EmptyContent);
    let reply = ask_as(&llm, Api::OpenAi, REVIEW_SYSTEM, "x");
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}])
    );
}

#[test]
fn odd_block_answers_with_a_tool_call_and_no_text() {
    let llm = FakeLlm::start(Behavior::OddBlock).unwrap();
    let reply = ask_as(&llm, Api::Anthropic, IMPLEMENT_SYSTEM, "x");
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "toolu_fake", "name": "noop", "input": {}}])
    );
    assert_eq!(v["stop_reason"], "tool_use");

    llm.set_behavior(Behavior::Good);
    let reply = ask_as(&llm, Api::OpenAi, SPEC_SYSTEM, "[fakellm:odd-block] x");
    assert_eq!(reply.status, 200);
    let v = reply.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    let message = &choices[0]["message"];
    assert_eq!(message["role"], "assistant");
    assert!(message["content"].is_null());
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "noop");
    assert_eq!(choices[0]["finish_reason"], "tool_calls");
}

#[test]
fn endless_sends_the_head_then_trickles_until_shutdown() {
    let llm = FakeLlm::start(Behavior::Endless).unwrap();
    let mut open = Vec::new();
    for api in APIS {
        let mut stream = connect(&llm.url());
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
            .write_all(ask_as_text(&llm, api, SPEC_SYSTEM, "x").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut read_more = |got: &mut Vec<u8>| {
            // Every read must bring bytes before the socket timeout: the connection stays open
            // and keeps delivering.
            let n = stream
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("{api:?}: nothing within the timeout: {e}"));
            assert_ne!(n, 0, "{api:?}: endless closed the connection");
            got.extend_from_slice(&buf[..n]);
        };
        while blank_line(&got).is_none() {
            read_more(&mut got);
        }
        let head_end = blank_line(&got).unwrap();
        let first_body = got.len() - (head_end + 4);
        // A few more bytes, proving the body keeps coming a little at a time.
        while got.len() - (head_end + 4) < first_body + 3 {
            read_more(&mut got);
        }
        let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-type: application/json\r\n"));
        let announced = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse::<usize>()
            .unwrap();
        let body = &got[head_end + 4..];
        assert!(body.starts_with(b"{\""), "{api:?}");
        assert!(body.len() < announced, "{} of {announced}", body.len());
        open.push((stream, announced));
    }
    let started = Instant::now();
    llm.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Shutdown ends the answers unfinished.
    for (mut stream, announced) in open {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.len() < announced);
    }
}

// ---- provider rate limits ----

fn limits(rpm: u64, input_tpm: u64, output_tpm: u64) -> RateLimits {
    RateLimits {
        rpm,
        input_tpm,
        output_tpm,
    }
}

/// The (input, output) token counts the answer's usage reports, whichever the format.
fn usage(api: Api, reply: &Reply) -> (u64, u64) {
    let v = reply.json();
    let (input, output) = match api {
        Api::Anthropic => (&v["usage"]["input_tokens"], &v["usage"]["output_tokens"]),
        Api::OpenAi => (
            &v["usage"]["prompt_tokens"],
            &v["usage"]["completion_tokens"],
        ),
    };
    (input.as_u64().unwrap(), output.as_u64().unwrap())
}

fn header_u64(reply: &Reply, name: &str) -> Option<u64> {
    reply
        .header(name)
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}: {v:?}: {e}")))
}

/// `got` is `expected` plus at most what a bucket of `per_minute` can have refilled since `since`.
fn about(got: u64, expected: u64, per_minute: u64, since: Instant) {
    let refill = (per_minute as f64 * since.elapsed().as_secs_f64() / 60.0).ceil() as u64;
    assert!(
        (expected..=expected + refill + 1).contains(&got),
        "{got} is not {expected} (+{refill} refill)"
    );
}

const RATE_LIMIT_HEADERS: [&str; 5] = [
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
];

fn rate_limit_header_names(reply: &Reply) -> Vec<&str> {
    RATE_LIMIT_HEADERS
        .into_iter()
        .filter(|n| reply.header(n).is_some())
        .collect()
}

/// Checks a 429 is the format's rate-limit error and returns its `retry-after`.
fn rate_limited(api: Api, reply: &Reply) -> u64 {
    match api {
        Api::Anthropic => assert_eq!(
            (reply.status, reply.error_type()),
            (429, "rate_limit_error".to_string()),
            "{}",
            reply.body
        ),
        Api::OpenAi => assert_eq!(
            openai_error(reply),
            (429, "requests".to_string(), json!("rate_limit_exceeded")),
            "{}",
            reply.body
        ),
    }
    header_u64(reply, "retry-after").expect("a rate-limit 429 says when to retry")
}

#[test]
fn the_request_past_capacity_is_refused_until_the_bucket_refills() {
    // 20 a minute: one more every 3 s, and 20 quick requests take far less than that.
    thread::scope(|scope| {
        for api in APIS {
            scope.spawn(move || {
                let llm = FakeLlm::start(Behavior::Good).unwrap();
                llm.set_rate_limits(Some(limits(20, 0, 0)));
                for i in 0..20 {
                    let reply = ask_as(&llm, api, SPEC_SYSTEM, &format!("Feature {i}"));
                    assert_eq!(reply.status, 200, "{api:?} request {i}: {}", reply.body);
                }
                let refused = ask_as(&llm, api, SPEC_SYSTEM, "Feature 20");
                let retry_after = rate_limited(api, &refused);
                assert!((1..=3).contains(&retry_after), "{api:?}: {retry_after}");
                assert!(rate_limit_header_names(&refused).is_empty());
                assert_eq!(llm.rate_limited_count(), 1);
                // Refused requests are recorded like any other.
                assert_eq!(llm.request_count(), 21);

                thread::sleep(Duration::from_secs(retry_after));
                let again = ask_as(&llm, api, SPEC_SYSTEM, "Feature 20");
                assert_eq!(again.status, 200, "{api:?}: {}", again.body);
                assert_eq!(text_and_stop(api, &again).0, good_spec("Feature 20"));
                assert_eq!(llm.rate_limited_count(), 1);
            });
        }
    });
}

#[test]
fn buckets_are_shared_by_concurrent_connections() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    // 5 a minute refills one every 12 s, far longer than the burst takes.
    llm.set_rate_limits(Some(limits(5, 0, 0)));
    let statuses: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let llm = &llm;
                scope.spawn(move || {
                    ask_as(llm, APIS[i % 2], SPEC_SYSTEM, &format!("Feature {i}")).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    assert_eq!(llm.rate_limited_count(), 3);
}

#[test]
fn the_output_reservation_is_corrected_to_the_reported_usage() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let prompt = "Add CSV export";
    // Learn what the answer reports, unlimited: the same prompt always gets the same answer.
    let (_, used) = usage(
        Api::Anthropic,
        &ask_as(&llm, Api::Anthropic, REVIEW_SYSTEM, prompt),
    );
    assert!(used < 777, "{used}");
    // Room for exactly one max_tokens=777 reservation plus what an answer really uses: a
    // second request fits only if the first one's unused reservation came back.
    let cap = 777 + used;
    let since = Instant::now();
    llm.set_rate_limits(Some(limits(0, 0, cap)));
    let first = ask_as(&llm, Api::Anthropic, REVIEW_SYSTEM, prompt);
    assert_eq!(first.status, 200, "{}", first.body);
    let left = header_u64(&first, "anthropic-ratelimit-output-tokens-remaining").unwrap();
    about(left, cap - used, cap, since);
    let second = ask_as(&llm, Api::Anthropic, REVIEW_SYSTEM, prompt);
    assert_eq!(second.status, 200, "{}", second.body);
    // Now only `cap - 2 * used` (plus a little refill) is left: 777 no longer fits.
    let third = ask_as(&llm, Api::Anthropic, REVIEW_SYSTEM, prompt);
    assert!(rate_limited(Api::Anthropic, &third) >= 1);

    // OpenAI's cap is max_tokens (555 here) or max_completion_tokens, reserved and refunded alike.
    let since = Instant::now();
    llm.set_rate_limits(Some(limits(0, 0, 1_000)));
    let mut body = openai_body(REVIEW_SYSTEM, prompt);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(900);
    let reply = openai_request(&llm, &body);
    let (_, used) = usage(Api::OpenAi, &reply);
    let left = header_u64(&reply, "x-ratelimit-remaining-tokens").unwrap();
    about(left, 1_000 - used, 1_000, since);
    let reply = openai_request(&llm, &body);
    assert_eq!(reply.status, 200, "900 fits again after the refund");
}

#[test]
fn answers_report_what_is_left_of_the_limited_dimensions() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    for api in APIS {
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        assert!(
            rate_limit_header_names(&reply).is_empty(),
            "no limits, no figures"
        );

        let since = Instant::now();
        llm.set_rate_limits(Some(limits(10, 600, 3_000)));
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        assert_eq!(reply.status, 200, "{api:?}: {}", reply.body);
        let (input, output) = usage(api, &reply);
        match api {
            Api::Anthropic => {
                assert_eq!(
                    rate_limit_header_names(&reply),
                    &RATE_LIMIT_HEADERS[..3],
                    "{:?}",
                    reply.headers
                );
                assert_eq!(
                    header_u64(&reply, "anthropic-ratelimit-requests-remaining"),
                    Some(9)
                );
                let left = header_u64(&reply, "anthropic-ratelimit-input-tokens-remaining");
                about(left.unwrap(), 600 - input, 600, since);
                let left = header_u64(&reply, "anthropic-ratelimit-output-tokens-remaining");
                about(left.unwrap(), 3_000 - output, 3_000, since);
            }
            Api::OpenAi => {
                assert_eq!(
                    rate_limit_header_names(&reply),
                    &RATE_LIMIT_HEADERS[3..],
                    "{:?}",
                    reply.headers
                );
                assert_eq!(
                    header_u64(&reply, "x-ratelimit-remaining-requests"),
                    Some(9)
                );
                let left = header_u64(&reply, "x-ratelimit-remaining-tokens");
                about(left.unwrap(), 3_600 - input - output, 3_600, since);
            }
        }

        // Only the limited dimensions are reported.
        llm.set_rate_limits(Some(limits(7, 0, 0)));
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        let only = match api {
            Api::Anthropic => "anthropic-ratelimit-requests-remaining",
            Api::OpenAi => "x-ratelimit-remaining-requests",
        };
        assert_eq!(rate_limit_header_names(&reply), [only]);
        assert_eq!(header_u64(&reply, only), Some(6));

        let since = Instant::now();
        llm.set_rate_limits(Some(limits(0, 600, 0)));
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        let (input, _) = usage(api, &reply);
        let only = match api {
            Api::Anthropic => "anthropic-ratelimit-input-tokens-remaining",
            Api::OpenAi => "x-ratelimit-remaining-tokens",
        };
        assert_eq!(rate_limit_header_names(&reply), [only]);
        about(header_u64(&reply, only).unwrap(), 600 - input, 600, since);

        // Error answers carry no figures, though they spent a request.
        let reply = ask_as(
            &llm,
            api,
            SPEC_SYSTEM,
            "[fakellm:status=500] Add CSV export",
        );
        assert_eq!(reply.status, 500);
        assert!(rate_limit_header_names(&reply).is_empty());

        llm.set_rate_limits(None);
        let reply = ask_as(&llm, api, SPEC_SYSTEM, "Add CSV export");
        assert!(rate_limit_header_names(&reply).is_empty());
    }
}

#[test]
fn only_well_formed_chat_requests_spend_the_limits() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    llm.set_rate_limits(Some(limits(1, 0, 0)));
    let url = llm.url();
    assert_eq!(
        request(&url, "POST", "/v1/messages", &AUTH, "not json").status,
        400
    );
    assert_eq!(
        request(&url, "POST", "/v1/messages", &[], &body_for("x")).status,
        401
    );
    assert_eq!(request(&url, "GET", "/v1/messages", &AUTH, "").status, 405);
    assert_eq!(
        request(&url, "POST", "/v1/nope", &AUTH, &body_for("x")).status,
        404
    );
    assert_eq!(ask(&llm, "[fakellm:bogus] x").status, 400);
    assert_eq!(ask(&llm, "Add CSV export").status, 200);
    assert_eq!(ask(&llm, "Add CSV export").status, 429);
    assert_eq!(llm.rate_limited_count(), 1);
}

#[test]
fn the_refusal_count_resets_with_the_limits_and_the_requests() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    llm.set_rate_limits(Some(limits(1, 0, 0)));
    assert_eq!(ask(&llm, "x").status, 200);
    assert_eq!(ask(&llm, "x").status, 429);
    assert_eq!(ask(&llm, "x").status, 429);
    assert_eq!(llm.rate_limited_count(), 2);
    llm.clear_requests();
    assert_eq!(llm.rate_limited_count(), 0);
    assert_eq!(ask(&llm, "x").status, 429, "clearing does not refill");
    assert_eq!(llm.rate_limited_count(), 1);
    // Setting the limits refills them and resets the count; a behaviour's 429 spends the
    // request it was admitted with but is not the limiter's.
    llm.set_rate_limits(Some(limits(1, 0, 0)));
    assert_eq!(llm.rate_limited_count(), 0);
    assert_eq!(ask(&llm, "[fakellm:status=429] x").status, 429);
    assert_eq!(llm.rate_limited_count(), 0);
    assert_eq!(ask(&llm, "x").status, 429);
    assert_eq!(llm.rate_limited_count(), 1);
    llm.set_rate_limits(None);
    for _ in 0..5 {
        assert_eq!(ask(&llm, "x").status, 200);
    }
    assert_eq!(llm.rate_limited_count(), 0);
}

#[test]
fn cooldown_refuses_the_first_request_with_its_retry_after() {
    for api in APIS {
        let llm = FakeLlm::start(Behavior::Good).unwrap();
        let marked = "[fakellm:cooldown=7] Add CSV export";
        let reply = ask_as(&llm, api, SPEC_SYSTEM, marked);
        assert_eq!(rate_limited(api, &reply), 7, "{api:?}");
        for _ in 0..2 {
            let reply = ask_as(&llm, api, SPEC_SYSTEM, marked);
            assert_eq!(text_and_stop(api, &reply).0, good_spec("Add CSV export"));
            assert_eq!(reply.header("retry-after"), None);
        }
        // Another text cools down on its own, in any phase.
        let reply = ask_as(
            &llm,
            api,
            REVIEW_SYSTEM,
            "[fakellm:cooldown=60] Add PDF export",
        );
        assert_eq!(rate_limited(api, &reply), 60);
        assert_eq!(llm.rate_limited_count(), 0, "not the limiter's refusals");

        // As the default.
        let llm = FakeLlm::start(Behavior::parse("cooldown=2").unwrap()).unwrap();
        assert_eq!(
            rate_limited(api, &ask_as(&llm, api, SPEC_SYSTEM, "Fix it")),
            2
        );
        assert_eq!(ask_as(&llm, api, SPEC_SYSTEM, "Fix it").status, 200);
    }
}

#[test]
fn spend_limit_refuses_every_request_without_retry_after() {
    for api in APIS {
        let llm = FakeLlm::start(Behavior::Good).unwrap();
        for prompt in [
            "[fakellm:spend-limit] Add CSV export",
            "[fakellm:spend-limit] Add CSV export",
        ] {
            let reply = ask_as(&llm, api, SPEC_SYSTEM, prompt);
            assert_eq!(reply.status, 429, "{api:?}");
            assert!(
                reply.body.contains("enforced_spend_limit_reached"),
                "{api:?}: {}",
                reply.body
            );
            assert_eq!(reply.header("retry-after"), None, "{api:?}");
            match api {
                Api::Anthropic => assert_eq!(reply.error_type(), "rate_limit_error"),
                Api::OpenAi => assert_eq!(
                    openai_error(&reply),
                    (
                        429,
                        "insufficient_quota".to_string(),
                        json!("insufficient_quota")
                    )
                ),
            }
        }
        let llm = FakeLlm::start(Behavior::SpendLimit).unwrap();
        let reply = ask_as(&llm, api, IMPLEMENT_SYSTEM, "Add CSV export");
        assert_eq!(reply.status, 429);
        assert!(reply.body.contains("enforced_spend_limit_reached"));
    }
}

#[test]
fn requests_record_when_they_arrived() {
    let llm = FakeLlm::start(Behavior::Good).unwrap();
    let before = Instant::now();
    ask(&llm, "First");
    let quiet_from = Instant::now();
    thread::sleep(Duration::from_millis(50));
    let quiet_to = Instant::now();
    ask(&llm, "Second");
    let after = Instant::now();
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2);
    assert!(before <= reqs[0].received_at && reqs[0].received_at <= quiet_from);
    assert!(quiet_to <= reqs[1].received_at && reqs[1].received_at <= after);
    assert!(
        !reqs
            .iter()
            .any(|r| quiet_from < r.received_at && r.received_at < quiet_to),
        "nothing arrived in the quiet window"
    );
}
