//! fakellm: an offline stand-in for the Anthropic Messages and OpenAI Chat Completions APIs,
//! speaking their real wire formats over HTTP/1.1 on loopback, for damascus's integration
//! tests and for `make run` without a key.
//!
//! Routes: `POST /v1/messages` (Anthropic: needs `x-api-key` and `anthropic-version`) and
//! `POST /v1/chat/completions` (OpenAI: needs `Authorization: Bearer <key>`). Both are
//! validated like the real APIs for the fields a client sends, and every request, refused or
//! not, is recorded.
//!
//! The answer depends on the damascus phase asking, read from the system text (Anthropic's
//! top-level `system`, OpenAI's `system`/`developer` messages):
//!
//! * contains `VERDICT:` → a review whose last line is `VERDICT: APPROVE`
//!   (or `VERDICT: REJECT` under [`Behavior::Reject`], with [`REJECT_REASONS`] above it);
//! * else contains `unified diff` (any case) → a sentence and a fenced unified diff
//!   ([`good_diff`]; prose only under [`Behavior::NoDiff`]);
//! * else → a six-section Markdown spec ([`good_spec`], varied by [`spec_for`]).
//!
//! The [`Behavior`] is the server default unless the message text carries a marker such as
//! `[fakellm:truncated]`. A behaviour aimed at another phase answers like `Good`.
//!
//! The rest simulate a misbehaving API in any phase, so a client's error handling can be
//! tested over real HTTP (spellings as in `--behavior` and markers):
//!
//! * `slow=<millis>`: waits, then answers like `good`;
//! * `status=<code>`: that status with the format's error body; 429, 503 and 529 carry
//!   `retry-after: 1`, as the real APIs do when rate-limiting or overloaded;
//! * `flaky=<code>:<n>`: the first n requests with the same last user message text get
//!   `status=<code>`'s answer, later ones with that text answer like `good`;
//! * `garbage`: a 200 with a JSON content type and a body that is not JSON;
//! * `wrong-shape`: a 200 with JSON that is not a message;
//! * `huge=<MiB>`: a 200 message whose text is that many MiB (1-200), streamed, so a client's
//!   size cap is hit mid-body;
//! * `not-utf8`: a 200 message whose text holds the bytes 0xff 0xfe;
//! * `empty-content`: a 200 message with no text (Anthropic `"content": []`, OpenAI content `""`);
//! * `odd-block`: a 200 message whose only content is a tool call;
//! * `hang`: reads the request and never answers;
//! * `endless`: a 200 head with a large content-length, then a byte every 200 ms, never
//!   finishing, so only the client's timeout ends it;
//! * `reset`: reads the request and closes the connection;
//! * `cooldown=<secs>`: the first request with a given last user message text gets 429 with
//!   `retry-after: <secs>` (1-60) and the rate-limit error body; later ones answer like `good`;
//! * `spend-limit`: every request gets 429 naming `enforced_spend_limit_reached` (OpenAI:
//!   `insufficient_quota`) and no `retry-after`, a cap that waiting does not lift.
//!
//! [`FakeLlm::set_rate_limits`] enforces provider rate limits ([`RateLimits`]) like the real
//! APIs: token buckets for requests, input tokens and output tokens per minute, shared by all
//! connections. A request the buckets cannot cover gets a 429 with `retry-after` and takes
//! nothing; an answered one reports what is left in the format's `*-remaining` headers.
//!
//! Connections are kept alive between answered requests, as the real APIs do, unless the client sends
//! `connection: close`; an error after which the request bytes may be unread, a hang or a reset closes it.
//!
//! ```no_run
//! use fakellm::{Behavior, FakeLlm};
//! let llm = FakeLlm::start(Behavior::Good).unwrap();
//! let base_url = llm.url(); // point the client here
//! llm.set_behavior(Behavior::Status(429));
//! assert_eq!(llm.request_count(), 0);
//! llm.shutdown();
//! ```

