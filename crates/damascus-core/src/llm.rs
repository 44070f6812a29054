//! The LLM client: each call runs on an HTTP thread that never touches Postgres, so the caller can wait on its latch and honour signals; threads and kept-alive connections are reused per base URL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use crate::backoff;
use crate::wire::{CallError, Codec, Completion, HttpRequest, LlmConfig, Prompt};

/// Name resolution and TCP connect get their own bound, so a call stuck there ends even with a long
/// overall timeout (the call's own timeout still applies when it is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The finished call as the verdict transaction needs it.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub result: Result<Completion, CallError>,
    pub elapsed: Duration,
    /// How many times the request was sent again after a retryable failure.
    pub retries: u32,
    /// The remaining figures of the provider's rate-limit headers (`anthropic-ratelimit-*-remaining`,
    /// `x-ratelimit-remaining-*`) on the last response, by header name; `None` when it sent none.
    pub ratelimit: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What every caller of one provider shares, across the cluster: its rate limits, a cooldown a 429 with
/// `retry-after` starts, and being parked after it refused for a spend limit. Implemented over shared memory by
/// the extension; called from the HTTP threads, so an implementation touches nothing but atomics.
pub trait ProviderGate: Send + Sync {
    /// Counts a request of about `input_tokens` in and at most `output_tokens` out against the limits and
    /// says whether it may go now; when it may not, nothing is counted.
    fn admit(&self, input_tokens: u64, output_tokens: u64) -> Admission;
    /// The provider asked everyone to wait until `until`.
    fn cool_down(&self, until: SystemTime);
    /// The provider refused for a spend limit: nothing more is sent until an administrator resumes it.
    fn park(&self);
}

/// Whether a request may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Not before this much time has passed.
    Wait(Duration),
    /// Not until an administrator resumes the provider.
    Parked,
}

/// A call counted against a provider's gate, with its estimated tokens.
#[derive(Clone)]
pub struct Metered {
    pub gate: Arc<dyn ProviderGate>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The words with which a provider says a 429 is its spend limit, not its rate limit.
const SPEND_LIMIT_MARK: &str = "enforced_spend_limit_reached";

/// Longest nap while waiting at the gate, so a wait that another caller's progress shortens is noticed.
const GATE_NAP: Duration = Duration::from_millis(200);

/// How one call may go: its time budget (all tries together), how often a retryable failure is tried
/// again within it, and the largest response body read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_response_bytes: u64,
}

