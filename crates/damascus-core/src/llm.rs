//! The LLM client: sends a codec's request on a helper thread that never touches Postgres, so the caller can wait on its latch and honour signals.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wire::{CallError, Codec, Completion, HttpRequest, LlmConfig, Prompt};

/// Largest response body we read; a spec is a few kilobytes.
const MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// The finished call as the verdict transaction needs it.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub result: Result<Completion, CallError>,
    pub elapsed: Duration,
}

/// A call running on its own thread.
pub struct InFlight {
    rx: mpsc::Receiver<CallOutcome>,
    agent: Option<ureq::Agent>,
    thread: Option<JoinHandle<()>>,
}

fn agent(cfg: &LlmConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(cfg.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("damascus/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn block_all_signals() {
    // Postgres' signal handlers (pgrx's included) must run on the main thread only; a handler
    // run here would call Postgres from a foreign thread. Threads ureq spawns inherit this mask.
    // SAFETY: `set` is a plain C struct for which all-zero bytes are a valid value, and it is
    // fully initialised by sigfillset before use; pthread_sigmask only reads it, and a null
    // old-set pointer is allowed. Both calls touch only this thread's signal state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
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

fn send(
    agent: &ureq::Agent,
    codec: &dyn Codec,
    req: &HttpRequest,
) -> Result<Completion, CallError> {
    let mut builder = agent.post(&req.url);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut resp = builder
        .send(req.body.as_bytes())
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_string()
        .map_err(|e| CallError::Transport(format!("reading the response (HTTP {status}): {e}")))?;
    codec.parse(status, &body)
}

impl InFlight {
    /// Starts the call. Settings were read by the caller on the main thread.
    pub fn start(
        codec: &'static dyn Codec,
        cfg: &LlmConfig,
        prompt: &Prompt,
        wake: bool,
    ) -> InFlight {
        let request = codec.build(cfg, prompt);
        let agent = agent(cfg);
        let thread_agent = agent.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("damascus-llm".into())
            .spawn(move || {
                block_all_signals();
                let started = Instant::now();
                let result = send(&thread_agent, codec, &request);
                let _ = tx.send(CallOutcome {
                    result,
                    elapsed: started.elapsed(),
                });
                if wake {
                    wake_main_thread();
                }
            });
        match spawned {
            Ok(handle) => InFlight {
                rx,
                agent: Some(agent),
                thread: Some(handle),
            },
            Err(e) => {
                // No thread: report it as a transport failure so the ticket is retried, not lost.
                let (tx, rx) = mpsc::channel();
                let _ = tx.send(CallOutcome {
                    result: Err(CallError::Transport(format!(
                        "could not start the HTTP thread: {e}"
                    ))),
                    elapsed: Duration::ZERO,
                });
                InFlight {
                    rx,
                    agent: None,
                    thread: None,
                }
            }
        }
    }

    /// The outcome, once the call has finished.
    pub fn poll(&mut self) -> Option<CallOutcome> {
        match self.rx.try_recv() {
            Ok(outcome) => {
                self.join();
                Some(outcome)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.join();
                Some(CallOutcome {
                    result: Err(CallError::Transport(
                        "the HTTP thread ended without an answer".into(),
                    )),
                    elapsed: Duration::ZERO,
                })
            }
        }
    }

    /// Interrupts the call (closes its sockets) and returns at once.
    pub fn cancel(mut self) {
        self.shutdown();
    }

    /// Closes the call's sockets and lets its thread finish on its own. Never joins: a thread stuck in name
    /// resolution or connect ends only at its own timeout, and a worker stopping many calls must not wait
    /// for that. The thread owns nothing but its request and channel, so detaching it is safe.
    fn shutdown(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown();
        }
        self.thread.take();
    }

    fn join(&mut self) {
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
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

    #[test]
    fn real_http_round_trip() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let out = wait(InFlight::start(
            &Anthropic,
            &cfg(server.url(), Duration::from_secs(5)),
            &prompt(),
            false,
        ));
        let c = out.result.unwrap();
        assert_eq!(crate::spec::validate(&c.text), Ok(()));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].header("x-api-key"), Some("k"));
        assert_eq!(reqs[0].body.as_ref().unwrap()["max_tokens"], 4000);
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
        let server = FakeLlm::start(Behavior::Hang).unwrap();
        let out = wait(InFlight::start(
            &Anthropic,
            &cfg(server.url(), Duration::from_millis(300)),
            &prompt(),
            false,
        ));
        assert!(
            matches!(out.result, Err(CallError::Transport(_))),
            "{:?}",
            out.result
        );
        assert!(out.elapsed >= Duration::from_millis(250));
    }

    #[test]
    fn status_errors_keep_their_status() {
        let server = FakeLlm::start(Behavior::Status(529)).unwrap();
        let out = wait(InFlight::start(
            &Anthropic,
            &cfg(server.url(), Duration::from_secs(5)),
            &prompt(),
            false,
        ));
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

    #[test]
    fn openai_real_http_round_trip() {
        let server = FakeLlm::start(Behavior::Good).unwrap();
        let out = wait(InFlight::start(
            &OpenAi,
            &cfg(server.url(), Duration::from_secs(5)),
            &prompt(),
            false,
        ));
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
        let server = FakeLlm::start(Behavior::Status(429)).unwrap();
        let out = wait(InFlight::start(
            &OpenAi,
            &cfg(server.url(), Duration::from_secs(5)),
            &prompt(),
            false,
        ));
        let Err(CallError::Http { status, message }) = out.result else {
            panic!("expected an HTTP error, got {:?}", out.result)
        };
        assert_eq!(status, 429);
        assert!(
            message.starts_with("requests (rate_limit_exceeded): "),
            "{message}"
        );
    }
}