mod anthropic;
mod behavior;
mod http;
mod openai;
mod phase;
mod ratelimit;
mod server;
mod spec;
mod wire;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use behavior::Behavior;
pub use phase::{REJECT_REASONS, good_diff, good_review};
pub use ratelimit::RateLimits;
pub use spec::{SECTIONS, good_spec, spec_for};

/// One request as the server received it, kept even when it was rejected.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent, including any query string.
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `None` if it was not JSON.
    pub body: Option<serde_json::Value>,
    /// The body as text (lossily decoded if it was not UTF-8).
    pub raw_body: String,
    /// Which TCP connection it came on (numbered from 1 in accept order): requests sharing a number
    /// reused a kept-alive connection.
    pub connection: u64,
    /// When its head had been read, so a test can tell that no request arrived during a
    /// window (say, while a client should have been honouring `retry-after`).
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake server; dropping it shuts it down.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FakeLlm {
    /// Starts a server on an ephemeral loopback port.
    pub fn start(default: Behavior) -> io::Result<FakeLlm> {
        Self::start_on("127.0.0.1:0", default)
    }

    /// Starts a server on `addr` (e.g. `"127.0.0.1:8787"`; port 0 picks a free one).
    pub fn start_on(addr: &str, default: Behavior) -> io::Result<FakeLlm> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(default));
        let accept_thread = server::spawn_acceptor(listener, Arc::clone(&shared))?;
        Ok(FakeLlm {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address clients should connect to; a wildcard bind is reported as loopback,
    /// since "connect to 0.0.0.0" is not something to hand a client.
    pub fn addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The default behaviour for requests without a marker.
    pub fn behavior(&self) -> Behavior {
        self.shared.behavior()
    }

    /// Changes the default for requests received from now on.
    pub fn set_behavior(&self, b: Behavior) {
        self.shared.set_behavior(b);
    }

    /// When on, one line per request (`POST /v1/messages -> 200 good`) goes to stderr.
    /// Answered requests also name the phase: `POST /v1/chat/completions -> 200 reject (review)`.
    pub fn set_logging(&self, on: bool) {
        self.shared.set_logging(on);
    }

    /// Every request received so far, in order, including rejected ones.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    pub fn request_count(&self) -> usize {
        self.shared.request_count()
    }

    /// Forgets the recorded requests and resets [`FakeLlm::rate_limited_count`].
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }

    /// Enforces provider rate limits from now on (`None` lifts them), every bucket starting
    /// full; also resets [`FakeLlm::rate_limited_count`].
    ///
    /// A well-formed chat request needs one request, its input tokens (the estimate its usage
    /// reports) and its output cap (`max_tokens`, or `max_completion_tokens`; 0 if absent),
    /// each at most its bucket's capacity. If every limited bucket has enough it takes it all,
    /// and once the answer is built the part of the cap its usage did not report goes back,
    /// as Anthropic corrects its output estimate. If not, it takes nothing and gets 429 in the
    /// format's rate-limit envelope with `retry-after` in whole seconds (at least 1). A 200
    /// answered under limits carries what is left in the limited dimensions, after this
    /// request's debit and refund: `anthropic-ratelimit-{requests,input-tokens,output-tokens}-remaining`,
    /// or `x-ratelimit-remaining-requests` and `x-ratelimit-remaining-tokens` (input + output).
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        self.shared.set_rate_limits(limits);
    }

    /// How many 429s the rate limits (not a behaviour) have sent since they were set or the
    /// requests were cleared.
    pub fn rate_limited_count(&self) -> u64 {
        self.shared.rate_limited_count()
    }

    /// Stops accepting, wakes Slow/Hang/Endless handlers, closes open connections and joins
    /// the accept thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.begin_stop();
        // accept() has no timeout; a throwaway connection is the portable way to wake it.
        let woke = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).is_ok();
        if woke {
            let _ = accept_thread.join();
        }
        // Without the wake-up, joining could block forever; the thread exits on its next
        // accept instead.
        self.shared.close_all_connections();
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop();
    }
}
