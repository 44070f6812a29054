//! The running server: shared state, the accept loop, and one handler thread per connection (kept alive between requests).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::RecordedRequest;
use crate::behavior::{Behavior, find_marker};
use crate::http::{self, Head, ReadError, Rejection, Response};
use crate::phase::{self, Phase};
use crate::ratelimit::{Admission, Demand, Grant, Limiter, RateLimits, Remaining};
use crate::spec;
use crate::wire::{self, ChatRequest, Format};

/// Answers to requests whose format cannot be told (an unknown path, or no path at all)
/// use the format fakellm spoke first.
const FALLBACK_FORMAT: Format = Format::Anthropic;

/// Long enough for any honest client, short enough that a stuck one frees its thread.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a hanging handler checks whether its client has given up.
const HANG_POLL: Duration = Duration::from_millis(200);

const MIB: u64 = 1024 * 1024;

/// The text of a `huge` answer, repeated: ASCII that JSON leaves unescaped, and 16 bytes long so
/// a whole number of MiB is a whole number of repeats.
const FILLER: &[u8; 16] = b"fakellm filler. ";

/// How much of a `huge` answer is written at a time: enough to keep loopback busy, little
/// enough that even `huge=200` costs no memory to speak of.
const FILLER_CHUNK: usize = 64 * 1024;

/// The text of a `not-utf8` answer: 0xff and 0xfe can appear nowhere in UTF-8.
const NOT_UTF8_TEXT: &[u8] = b"Invalid bytes follow: \xff\xfe (simulated by fakellm)";

/// The content-length an `endless` answer announces: under any sensible client's size cap, so
/// only the client's timeout ends the wait, and at one byte a tick about 58 hours of sending.
const ENDLESS_LENGTH: u64 = MIB;

/// How often an `endless` answer sends its next byte.
const ENDLESS_TICK: Duration = Duration::from_millis(200);

/// A panicking handler must not take the whole fake down with poisoned locks; the data
/// behind every lock here stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared between the owner, the accept thread and connection handlers.
pub(crate) struct Shared {
    default: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// The flag lives under a mutex (not an atomic) so Slow/Hang can wait on the condvar
    /// without missing the wake-up.
    stopping: Mutex<bool>,
    stop_signal: Condvar,
    /// Clones of live sockets, so shutdown can unblock handlers stuck in reads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    next_request: AtomicU64,
    next_message: AtomicU64,
    logging: AtomicBool,
    /// For `flaky`: how many requests with each last user message text have been failed so far.
    /// Keyed by text, not connection, because a retrying client resends the same prompt, often
    /// on a fresh connection.
    flaky_failures: Mutex<HashMap<String, u32>>,
    /// For `cooldown`: the last user message texts already refused once, keyed like
    /// `flaky_failures` and apart from it, so the two never spend each other's counts.
    cooled_down: Mutex<HashSet<String>>,
    /// The provider rate limits in force; one lock, so a check and its debit are one step
    /// for every connection.
    limiter: Mutex<Limiter>,
    /// 429s sent by the limiter (not by behaviours) since the limits were set or the requests cleared.
    rate_limited: AtomicU64,
}

impl Shared {
    pub(crate) fn new(default: Behavior) -> Self {
        Shared {
            default: Mutex::new(default),
            requests: Mutex::new(Vec::new()),
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            logging: AtomicBool::new(false),
            flaky_failures: Mutex::new(HashMap::new()),
            cooled_down: Mutex::new(HashSet::new()),
            limiter: Mutex::new(Limiter::default()),
            rate_limited: AtomicU64::new(0),
        }
    }

    pub(crate) fn behavior(&self) -> Behavior {
        lock(&self.default).clone()
    }