impl CallPolicy {
    /// The defaults of `damascus.llm_max_retries` (2) and `damascus.llm_max_response_bytes` (8 MB).
    pub fn new(timeout: Duration) -> CallPolicy {
        CallPolicy {
            timeout,
            max_retries: 2,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// One request for a lane's thread.
struct Job {
    codec: &'static dyn Codec,
    request: HttpRequest,
    policy: CallPolicy,
    metered: Option<Metered>,
    reply: mpsc::Sender<CallOutcome>,
    wake: bool,
}

/// An HTTP thread and its agent. The agent's connection to the base URL stays open between calls
/// (keep-alive: no TCP or TLS handshake per call). One call at a time, so cancelling a call closes only
/// that call's connection; a cancelled lane is retired, since its agent refuses requests afterwards.
struct Lane {
    jobs: mpsc::Sender<Job>,
    /// A clone of the thread's agent (they share one connection pool), kept to cancel its call.
    agent: ureq::Agent,
}

/// The lanes of one base URL that have no call, ready for the next one.
#[derive(Default)]
struct Idle {
    lanes: Vec<Lane>,
}

thread_local! {
    /// One transport per base URL (`scheme://host:port`) for this thread, the worker's main thread: a reload
    /// that changes the URL gets a new one, and calls to the old URL finish on theirs.
    static TRANSPORTS: RefCell<HashMap<String, Rc<RefCell<Idle>>>> = RefCell::new(HashMap::new());
}

/// `scheme://authority` of a URL: what a kept-alive connection can be shared over.
fn base_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(concat!("damascus/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Runs `spawn` with every signal blocked on the calling thread, then restores its mask. A thread inherits
/// the mask of the thread that creates it, so the HTTP thread (and any thread ureq starts from it) is born
/// blocking everything: Postgres' handlers (pgrx's included) must only ever run on the main thread, and a
/// mask set inside the new thread would leave a window in which one could land there. Signals that arrive
/// meanwhile stay pending and are delivered to the main thread when its mask is restored.
fn spawn_with_signals_blocked<T>(spawn: impl FnOnce() -> T) -> T {
    // SAFETY: `all` and `old` are plain C structs for which all-zero bytes are valid values; `all` is
    // filled by sigfillset before use, `old` is written by the first pthread_sigmask and only read by the
    // second. Both calls change only this thread's signal mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    }
}

fn wake_main_thread() {
    // Process-directed SIGUSR1 lands on the only thread that does not block it, the main
    // thread, whose Postgres handler sets its latch; no Postgres API is called from here.
    // SAFETY: getpid and kill take plain integers and have no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGUSR1);
    }
}

/// What one try brought back besides its result.
#[derive(Default)]
struct Sent {
    retry_after: Option<Duration>,
    ratelimit: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The remaining figures of the rate-limit headers, if the response has any.
fn ratelimit_headers(
    headers: &ureq::http::HeaderMap,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let found: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            (n.starts_with("anthropic-ratelimit-") || n.starts_with("x-ratelimit-"))
                && n.contains("remaining")
        })
        .filter_map(|(name, value)| {
            let v = value.to_str().ok()?;
            let v = v
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(v));
            Some((name.as_str().to_string(), v))
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Sends the request once; the `retry-after` and rate-limit headers the server sent come back with the
/// result.
fn send_once(
    agent: &ureq::Agent,
    codec: &dyn Codec,
    req: &HttpRequest,
    timeout: Duration,
    max_response_bytes: u64,
) -> (Result<Completion, CallError>, Sent) {
    let mut builder = agent
        .post(&req.url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut resp = match builder.send(req.body.as_bytes()) {
        Ok(r) => r,
        Err(e) => return (Err(CallError::Transport(e.to_string())), Sent::default()),
    };
    let status = resp.status().as_u16();
    let sent = Sent {
        retry_after: resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| backoff::parse_retry_after(v, SystemTime::now())),
        ratelimit: ratelimit_headers(resp.headers()),
    };
    // Read as bytes: an oversized or non-UTF-8 body is a bad answer, not a lost connection. The cap stops
    // reading at the limit instead of taking in the rest.
    let bytes = match resp
        .body_mut()
        .with_config()
        .limit(max_response_bytes)
        .read_to_vec()
    {
        Ok(b) => b,
        Err(ureq::Error::BodyExceedsLimit(limit)) => {
            let message = format!(
                "the response is larger than damascus.llm_max_response_bytes ({limit} bytes)"
            );
            return (Err(CallError::Malformed { status, message }), sent);
        }
        Err(e) => {
            let message = format!("reading the response (HTTP {status}): {e}");
            return (Err(CallError::Transport(message)), sent);
        }
    };
    let result = match String::from_utf8(bytes) {
        Ok(body) => codec.parse(status, &body),
        Err(e) if (200..300).contains(&status) => Err(CallError::Malformed {
            status,
            message: format!("the response body is not UTF-8 ({e})"),
        }),
        Err(e) => codec.parse(status, &String::from_utf8_lossy(e.as_bytes())),
    };
    (result, sent)
}

/// Waits at the provider's gate until the request may go (it is then counted), or says why it may not
/// before `deadline`.
fn pass_gate(m: &Metered, deadline: Instant) -> Result<(), CallError> {
    loop {
        match m.gate.admit(m.input_tokens, m.output_tokens) {
            Admission::Go => return Ok(()),
            Admission::Parked => {
                return Err(CallError::Transport(
                    "not sent: the LLM provider is parked after it refused for its spend limit \
                     (SELECT damascus_resume_provider() once it is raised)"
                        .into(),
                ));
            }
            Admission::Wait(wait) => {
                if Instant::now() + wait >= deadline {
                    return Err(CallError::Transport(format!(
                        "not sent: the provider's rate limit or cooldown needs {} ms more than the call's \
                         time left",
                        wait.as_millis()
                    )));
                }
                std::thread::sleep(wait.min(GATE_NAP));
            }
        }
    }
}

/// Sends the request, and again after a retryable failure (no answer, 408, 409, 425, 429, 5xx) up to
/// `max_retries` times, waiting an exponential, jittered delay or what `retry-after` asks for, all within
/// the call's one time budget. A wait that would overrun the budget is not started.
fn call(agent: &ureq::Agent, job: &Job) -> CallOutcome {
    let started = Instant::now();
    let deadline = started + job.policy.timeout;
    // Jitter only has to differ between workers and calls, not be unpredictable.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
        ^ job.request.body.len() as u64;
    let mut retries = 0;
    loop {
        if let Some(m) = &job.metered
            && let Err(e) = pass_gate(m, deadline)
        {
            return CallOutcome {
                result: Err(e),
                elapsed: started.elapsed(),
                retries,
                ratelimit: None,
            };
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (result, sent) = send_once(
            agent,
            job.codec,
            &job.request,
            remaining.max(Duration::from_millis(1)),
            job.policy.max_response_bytes,
        );
        let retry_after = sent.retry_after;
        let mut spend_limit = false;
        if let (
            Err(CallError::Http {
                status: 429,
                message,
            }),
            Some(m),
        ) = (&result, &job.metered)
        {
            if message.contains(SPEND_LIMIT_MARK) {
                // Not a rate limit: every call would get the same until someone raises the limit.
                m.gate.park();
                spend_limit = true;
            } else if let Some(wait) = retry_after {
                // The provider speaks for all its callers: every worker holds off, not only this call.
                m.gate.cool_down(SystemTime::now() + wait);
            }
        }
        let again = match &result {
            Err(e) if e.retryable() && !spend_limit && retries < job.policy.max_retries => {
                let wait = backoff::in_call_retry_delay(retries, seed, retry_after);
                (Instant::now() + wait < deadline).then_some(wait)
            }
            _ => None,
        };
        match again {
            Some(wait) => {
                std::thread::sleep(wait);
                retries += 1;
            }
            None => {
                return CallOutcome {
                    result,
                    elapsed: started.elapsed(),
                    retries,
                    ratelimit: sent.ratelimit,
                };
            }
        }
    }
}

impl Lane {
    fn spawn() -> std::io::Result<Lane> {
        let agent = agent();
        let thread_agent = agent.clone();
        let (jobs, inbox) = mpsc::channel::<Job>();
        spawn_with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("damascus-llm".into())
                .spawn(move || {
                    // Ends when the lane is dropped (its sender with it), after the call it is on.
                    for job in inbox {
                        let _ = job.reply.send(call(&thread_agent, &job));
                        if job.wake {
                            wake_main_thread();
                        }
                    }
                })
        })?;
        Ok(Lane { jobs, agent })
    }
}

/// A call running on a lane of its base URL's transport.
pub struct InFlight {
    rx: mpsc::Receiver<CallOutcome>,
    lane: Option<Lane>,
    /// Where the lane goes back when the call is over (gone if the transport was dropped meanwhile).
    home: Weak<RefCell<Idle>>,
}

impl InFlight {
    /// Starts the call. Settings were read by the caller on the main thread.
    pub fn start(
        codec: &'static dyn Codec,
        cfg: &LlmConfig,
        prompt: &Prompt,
        wake: bool,
    ) -> InFlight {
        InFlight::send(
            codec,
            codec.build(cfg, prompt),
            CallPolicy::new(cfg.timeout),
            wake,
        )
    }

    /// Sends a request already built by `codec` (so a caller can hash or log exactly what goes out
    /// without building it twice), on an idle lane of the transport for its base URL, or a new lane when
    /// all are busy.
    pub fn send(
        codec: &'static dyn Codec,
        request: HttpRequest,
        policy: CallPolicy,
        wake: bool,
    ) -> InFlight {
        InFlight::send_metered(codec, request, policy, None, wake)
    }

    /// Like `send`, counted against a provider's gate: the HTTP thread waits there (the caller's claim and
    /// heartbeats go on meanwhile) until the request may go, within the call's time budget.
    pub fn send_metered(
        codec: &'static dyn Codec,
        request: HttpRequest,
        policy: CallPolicy,
        metered: Option<Metered>,
        wake: bool,
    ) -> InFlight {
        let home = TRANSPORTS.with(|t| {
            Rc::clone(
                t.borrow_mut()
                    .entry(base_of(&request.url).to_string())
                    .or_default(),
            )
        });
        let (reply, rx) = mpsc::channel();
        let mut job = Job {
            codec,
            request,
            policy,
            metered,
            reply,
            wake,
        };
        // An idle lane whose thread has ended (it cannot, short of a panic) refuses the job; try the next.
        let spawn_error = loop {
            let lane = match home.borrow_mut().lanes.pop() {
                Some(lane) => lane,
                None => match Lane::spawn() {
                    Ok(lane) => lane,
                    Err(e) => break e,
                },
            };
            match lane.jobs.send(job) {
                Ok(()) => {
                    return InFlight {
                        rx,
                        lane: Some(lane),
                        home: Rc::downgrade(&home),
                    };
                }
                Err(mpsc::SendError(back)) => job = back,
            }
        };
        // No thread: report it as a transport failure so the ticket is retried, not lost.
        let _ = job.reply.send(CallOutcome {
            result: Err(CallError::Transport(format!(
                "could not start the HTTP thread: {spawn_error}"
            ))),
            elapsed: Duration::ZERO,
            retries: 0,
            ratelimit: None,
        });
        InFlight {
            rx,
            lane: None,
            home: Weak::new(),
        }
    }

    /// The outcome, once the call has finished; its lane is then free for the next call.
    pub fn poll(&mut self) -> Option<CallOutcome> {
        match self.rx.try_recv() {
            Ok(outcome) => {
                if let (Some(lane), Some(home)) = (self.lane.take(), self.home.upgrade()) {
                    home.borrow_mut().lanes.push(lane);
                }
                Some(outcome)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.lane.take();
                Some(CallOutcome {
                    result: Err(CallError::Transport(
                        "the HTTP thread ended without an answer".into(),
                    )),
                    elapsed: Duration::ZERO,
                    retries: 0,
                    ratelimit: None,
                })
            }
        }
    }

    /// Interrupts the call (closes its connection) and returns at once.
    pub fn cancel(mut self) {
        self.shutdown();
    }

    /// Closes the call's connection and retires its lane, whose thread ends on its own after the call.
    /// Never joins: a thread stuck in name resolution or connect ends only at CONNECT_TIMEOUT, and a worker
    /// stopping many calls must not wait for that. Other calls to the same base URL are untouched.
    fn shutdown(&mut self) {
        if let Some(lane) = self.lane.take() {
            lane.agent.shutdown();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Anthropic, OpenAi, Provider};
    use fakellm::{Behavior, FakeLlm};

    fn cfg(url: String, timeout: Duration) -> LlmConfig {
        LlmConfig {
            base_url: url,
            model: "m".into(),
            api_key: Some("k".into()),
            timeout,
        }
    }

    fn prompt() -> Prompt {
        Prompt {
            system: "s".into(),
            user: "Health endpoint".into(),
            max_tokens: 4000,
        }
    }

    fn wait(mut call: InFlight) -> CallOutcome {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(o) = call.poll() {
                return o;
            }
            assert!(Instant::now() < deadline, "call did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One call through `codec` to a fresh stand-in answering with `behavior`; the server is returned so
    /// a test can read what it received.
    fn round_trip(
        codec: &'static dyn Codec,
        behavior: Behavior,
        timeout: Duration,
    ) -> (FakeLlm, CallOutcome) {
        let server = FakeLlm::start(behavior).unwrap();
        let out = wait(InFlight::start(
            codec,
            &cfg(server.url(), timeout),
            &prompt(),
            false,
        ));
        (server, out)
    }

    #[test]
    fn real_http_round_trip() {
        let (server, out) = round_trip(&Anthropic, Behavior::Good, Duration::from_secs(5));
        let c = out.result.unwrap();
        assert_eq!(crate::spec::validate(&c.text), Ok(()));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].header("x-api-key"), Some("k"));
        assert_eq!(reqs[0].body.as_ref().unwrap()["max_tokens"], 4000);
    }

    /// A gate that says wait until `open`, records cooldowns and parking, and counts what it admitted.
    struct TestGate {
        open: Instant,
        parked: std::sync::atomic::AtomicBool,
        admitted: std::sync::atomic::AtomicU64,
        cooled: std::sync::Mutex<Option<SystemTime>>,
    }

    impl TestGate {
        fn new(open_in: Duration) -> Arc<TestGate> {
            Arc::new(TestGate {
                open: Instant::now() + open_in,
                parked: Default::default(),
                admitted: Default::default(),
                cooled: Default::default(),
            })
        }
    }

    impl ProviderGate for TestGate {
        fn admit(&self, _input: u64, _output: u64) -> Admission {
            use std::sync::atomic::Ordering;
            if self.parked.load(Ordering::SeqCst) {
                return Admission::Parked;
            }
            let now = Instant::now();
            if now < self.open {
                return Admission::Wait(self.open - now);
            }
            self.admitted.fetch_add(1, Ordering::SeqCst);
            Admission::Go
        }
        fn cool_down(&self, until: SystemTime) {
            *self.cooled.lock().unwrap() = Some(until);
        }
        fn park(&self) {
            self.parked.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn metered_call(server: &FakeLlm, gate: &Arc<TestGate>, timeout: Duration) -> CallOutcome {
        let c = cfg(server.url(), timeout);
        wait(InFlight::send_metered(
            &Anthropic,
            Anthropic.build(&c, &prompt()),
            CallPolicy::new(timeout),
            Some(Metered {
                gate: Arc::clone(gate) as Arc<dyn ProviderGate>,
                input_tokens: 10,
                output_tokens: 4000,
            }),
            false,
        ))
    }

    #[test]
    fn a_call_waits_at_its_gate_and_each_try_is_counted() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let gate = TestGate::new(Duration::from_millis(400));
        let started = Instant::now();
        let out = metered_call(&server, &gate, Duration::from_secs(5));
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert!(started.elapsed() >= Duration::from_millis(390));
        assert_eq!(gate.admitted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A wait longer than the call's time budget ends the call unsent, as a transport failure.
        let gate = TestGate::new(Duration::from_secs(60));
        let out = metered_call(&server, &gate, Duration::from_millis(500));
        assert!(
            matches!(out.result, Err(CallError::Transport(_))),
            "{:?}",
            out.result
        );
        assert_eq!(server.request_count(), 1, "nothing sent past the gate");
    }

    #[test]
    fn a_429_with_retry_after_cools_the_whole_provider_down() {
        let server = FakeLlm::start(Behavior::Flaky {
            status: 429,
            times: 1,
        })
        .unwrap();
        let gate = TestGate::new(Duration::ZERO);
        let before = SystemTime::now();
        let out = metered_call(&server, &gate, Duration::from_secs(10));
        assert!(out.result.is_ok(), "{:?}", out.result);
        let until = gate.cooled.lock().unwrap().expect("a cooldown");
        assert!(until >= before + Duration::from_secs(1), "retry-after: 1");
        assert_eq!(
            gate.admitted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the retry passed the gate too"
        );
    }

    #[test]
    fn a_parked_provider_gets_no_request() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let gate = TestGate::new(Duration::ZERO);
        gate.park();
        let out = metered_call(&server, &gate, Duration::from_secs(5));
        match out.result {
            Err(CallError::Transport(m)) => assert!(m.contains("parked"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.request_count(), 0);
    }

    #[test]
    fn refused_connection_is_a_transport_error() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let url = server.url();
        server.shutdown();
        let out = wait(InFlight::start(
            &Anthropic,
            &cfg(url, Duration::from_secs(5)),
            &prompt(),
            false,
        ));
        assert!(
            matches!(out.result, Err(CallError::Transport(_))),
            "{:?}",
            out.result
        );
    }

    #[test]
    fn timeout_is_a_transport_error() {
        let (_server, out) = round_trip(&Anthropic, Behavior::Hang, Duration::from_millis(300));
        assert!(
            matches!(out.result, Err(CallError::Transport(_))),
            "{:?}",
            out.result
        );
        assert!(out.elapsed >= Duration::from_millis(250));
    }

    #[test]
    fn status_errors_keep_their_status() {
        let (_server, out) = round_trip(&Anthropic, Behavior::Status(529), Duration::from_secs(5));
        assert_eq!(out.result.unwrap_err().http_status(), Some(529));
    }

    #[test]
    fn https_is_supported() {
        // A plain-HTTP server behind an https:// URL: the TLS handshake is attempted and fails,
        // which shows TLS is compiled in (without it ureq refuses the scheme outright).
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let url = server.url().replace("http://", "https://");
        let out = wait(InFlight::start(
            &Anthropic,
            &cfg(url, Duration::from_secs(5)),
            &prompt(),
            false,
        ));
        let Err(CallError::Transport(msg)) = out.result else {
            panic!("expected a transport error, got {:?}", out.result)
        };
        assert!(
            !msg.to_lowercase().contains("not supported") && !msg.contains("feature"),
            "{msg}"
        );
    }

    #[test]
    fn cancel_interrupts_a_hanging_call() {
        let server = FakeLlm::start(Behavior::Hang).unwrap();
        let call = InFlight::start(
            &Anthropic,
            &cfg(server.url(), Duration::from_secs(60)),
            &prompt(),
            false,
        );
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        call.cancel();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "cancel took {:?}",
            t.elapsed()
        );
    }

    fn prompt_with(marker: &str) -> Prompt {
        let mut p = prompt();
        p.user.push_str(marker);
        p
    }

    #[test]
    fn calls_to_one_base_url_reuse_a_kept_alive_connection() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        for _ in 0..3 {
            let out = wait(InFlight::start(
                &Anthropic,
                &cfg(server.url(), Duration::from_secs(5)),
                &prompt(),
                false,
            ));
            assert!(out.result.is_ok(), "{:?}", out.result);
        }
        let conns: Vec<u64> = server.requests().iter().map(|r| r.connection).collect();
        assert_eq!(conns.len(), 3);
        assert!(
            conns.iter().all(|c| *c == conns[0]),
            "one connection for three calls, got {conns:?}"
        );
    }

    #[test]
    fn cancelling_one_call_leaves_the_others_to_the_same_url_running() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let c = cfg(server.url(), Duration::from_secs(30));
        let hanging = InFlight::start(&Anthropic, &c, &prompt_with(" [fakellm:hang]"), false);
        let slow = InFlight::start(&Anthropic, &c, &prompt_with(" [fakellm:slow=400]"), false);
        wait_until(|| (server.request_count() == 2).then_some(()));
        hanging.cancel();
        let out = wait(slow);
        assert!(out.result.is_ok(), "{:?}", out.result);
        // The lane of the finished call serves the next one on its kept-alive connection.
        let slow_conn = server
            .requests()
            .iter()
            .find(|r| r.raw_body.contains("slow=400"))
            .unwrap()
            .connection;
        let next = wait(InFlight::start(&Anthropic, &c, &prompt(), false));
        assert!(next.result.is_ok(), "{:?}", next.result);
        assert_eq!(server.requests()[2].connection, slow_conn);
    }

    #[test]
    fn base_url_is_scheme_and_authority() {
        assert_eq!(
            base_of("http://127.0.0.1:8080/v1/messages"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            base_of("https://api.example.com"),
            "https://api.example.com"
        );
        assert_eq!(base_of("https://h/v1?x=1"), "https://h");
    }

    #[test]
    fn openai_real_http_round_trip() {
        let (server, out) = round_trip(&OpenAi, Behavior::Good, Duration::from_secs(5));
        let c = out.result.unwrap();
        assert_eq!(crate::spec::validate(&c.text), Ok(()));
        assert_eq!(c.stop_reason.as_deref(), Some("stop"));
        assert!(!c.truncated());
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/v1/chat/completions");
        assert_eq!(reqs[0].header("authorization"), Some("Bearer k"));
        assert_eq!(reqs[0].header("x-api-key"), None);
        let body = reqs[0].body.as_ref().unwrap();
        assert_eq!(body["max_tokens"], 4000);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "Health endpoint");
    }

    #[test]
    fn openai_truncated_answer_is_judged_truncated() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let mut p = prompt();
        p.user.push_str(" [fakellm:truncated]");
        let out = wait(InFlight::start(
            Provider::OpenAi.codec(),
            &cfg(server.url(), Duration::from_secs(5)),
            &p,
            false,
        ));
        let c = out.result.unwrap();
        assert!(c.truncated());
        assert_eq!(c.stop_reason.as_deref(), Some("length"));
        assert_eq!(c.output_tokens, Some(4000));
        assert!(crate::spec::validate(&c.text).is_err());
    }

    #[test]
    fn openai_status_errors_keep_status_and_message() {
        let (_server, out) = round_trip(&OpenAi, Behavior::Status(429), Duration::from_secs(5));
        let Err(CallError::Http { status, message }) = out.result else {
            panic!("expected an HTTP error, got {:?}", out.result)
        };
        assert_eq!(status, 429);
        assert!(
            message.starts_with("requests (rate_limit_exceeded): "),
            "{message}"
        );
    }

    /// SigBlk of the threads of this process whose name is `name`, as /proc shows them.
    fn blocked_signals_of(name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("SigBlk:")) {
                out.push(l["SigBlk:".len()..].trim().to_string());
            }
        }
        out
    }

    #[test]
    fn the_http_thread_is_born_with_every_signal_blocked_and_the_caller_keeps_its_mask() {
        let mine = || {
            std::fs::read_to_string("/proc/thread-self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("SigBlk:"))
                .unwrap()
                .to_string()
        };
        let before = mine();
        let server = FakeLlm::start(Behavior::Hang).unwrap();
        let call = InFlight::start(
            &Anthropic,
            &cfg(server.url(), Duration::from_secs(30)),
            &prompt(),
            false,
        );
        let masks = wait_until(|| {
            let m = blocked_signals_of("damascus-llm");
            (!m.is_empty()).then_some(m)
        });
        // Every signal Postgres handles is blocked (glibc keeps two of its own, and SIGKILL/SIGSTOP
        // cannot be blocked, so the mask is not all ones).
        let handled = [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGCHLD,
            libc::SIGPIPE,
        ];
        for m in &masks {
            let bits = u64::from_str_radix(m, 16).unwrap();
            for sig in handled {
                assert!(
                    bits & (1u64 << (sig - 1)) != 0,
                    "signal {sig} not blocked: SigBlk {m}"
                );
            }
        }
        assert_eq!(mine(), before, "the caller's mask is restored");
        call.cancel();
    }

    fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "condition not reached");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
