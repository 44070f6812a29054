//! LLM wire formats: one provider-neutral request/response model and a codec per provider (Anthropic Messages today).

use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

/// Where and how to call the LLM; copied from settings on the main thread.
#[derive(Clone, PartialEq, Eq)]
pub struct LlmConfig {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for LlmConfig {
    // The key is a secret: it never reaches a log line through Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a phase asks of the model, independent of provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub max_tokens: u32,
}

/// A fully built HTTP request; the transport sends it as is.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if k == "x-api-key" {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub stop_reason: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
}

impl Completion {
    /// True when the provider says it stopped because the token cap was reached.
    pub fn truncated(&self) -> bool {
        self.stop_reason.as_deref() == Some("max_tokens")
    }
}

/// Why a call produced no usable answer. None of these is the ticket's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No HTTP response: connection refused, reset, DNS, timeout.
    Transport(String),
    /// An HTTP response that is not a success.
    Http { status: u16, message: String },
    /// A success status with a body that is not the wire format.
    Malformed { status: u16, message: String },
}

impl CallError {
    pub fn http_status(&self) -> Option<u16> {
        match self {
            CallError::Transport(_) => None,
            CallError::Http { status, .. } | CallError::Malformed { status, .. } => Some(*status),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport error: {m}"),
            CallError::Http { status, message } => write!(f, "HTTP {status}: {message}"),
            CallError::Malformed { status, message } => {
                write!(f, "unreadable response (HTTP {status}): {message}")
            }
        }
    }
}

/// A provider's wire format: how to build its request and read its response.
pub trait Codec: Send + Sync {
    fn build(&self, cfg: &LlmConfig, prompt: &Prompt) -> HttpRequest;
    fn parse(&self, status: u16, body: &str) -> Result<Completion, CallError>;
}

/// The Anthropic Messages API.
pub struct Anthropic;

/// The API version header value this codec speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

const MAX_ERROR_CHARS: usize = 500;

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX_ERROR_CHARS).collect();
        out.push('…');
        out
    }
}

impl Codec for Anthropic {
    fn build(&self, cfg: &LlmConfig, prompt: &Prompt) -> HttpRequest {
        let body = json!({
            "model": cfg.model,
            "max_tokens": prompt.max_tokens,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
        });
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "anthropic-version".to_string(),
                ANTHROPIC_VERSION.to_string(),
            ),
        ];
        // Without a key the header is left out, so the API's own 401 says what is missing.
        if let Some(key) = cfg.api_key.as_ref().filter(|k| !k.is_empty()) {
            headers.push(("x-api-key".into(), key.clone()));
        }
        HttpRequest {
            url: format!("{}/v1/messages", cfg.base_url.trim_end_matches('/')),
            headers,
            body: body.to_string(),
        }
    }

    fn parse(&self, status: u16, body: &str) -> Result<Completion, CallError> {
        let json: Result<Value, _> = serde_json::from_str(body);
        if !(200..300).contains(&status) {
            let message = json
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    let kind = e.get("type").and_then(Value::as_str).unwrap_or("error");
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    Some(format!("{kind}: {msg}"))
                })
                .unwrap_or_else(|| clip(body.trim()));
            return Err(CallError::Http {
                status,
                message: clip(&message),
            });
        }
        let malformed = |message: String| CallError::Malformed { status, message };
        let v = json.map_err(|e| malformed(format!("not JSON ({e}): {}", clip(body.trim()))))?;
        if v.get("type").and_then(Value::as_str) != Some("message") {
            return Err(malformed(format!(
                "not a message object: {}",
                clip(&v.to_string())
            )));
        }
        let blocks = v
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("message has no content array".into()))?;
        let text: String = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        let usage = v.get("usage");
        let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_i64);
        Ok(Completion {
            text,
            stop_reason: v
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LlmConfig {
        LlmConfig {
            base_url: "http://127.0.0.1:9/".into(),
            model: "m1".into(),
            api_key: Some("sk-secret".into()),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn builds_a_messages_request() {
        let p = Prompt {
            system: "sys".into(),
            user: "hi".into(),
            max_tokens: 4000,
        };
        let r = Anthropic.build(&cfg(), &p);
        assert_eq!(r.url, "http://127.0.0.1:9/v1/messages");
        assert!(
            r.headers
                .contains(&("anthropic-version".into(), "2023-06-01".into()))
        );
        assert!(
            r.headers
                .contains(&("x-api-key".into(), "sk-secret".into()))
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["model"], "m1");
        assert_eq!(body["max_tokens"], 4000);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["messages"][0]["content"], "hi");
    }

    #[test]
    fn no_key_means_no_key_header() {
        let p = Prompt {
            system: "s".into(),
            user: "u".into(),
            max_tokens: 1,
        };
        let mut c = cfg();
        c.api_key = None;
        assert!(
            !Anthropic
                .build(&c, &p)
                .headers
                .iter()
                .any(|(k, _)| k == "x-api-key")
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let p = Prompt {
            system: "s".into(),
            user: "u".into(),
            max_tokens: 1,
        };
        let shown = format!("{:?} {:?}", cfg(), Anthropic.build(&cfg(), &p));
        assert!(!shown.contains("sk-secret"), "{shown}");
    }

    #[test]
    fn parses_a_message() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"m1",
            "content":[{"type":"text","text":"Hello "},{"type":"text","text":"world"}],
            "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":3}}"#;
        let c = Anthropic.parse(200, body).unwrap();
        assert_eq!(c.text, "Hello world");
        assert_eq!(c.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!((c.input_tokens, c.output_tokens), (Some(12), Some(3)));
        assert!(!c.truncated());
    }

    #[test]
    fn max_tokens_stop_is_truncation() {
        let body = r###"{"type":"message","content":[{"type":"text","text":"## Sum"}],"stop_reason":"max_tokens"}"###;
        assert!(Anthropic.parse(200, body).unwrap().truncated());
    }

    #[test]
    fn error_status_reads_the_error_object() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            Anthropic.parse(529, body),
            Err(CallError::Http {
                status: 529,
                message: "overloaded_error: Overloaded".into()
            })
        );
        assert_eq!(
            Anthropic.parse(502, "<html>bad gateway</html>"),
            Err(CallError::Http {
                status: 502,
                message: "<html>bad gateway</html>".into()
            })
        );
    }

    #[test]
    fn garbage_and_wrong_shapes_are_malformed() {
        assert!(matches!(
            Anthropic.parse(200, "<html>oops"),
            Err(CallError::Malformed { status: 200, .. })
        ));
        assert!(matches!(
            Anthropic.parse(200, r#"{"hello":"world"}"#),
            Err(CallError::Malformed { .. })
        ));
        assert!(matches!(
            Anthropic.parse(200, r#"{"type":"message"}"#),
            Err(CallError::Malformed { .. })
        ));
    }

    #[test]
    fn long_error_bodies_are_clipped() {
        let body = "x".repeat(10_000);
        let CallError::Http { message, .. } = Anthropic.parse(500, &body).unwrap_err() else {
            panic!("expected an HTTP error")
        };
        assert!(message.chars().count() <= MAX_ERROR_CHARS + 1);
    }
}