    pub(crate) fn set_behavior(&self, b: Behavior) {
        *lock(&self.default) = b;
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub(crate) fn request_count(&self) -> usize {
        lock(&self.requests).len()
    }

    pub(crate) fn clear_requests(&self) {
        lock(&self.requests).clear();
        self.rate_limited.store(0, Ordering::Relaxed);
    }

    /// Installs `limits` (or none) with full buckets and a fresh refusal count.
    pub(crate) fn set_rate_limits(&self, limits: Option<RateLimits>) {
        let mut limiter = lock(&self.limiter);
        limiter.set(limits, Instant::now());
        self.rate_limited.store(0, Ordering::Relaxed);
    }

    pub(crate) fn rate_limited_count(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    fn admit(&self, demand: Demand) -> Admission {
        let mut limiter = lock(&self.limiter);
        // Read under the lock, so the buckets see time only move forward.
        let admission = limiter.admit(demand, Instant::now());
        if matches!(admission, Admission::Refused(_)) {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        admission
    }

    fn settle(&self, grant: Grant, output_tokens: u64) -> Option<Remaining> {
        let mut limiter = lock(&self.limiter);
        limiter.settle(grant, output_tokens, Instant::now())
    }

    pub(crate) fn set_logging(&self, on: bool) {
        self.logging.store(on, Ordering::Relaxed);
    }

    fn log(&self, line: &str) {
        if self.logging.load(Ordering::Relaxed) {
            eprintln!("{line}");
        }
    }

    fn next_message_id(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a `flaky` request with this text fails, counting it if so. Counts never reset:
    /// a test that wants a fresh count sends a different text or starts a fresh server.
    fn flaky_fails(&self, text: &str, times: u32) -> bool {
        let mut failures = lock(&self.flaky_failures);
        let failed = failures.entry(text.to_string()).or_insert(0);
        if *failed < times {
            *failed += 1;
            true
        } else {
            false
        }
    }

    /// Whether a `cooldown` request with this text is the first, remembering it if so. Like
    /// flaky counts, this never resets.
    fn cooldown_starts(&self, text: &str) -> bool {
        lock(&self.cooled_down).insert(text.to_string())
    }

    fn is_stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    pub(crate) fn begin_stop(&self) {
        *lock(&self.stopping) = true;
        self.stop_signal.notify_all();
    }

    /// Sleeps up to `limit`, returning early with `true` if the server is stopping.
    fn wait_for_stop(&self, limit: Duration) -> bool {
        let deadline = Instant::now().checked_add(limit);
        let mut stopped = lock(&self.stopping);
        while !*stopped {
            match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    stopped = self
                        .stop_signal
                        .wait_timeout(stopped, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    stopped = self
                        .stop_signal
                        .wait(stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        true
    }

    /// Registers a live connection unless the server is stopping. Checked under the
    /// registry lock so shutdown's sweep cannot miss a connection accepted concurrently.
    fn register(&self, id: u64, stream: TcpStream) -> bool {
        let mut conns = lock(&self.conns);
        if self.is_stopping() {
            return false;
        }
        conns.insert(id, stream);
        true
    }

    fn unregister(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Unblocks every handler still reading or hanging, so their threads end promptly.
    pub(crate) fn close_all_connections(&self) {
        for (_, stream) in lock(&self.conns).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("fakellm-accept".into())
        .spawn(move || accept_loop(&listener, &shared))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        // Shutdown wakes this loop by connecting to it; that connection is just dropped.
        if shared.is_stopping() {
            return;
        }
        match accepted {
            Ok((stream, _)) => start_connection(shared, stream),
            // Transient (EMFILE, ECONNABORTED): back off rather than spin.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Unregisters a connection however its handler ends, including by panic.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    if !shared.register(id, clone) {
        return;
    }
    let registration = Registration {
        shared: Arc::clone(shared),
        id,
    };
    // If the spawn fails the closure is dropped, which drops the registration too.
    let _ = thread::Builder::new()
        .name("fakellm-conn".into())
        .spawn(move || {
            let registration = registration;
            handle_connection(&registration.shared, stream, id);
        });
}

/// What to do with a request once it has been read and recorded.
enum Reply {
    Send(Response),
    /// An early refusal with request bytes possibly still unread.
    SendAndLinger(Response),
    SlowThenSend(Duration, Response),
    /// A 200 too large to hold: the response's body, then `filler` bytes of [`FILLER`], then
    /// `suffix`.
    Huge {
        start: Response,
        filler: u64,
        suffix: Vec<u8>,
    },
    /// The response's body, then a byte a tick, under a content-length never reached.
    Endless(Response),
    Hang,
    Reset,
}

/// Serves requests on one connection until it is closed: kept alive after each answered request (as the
/// real APIs do) unless the client asked for `connection: close`.
fn handle_connection(shared: &Shared, mut stream: TcpStream, conn_id: u64) {
    while serve_one(shared, &mut stream, conn_id) {}
}

/// Reads and answers one request; true when the connection stays open for another.
fn serve_one(shared: &Shared, stream: &mut TcpStream, conn_id: u64) -> bool {
    let head = match http::read_head(stream) {
        Ok(head) => head,
        Err(ReadError::Io) => return false,
        Err(ReadError::Reject(rej)) => {
            shared.log(&format!(
                "(malformed request) -> {} {}",
                rej.status,
                FALLBACK_FORMAT.error_type(rej.status)
            ));
            let request_no = shared.next_request.fetch_add(1, Ordering::Relaxed);
            let resp = with_request_id(FALLBACK_FORMAT.reject(&rej), request_no);
            if http::write_response(stream, &resp, false).is_ok() {
                http::linger_close(stream);
            }
            return false;
        }
    };
    let received_at = Instant::now();
    let body = match http::read_body(stream, &head) {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::Io) => return false,
        Err(ReadError::Reject(rej)) => Err(rej),
    };
    let raw = body.as_deref().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let request_no = shared.next_request.fetch_add(1, Ordering::Relaxed);
    lock(&shared.requests).push(RecordedRequest {
        method: head.method.clone(),
        path: head.target.clone(),
        headers: head.headers.clone(),
        body: parsed.clone(),
        raw_body: String::from_utf8_lossy(raw).into_owned(),
        connection: conn_id,
        received_at,
    });
    let keep_alive = !head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));

    let (reply, label) = match body {
        Err(rej) => {
            let format = Format::for_path(head.path()).unwrap_or(FALLBACK_FORMAT);
            (
                Reply::SendAndLinger(format.reject(&rej)),
                format.error_type(rej.status).to_string(),
            )
        }
        Ok(_) => route(shared, &head, parsed.as_ref()),
    };
    let outcome = match &reply {
        Reply::Send(r)
        | Reply::SendAndLinger(r)
        | Reply::SlowThenSend(_, r)
        | Reply::Huge { start: r, .. }
        | Reply::Endless(r) => r.status.to_string(),
        Reply::Hang => "no answer".to_string(),
        Reply::Reset => "closed".to_string(),
    };
    shared.log(&format!(
        "{} {} -> {outcome} {label}",
        head.method, head.target
    ));

    match reply {
        Reply::Send(resp) => {
            http::write_response(stream, &with_request_id(resp, request_no), keep_alive).is_ok()
                && keep_alive
        }
        Reply::SendAndLinger(resp) => {
            if http::write_response(stream, &with_request_id(resp, request_no), false).is_ok() {
                http::linger_close(stream);
            }
            false
        }
        Reply::SlowThenSend(delay, resp) => {
            // On shutdown the client gets a closed connection, like a dying real server.
            !shared.wait_for_stop(delay)
                && http::write_response(stream, &with_request_id(resp, request_no), keep_alive)
                    .is_ok()
                && keep_alive
        }
        Reply::Huge {
            start,
            filler,
            suffix,
        } => {
            write_huge(
                stream,
                &with_request_id(start, request_no),
                filler,
                &suffix,
                keep_alive,
            )
            .is_ok()
                && keep_alive
        }
        Reply::Endless(start) => {
            trickle(shared, stream, &with_request_id(start, request_no));
            false
        }
        Reply::Hang => {
            hang(shared, stream);
            false
        }
        Reply::Reset => false,
    }
}

fn with_request_id(mut resp: Response, request_no: u64) -> Response {
    resp.headers
        .push(("request-id", format!("req_fake_{request_no:016}")));
    resp
}

fn reject(format: Format, rej: &Rejection) -> (Reply, String) {
    (
        Reply::Send(format.reject(rej)),
        format.error_type(rej.status).to_string(),
    )
}

/// Checks the request in the same order as the real APIs (route, method, headers, body),
/// then answers according to the marker or the server default.
fn route(shared: &Shared, head: &Head, body: Option<&Value>) -> (Reply, String) {
    let Some(format) = Format::for_path(head.path()) else {
        return reject(
            FALLBACK_FORMAT,
            &Rejection::new(404, format!("Not found: {}", head.path())),
        );
    };
    if head.method != "POST" {
        return reject(
            format,
            &Rejection::new(405, format!("Method {} not allowed; use POST", head.method)),
        );
    }
    if let Err(rej) = format.check_headers(head) {
        return reject(format, &rej);
    }
    let Some(body) = body else {
        return reject(format, &Rejection::bad("request body is not valid JSON"));
    };
    let request = match format.parse(body) {
        Ok(r) => r,
        Err(message) => return reject(format, &Rejection::bad(message)),
    };
    let behavior = match find_marker(&request.messages_text) {
        None => shared.behavior(),
        Some(Ok(b)) => b,
        Some(Err(message)) => return reject(format, &Rejection::bad(message)),
    };
    let phase = Phase::detect(&request.system_text);
    let demand = Demand {
        input_tokens: wire::input_tokens(&request),
        max_tokens: request.max_tokens.as_ref().map_or(0, |cap| cap.value),
    };
    let grant = match shared.admit(demand) {
        Admission::Unlimited => None,
        Admission::Granted(grant) => Some(grant),
        Admission::Refused(refusal) => {
            let message = format!(
                "This request would exceed your rate limit of {}; try again in {} s \
                 (simulated by fakellm)",
                refusal.lacking.join(" and "),
                refusal.retry_after_secs
            );
            return (
                Reply::Send(format.rate_limited(&message, refusal.retry_after_secs)),
                format!("rate-limited ({})", phase.name()),
            );
        }
    };
    let label = format!("{behavior} ({})", phase.name());
    let (mut reply, output_tokens) = answer(shared, format, &request, phase, &behavior);
    if let Some(grant) = grant
        && let Some(left) = shared.settle(grant, output_tokens)
    {
        add_success_headers(&mut reply, format.rate_limit_headers(&left));
    }
    (reply, label)
}

/// Adds `headers` to the reply if it is a 200 with a head to carry them; errors, silence and
/// resets report no remaining figures.
fn add_success_headers(reply: &mut Reply, headers: Vec<(&'static str, String)>) {
    match reply {
        Reply::Send(resp)
        | Reply::SlowThenSend(_, resp)
        | Reply::Huge { start: resp, .. }
        | Reply::Endless(resp)
            if resp.status == 200 =>
        {
            resp.headers.extend(headers);
        }
        _ => {}
    }
}

/// The reply for a valid request, and the output tokens its usage reports (0 for an answer
/// without usage: an error, garbage, silence); only the envelope depends on the format.
fn answer(
    shared: &Shared,
    format: Format,
    request: &ChatRequest,
    phase: Phase,
    behavior: &Behavior,
) -> (Reply, u64) {
    match behavior {
        Behavior::Status(code) => (
            Reply::Send(format.error(*code, wire::simulated_message(*code))),
            0,
        ),
        Behavior::Garbage => (
            Reply::Send(wire::json_response(200, "<html>oops".to_string())),
            0,
        ),
        Behavior::WrongShape => (
            Reply::Send(wire::json_response(200, r#"{"hello":"world"}"#.to_string())),
            0,
        ),
        Behavior::Flaky { status, times } => {
            if shared.flaky_fails(&request.last_user_text, *times) {
                (
                    Reply::Send(format.error(*status, wire::simulated_message(*status))),
                    0,
                )
            } else {
                send(message(shared, format, request, phase, &Behavior::Good))
            }
        }
        Behavior::Cooldown(secs) => {
            if shared.cooldown_starts(&request.last_user_text) {
                (
                    Reply::Send(format.rate_limited(wire::simulated_message(429), *secs)),
                    0,
                )
            } else {
                send(message(shared, format, request, phase, &Behavior::Good))
            }
        }
        Behavior::SpendLimit => (Reply::Send(format.spend_limited()), 0),
        Behavior::Huge(mib) => {
            let filler = u64::from(*mib) * MIB;
            let text_chars = usize::try_from(filler).unwrap_or(usize::MAX);
            let (start, suffix) =
                format.success_around_text(shared.next_message_id(), request, text_chars);
            (
                Reply::Huge {
                    start: wire::json_response(200, start),
                    filler,
                    suffix,
                },
                wire::rough_tokens(text_chars),
            )
        }
        Behavior::NotUtf8 => {
            let (mut body, suffix) =
                format.success_around_text(shared.next_message_id(), request, NOT_UTF8_TEXT.len());
            body.extend_from_slice(NOT_UTF8_TEXT);
            body.extend_from_slice(&suffix);
            (
                Reply::Send(wire::json_response(200, body)),
                wire::rough_tokens(NOT_UTF8_TEXT.len()),
            )
        }
        // Both bodies report the estimate for no text at all.
        Behavior::EmptyContent => (
            Reply::Send(format.empty(shared.next_message_id(), request)),
            wire::rough_tokens(0),
        ),
        Behavior::OddBlock => (
            Reply::Send(format.odd_block(shared.next_message_id(), request)),
            wire::rough_tokens(0),
        ),
        Behavior::Endless => {
            let text_chars = usize::try_from(ENDLESS_LENGTH).unwrap_or(usize::MAX);
            let (start, _) =
                format.success_around_text(shared.next_message_id(), request, text_chars);
            (
                Reply::Endless(wire::json_response(200, start)),
                wire::rough_tokens(text_chars),
            )
        }
        Behavior::Cached { write, read } => {
            let (mut resp, output_tokens) =
                message(shared, format, request, phase, &Behavior::Good);
            format.add_cache_usage(&mut resp, *write, *read);
            (Reply::Send(resp), output_tokens)
        }
        Behavior::Hang => (Reply::Hang, 0),
        Behavior::Reset => (Reply::Reset, 0),
        Behavior::Slow(delay) => {
            let (resp, output_tokens) = message(shared, format, request, phase, &Behavior::Good);
            (Reply::SlowThenSend(*delay, resp), output_tokens)
        }
        Behavior::Good
        | Behavior::Truncated
        | Behavior::MissingSection(_)
        | Behavior::EmptySection(_)
        | Behavior::FencedTestCommand
        | Behavior::Reject
        | Behavior::NoDiff => send(message(shared, format, request, phase, behavior)),
    }
}

fn send((resp, output_tokens): (Response, u64)) -> (Reply, u64) {
    (Reply::Send(resp), output_tokens)
}

/// A 200 message for the phase, and the output tokens its usage reports.
fn message(
    shared: &Shared,
    format: Format,
    request: &ChatRequest,
    phase: Phase,
    behavior: &Behavior,
) -> (Response, u64) {
    let feature = spec::feature_name(&request.last_user_text);
    let answer = phase::answer(phase, behavior, &feature);
    let output_tokens = wire::output_tokens(request, &answer);
    (
        format.success(shared.next_message_id(), request, &answer),
        output_tokens,
    )
}

/// Holds the connection open without answering until shutdown, but lets the thread go if
/// the client gives up first, so a long-running binary does not collect dead threads.
fn hang(shared: &Shared, stream: &mut TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        shared.wait_for_stop(Duration::MAX);
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        if shared.wait_for_stop(HANG_POLL) {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes a `huge` answer a chunk at a time under its true content-length. A client that stops
/// at its size cap closes the connection, and the next write fails: that ends the answer
/// quietly, as it would on a real server.
fn write_huge(
    stream: &mut TcpStream,
    start: &Response,
    filler: u64,
    suffix: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let framing = u64::try_from(start.body.len() + suffix.len()).unwrap_or(u64::MAX);
    let mut out = http::head_bytes(start, framing.saturating_add(filler), keep_alive);
    out.extend_from_slice(&start.body);
    stream.write_all(&out)?;
    let chunk = FILLER.repeat(FILLER_CHUNK / FILLER.len());
    let mut left = filler;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.write_all(suffix)?;
    stream.flush()
}

/// Sends the head and the start of an `endless` answer, then one more byte a tick, until the
/// client disconnects (a write fails) or the server stops. The answer is never completed, so
/// the connection is not reused.
fn trickle(shared: &Shared, stream: &mut TcpStream, start: &Response) {
    // Each byte should leave as it is written, not wait for Nagle to batch it.
    let _ = stream.set_nodelay(true);
    let mut out = http::head_bytes(start, ENDLESS_LENGTH, false);
    out.extend_from_slice(&start.body);
    if stream
        .write_all(&out)
        .and_then(|()| stream.flush())
        .is_err()
    {
        return;
    }
    let mut sent = u64::try_from(start.body.len()).unwrap_or(ENDLESS_LENGTH);
    // Stopping one byte short keeps the body unfinished even for a client patient enough.
    while sent + 1 < ENDLESS_LENGTH {
        if shared.wait_for_stop(ENDLESS_TICK) || stream.write_all(b" ").is_err() {
            return;
        }
        sent += 1;
    }
    hang(shared, stream);
}
