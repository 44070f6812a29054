//! LLM wire formats: one provider-neutral request/response model and a codec per provider (Anthropic Messages, OpenAI Chat Completions).

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

/// Whether `url` can be `damascus.llm_url`: an absolute http or https URL with a host and no query or
/// fragment (the provider's path is appended to it). The error says what is allowed.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let allowed = "damascus.llm_url must be an http:// or https:// URL with a host, such as https://api.anthropic.com or http://127.0.0.1:8080";
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not http or https; {allowed}"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(format!("{url:?} names no host; {allowed}"));
    }
    if url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
        return Err(format!(
            "{url:?} has a query, a fragment or white space; {allowed}"
        ));
    }
    Ok(())
}

/// How an API key may be shown (SHOW, current_setting): never the key, but a short fingerprint so an
/// operator can tell which key is loaded (32 bits of a hash reveal nothing usable of a key). Empty when unset.
pub fn key_shown(key: Option<&str>) -> String {
    use sha2::Digest;
    match key {
        Some(k) if !k.is_empty() => {
            let digest = sha2::Sha256::digest(k.as_bytes());
            let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("******** (sha256 {hex})")
        }
        _ => String::new(),
    }
}

/// The API key setting's name as it appears in messages; `_file` after it names the other, harmless setting.
const KEY_NAME: &[u8] = b"llm_api_key";

/// Where a text names the API key setting (not `llm_api_key_file`): the end of the first such name.
fn names_key_at(text: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..]
        .windows(KEY_NAME.len())
        .position(|w| w.eq_ignore_ascii_case(KEY_NAME))
    {
        let end = from + i + KEY_NAME.len();
        if !text[end..].starts_with(b"_file") {
            return Some(end);
        }
        from = end;
    }
    None
}

/// What a log message's text becomes so it cannot leak the API key: `None` to keep it; with `key` itself
/// replaced by its fingerprint ([`key_shown`]) when it holds the key; else cut after the setting's name when it
/// names the setting (another value may follow, quoted or not). Keys shorter than 8 bytes are not looked for
/// (they would match ordinary words).
pub fn redact_key(text: &[u8], key: Option<&[u8]>) -> Option<Vec<u8>> {
    if let Some(key) = key.filter(|k| k.len() >= 8)
        && text.windows(key.len()).any(|w| w == key)
    {
        let shown = key_shown(Some(&String::from_utf8_lossy(key)));
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.windows(key.len()).position(|w| w == key) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(shown.as_bytes());
            rest = &rest[i + key.len()..];
        }
        out.extend_from_slice(rest);
        return Some(out);
    }
    let end = names_key_at(text)?;
    let mut out = text[..end].to_vec();
    out.extend_from_slice(
        " \u{2026} (the rest is hidden by damascus: it may hold the API key)".as_bytes(),
    );
    Some(out)
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
                    if is_secret_header(k) {
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

/// Headers that carry a key, under either provider's scheme; names are case-insensitive.
fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-api-key") || name.eq_ignore_ascii_case("authorization")
}

/// A model's answer. Token counts are each provider's own (OpenAI's `prompt_tokens` include the cached ones,
/// Anthropic's `input_tokens` do not); a count the provider left out or sent as null is `None`, never 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    pub text: String,
    pub stop_reason: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    /// Anthropic's `cache_creation_input_tokens`; OpenAI reports none.
    pub cache_write_tokens: Option<i64>,
    /// Anthropic's `cache_read_input_tokens`; OpenAI's `prompt_tokens_details.cached_tokens`.
    pub cache_read_tokens: Option<i64>,
    /// The provider's `usage` object, verbatim.
    pub usage: Option<Value>,
}

/// The stop reasons that mean "hit the token cap": Anthropic's and OpenAI's words for it.
const TRUNCATION_STOP_REASONS: [&str; 2] = ["max_tokens", "length"];

impl Completion {
    /// True when the provider says it stopped because the token cap was reached.
    /// `stop_reason` keeps the provider's own word, so this is the one place that knows both.
    /// No text at all, and not because the cap cut it off: a message that is not an answer (a tool call, an
    /// empty reply).
    pub fn is_textless(&self) -> bool {
        self.text.trim().is_empty() && !self.truncated()
    }

    pub fn truncated(&self) -> bool {
        self.stop_reason
            .as_deref()
            .is_some_and(|r| TRUNCATION_STOP_REASONS.contains(&r))
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
    /// Worth another try within the cycle: no answer at all, or a status that says "later" (408, 409, 425,
    /// 429, any 5xx, Anthropic's 529 included).
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Http { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || *status >= 500
            }
            CallError::Malformed { .. } => false,
        }
    }

    /// The API refused this request for good (400, 401, 403, 404, 413, 422 and the other 4xx): sending it
    /// again will not help, so it costs an attempt instead of being retried for ever.
    pub fn refused(&self) -> bool {
        matches!(self, CallError::Http { status, .. } if (400..500).contains(status))
            && !self.retryable()
    }

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

/// The LLM providers damascus can talk to, one codec each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Anthropic,
    OpenAi,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Anthropic, Provider::OpenAi];

    /// Parses a setting value; case and surrounding blanks do not matter, so `OpenAI` works.
    pub fn parse(s: &str) -> Result<Provider, String> {
        let wanted = s.trim();
        Provider::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                let allowed: Vec<&str> = Provider::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown LLM provider {s:?}; expected one of: {}",
                    allowed.join(", ")
                )
            })
    }

    /// The spelling `parse` accepts and settings show.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
        }
    }

    pub fn codec(self) -> &'static dyn Codec {
        match self {
            Provider::Anthropic => &Anthropic,
            Provider::OpenAi => &OpenAi,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Anthropic Messages API.
pub struct Anthropic;

/// The OpenAI Chat Completions API, also spoken by many OpenAI-compatible servers.
pub struct OpenAi;

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
        let completion = Completion {
            text,
            stop_reason: v
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
            cache_write_tokens: tokens("cache_creation_input_tokens"),
            cache_read_tokens: tokens("cache_read_input_tokens"),
            usage: usage.cloned(),
        };
        if completion.is_textless() {
            let kinds: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("type").and_then(Value::as_str))
                .collect();
            return Err(malformed(format!(
                "the message has no text (content blocks: [{}], stop_reason {})",
                kinds.join(", "),
                completion.stop_reason.as_deref().unwrap_or("none")
            )));
        }
        Ok(completion)
    }
}

/// `error.message` with the `type` and `code` that classify it, as far as they are present;
/// a string `error` (some compatible servers send one) is taken as the message itself.
fn openai_error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    if let Some(msg) = e.as_str() {
        return Some(msg.to_string());
    }
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
    let kind = e.get("type").and_then(Value::as_str);
    let code = e.get("code").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let label = match (kind, code) {
        (Some(kind), Some(code)) => format!("{kind} ({code})"),
        (Some(kind), None) => kind.to_string(),
        (None, Some(code)) => code,
        (None, None) => return Some(msg.to_string()),
    };
    Some(format!("{label}: {msg}"))
}

impl Codec for OpenAi {
    fn build(&self, cfg: &LlmConfig, prompt: &Prompt) -> HttpRequest {
        let mut messages = Vec::with_capacity(2);
        // An empty system message is noise at best; some compatible servers refuse it.
        if !prompt.system.is_empty() {
            messages.push(json!({"role": "system", "content": prompt.system}));
        }
        messages.push(json!({"role": "user", "content": prompt.user}));
        let body = json!({
            "model": cfg.model,
            "max_tokens": prompt.max_tokens,
            "messages": messages,
        });
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        // Without a key the header is left out, so the API's own 401 says what is missing.
        if let Some(key) = cfg.api_key.as_ref().filter(|k| !k.is_empty()) {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
        HttpRequest {
            url: format!("{}/v1/chat/completions", cfg.base_url.trim_end_matches('/')),
            headers,
            body: body.to_string(),
        }
    }

    fn parse(&self, status: u16, body: &str) -> Result<Completion, CallError> {
        let json: Result<Value, _> = serde_json::from_str(body);
        if !(200..300).contains(&status) {
            let message = json
                .ok()
                .as_ref()
                .and_then(openai_error_message)
                .unwrap_or_else(|| clip(body.trim()));
            return Err(CallError::Http {
                status,
                message: clip(&message),
            });
        }
        let malformed = |message: String| CallError::Malformed { status, message };
        let v = json.map_err(|e| malformed(format!("not JSON ({e}): {}", clip(body.trim()))))?;
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                malformed(format!(
                    "not a chat completion (no choices array): {}",
                    clip(&v.to_string())
                ))
            })?
            .first()
            .ok_or_else(|| malformed("chat completion has no choices".into()))?;
        let message = choice.get("message");
        let text = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                // A refusal comes back as null content plus a `refusal` string; say so.
                let refusal = message
                    .and_then(|m| m.get("refusal"))
                    .and_then(Value::as_str)
                    .map(|r| format!(" (refusal: {})", clip(r)))
                    .unwrap_or_default();
                malformed(format!(
                    "choices[0].message.content is not a string{refusal}"
                ))
            })?;
        let usage = v.get("usage");
        let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_i64);
        let completion = Completion {
            text: text.to_string(),
            stop_reason: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            input_tokens: tokens("prompt_tokens"),
            output_tokens: tokens("completion_tokens"),
            cache_write_tokens: None,
            cache_read_tokens: usage
                .and_then(|u| u.get("prompt_tokens_details"))
                .and_then(|d| d.get("cached_tokens"))
                .and_then(Value::as_i64),
            usage: usage.cloned(),
        };
        if completion.is_textless() {
            return Err(malformed(format!(
                "choices[0].message.content is empty (finish_reason {})",
                completion.stop_reason.as_deref().unwrap_or("none")
            )));
        }
        Ok(completion)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_naming_or_holding_the_key_are_redacted() {
        let cut = |t: &str| {
            redact_key(t.as_bytes(), Some(b"sk-secret-123")).map(|v| String::from_utf8(v).unwrap())
        };
        let changed = cut(r#"parameter "damascus.llm_api_key" changed to "sk-other-456""#).unwrap();
        assert!(
            changed.starts_with(r#"parameter "damascus.llm_api_key"#),
            "{changed}"
        );
        assert!(!changed.contains("sk-other-456"), "{changed}");
        let stmt = cut("statement: SET DAMASCUS.LLM_API_KEY TO unquoted_key").unwrap();
        assert!(!stmt.contains("unquoted_key"), "{stmt}");
        let shown = key_shown(Some("sk-secret-123"));
        assert_eq!(
            cut(r#"parameter "damascus.llm_api_key" changed to "sk-secret-123""#),
            Some(format!(
                r#"parameter "damascus.llm_api_key" changed to "{shown}""#
            ))
        );
        assert_eq!(
            cut("bearer sk-secret-123 or sk-secret-123").unwrap(),
            format!("bearer {shown} or {shown}")
        );
        assert_eq!(
            cut(r#"parameter "damascus.llm_api_key_file" changed to "/etc/key""#),
            None
        );
        assert!(cut("damascus.llm_api_key_file or damascus.llm_api_key = 'x'").is_some());
        assert_eq!(cut("an ordinary message"), None);
        // A short key is not looked for in ordinary text.
        assert_eq!(redact_key(b"a message about keys", Some(b"key")), None);
    }

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

    fn prompt(system: &str) -> Prompt {
        Prompt {
            system: system.into(),
            user: "Ticket #1: hi".into(),
            max_tokens: 4000,
        }
    }

    #[test]
    fn builds_a_chat_completions_request() {
        let r = OpenAi.build(&cfg(), &prompt("sys"));
        assert_eq!(r.url, "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(
            r.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("authorization".to_string(), "Bearer sk-secret".to_string()),
            ]
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m1",
                "max_tokens": 4000,
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "Ticket #1: hi"},
                ],
            })
        );
    }

    #[test]
    fn openai_omits_an_empty_system_message_and_a_missing_key() {
        let mut c = cfg();
        c.api_key = Some(String::new());
        let r = OpenAi.build(&c, &prompt(""));
        assert!(!r.headers.iter().any(|(k, _)| k == "authorization"));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "Ticket #1: hi"}])
        );
        c.api_key = None;
        assert_eq!(OpenAi.build(&c, &prompt("")).headers.len(), 1);
    }

    #[test]
    fn debug_output_hides_the_bearer_key() {
        let r = OpenAi.build(&cfg(), &prompt("s"));
        let shown = format!("{r:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("authorization") && shown.contains("<redacted>"));
        let shouting = HttpRequest {
            headers: vec![("Authorization".into(), "Bearer sk-secret".into())],
            ..r
        };
        assert!(!format!("{shouting:?}").contains("sk-secret"));
    }

    #[test]
    fn anthropic_usage_keeps_cache_tokens_and_the_object_verbatim() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
            "content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":21,"cache_creation_input_tokens":1800,"cache_read_input_tokens":12000,
                     "output_tokens":393,"service_tier":"standard"}}"#;
        let c = Anthropic.parse(200, body).unwrap();
        assert_eq!(
            (
                c.input_tokens,
                c.output_tokens,
                c.cache_write_tokens,
                c.cache_read_tokens
            ),
            (Some(21), Some(393), Some(1800), Some(12000))
        );
        assert_eq!(c.usage.unwrap()["service_tier"], "standard");
    }

    #[test]
    fn openai_cached_tokens_are_none_when_null_or_absent_never_zero() {
        let body = |details: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi"}},"finish_reason":"stop"}}],
                "usage":{{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306{details}}}}}"#
            )
        };
        let cached = |details: &str| OpenAi.parse(200, &body(details)).unwrap().cache_read_tokens;
        assert_eq!(
            cached(r#","prompt_tokens_details":{"cached_tokens":1920}"#),
            Some(1920)
        );
        assert_eq!(cached(r#","prompt_tokens_details":null"#), None);
        assert_eq!(
            cached(r#","prompt_tokens_details":{"cached_tokens":null}"#),
            None
        );
        assert_eq!(cached(""), None);
        let c = OpenAi
            .parse(200, &body(r#","prompt_tokens_details":null"#))
            .unwrap();
        assert_eq!((c.input_tokens, c.cache_write_tokens), (Some(2006), None));
        assert!(c.usage.unwrap()["prompt_tokens_details"].is_null());
    }

    #[test]
    fn parses_a_chat_completion() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m1",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello world"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(
            OpenAi.parse(200, body),
            Ok(Completion {
                text: "Hello world".into(),
                stop_reason: Some("stop".into()),
                input_tokens: Some(12),
                output_tokens: Some(3),
                usage: Some(json!({"prompt_tokens":12,"completion_tokens":3,"total_tokens":15})),
                ..Completion::default()
            })
        );
        assert!(!OpenAi.parse(200, body).unwrap().truncated());
    }

    #[test]
    fn length_finish_is_truncation_and_keeps_its_word() {
        let body = r###"{"id":"chatcmpl-2","object":"chat.completion","created":1700000000,"model":"m1",
            "choices":[{"index":0,"message":{"role":"assistant","content":"## Sum"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":9,"completion_tokens":4000,"total_tokens":4009}}"###;
        let c = OpenAi.parse(200, body).unwrap();
        assert!(c.truncated());
        assert_eq!(c.stop_reason.as_deref(), Some("length"));
        assert_eq!(c.output_tokens, Some(4000));
    }

    #[test]
    fn a_message_without_text_is_malformed_unless_the_cap_cut_it() {
        let tool = r#"{"type":"message","content":[{"type":"tool_use","id":"t","name":"noop","input":{}}],"stop_reason":"tool_use"}"#;
        let Err(CallError::Malformed { message, .. }) = Anthropic.parse(200, tool) else {
            panic!("a tool call is not an answer")
        };
        assert!(message.contains("tool_use"), "{message}");
        let empty = r#"{"type":"message","content":[],"stop_reason":"end_turn"}"#;
        assert!(matches!(
            Anthropic.parse(200, empty),
            Err(CallError::Malformed { .. })
        ));
        let capped = r#"{"type":"message","content":[],"stop_reason":"max_tokens"}"#;
        assert!(Anthropic.parse(200, capped).unwrap().truncated());
        let blank = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#;
        assert!(matches!(
            OpenAi.parse(200, blank),
            Err(CallError::Malformed { .. })
        ));
        let cut = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"length"}]}"#;
        assert!(OpenAi.parse(200, cut).unwrap().truncated());
    }

    #[test]
    fn a_key_shows_as_a_fingerprint_never_itself() {
        let shown = key_shown(Some("sk-ant-secret"));
        assert!(
            shown.starts_with("******** (sha256 ") && !shown.contains("sk-"),
            "{shown}"
        );
        assert_eq!(shown.len(), "******** (sha256 12345678)".len());
        assert_ne!(shown, key_shown(Some("sk-ant-other")));
        assert_eq!(key_shown(None), "");
        assert_eq!(key_shown(Some("")), "");
    }

    #[test]
    fn only_http_and_https_base_urls_with_a_host_are_allowed() {
        for ok in [
            "https://api.anthropic.com",
            "http://127.0.0.1:8080",
            "https://gateway.example.com/openai",
        ] {
            assert_eq!(check_base_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "file:///etc/passwd",
            "api.anthropic.com",
            "http://",
            "http://:80",
            "https://user:pw@host",
            "https://h/?x=1",
            "https://h#f",
            "https://h /v1",
        ] {
            let e = check_base_url(bad).unwrap_err();
            assert!(
                e.contains("must be an http:// or https:// URL"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn truncation_is_only_the_cap_words() {
        let with = |r: Option<&str>| Completion {
            text: String::new(),
            stop_reason: r.map(str::to_string),
            input_tokens: None,
            output_tokens: None,
            ..Completion::default()
        };
        assert!(with(Some("max_tokens")).truncated());
        assert!(with(Some("length")).truncated());
        for other in [
            None,
            Some("end_turn"),
            Some("stop"),
            Some("content_filter"),
            Some("LENGTH"),
        ] {
            assert!(!with(other).truncated(), "{other:?}");
        }
    }

    #[test]
    fn openai_error_envelope_is_read() {
        let body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            OpenAi.parse(429, body),
            Err(CallError::Http {
                status: 429,
                message: "requests (rate_limit_exceeded): Rate limit reached".into()
            })
        );
        let body = r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
        assert_eq!(
            OpenAi.parse(500, body),
            Err(CallError::Http {
                status: 500,
                message: "server_error: The server had an error".into()
            })
        );
        assert_eq!(
            OpenAi.parse(
                401,
                r#"{"error":{"message":"bad key","code":"invalid_api_key"}}"#
            ),
            Err(CallError::Http {
                status: 401,
                message: "invalid_api_key: bad key".into()
            })
        );
        assert_eq!(
            OpenAi.parse(400, r#"{"error":"model not loaded"}"#),
            Err(CallError::Http {
                status: 400,
                message: "model not loaded".into()
            })
        );
        assert_eq!(
            OpenAi.parse(502, "<html>bad gateway</html>"),
            Err(CallError::Http {
                status: 502,
                message: "<html>bad gateway</html>".into()
            })
        );
        let CallError::Http { message, .. } = OpenAi.parse(500, &"x".repeat(10_000)).unwrap_err()
        else {
            panic!("expected an HTTP error")
        };
        assert!(message.chars().count() <= MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn openai_garbage_and_wrong_shapes_are_malformed() {
        for body in [
            "<html>oops",
            r#"{"hello":"world"}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":[{"index":0,"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"message":{"role":"assistant","content":null},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"message":{"role":"assistant","content":[{"type":"text","text":"x"}]}}]}"#,
        ] {
            assert!(
                matches!(
                    OpenAi.parse(200, body),
                    Err(CallError::Malformed { status: 200, .. })
                ),
                "{body}"
            );
        }
        let refused = r#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"I can't"},"finish_reason":"stop"}]}"#;
        let Err(CallError::Malformed { message, .. }) = OpenAi.parse(200, refused) else {
            panic!("expected malformed")
        };
        assert!(message.contains("I can't"), "{message}");
    }

    #[test]
    fn providers_parse_and_pick_their_codec() {
        assert_eq!(Provider::parse("anthropic"), Ok(Provider::Anthropic));
        assert_eq!(Provider::parse(" OpenAI "), Ok(Provider::OpenAi));
        assert_eq!(Provider::parse("OPENAI"), Ok(Provider::OpenAi));
        let err = Provider::parse("gemini").unwrap_err();
        assert!(err.contains("anthropic") && err.contains("openai") && err.contains("gemini"));
        assert!(Provider::parse("").is_err());
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.name()), Ok(p));
            assert_eq!(p.to_string(), p.name());
        }
        let p = prompt("s");
        assert!(
            Provider::Anthropic
                .codec()
                .build(&cfg(), &p)
                .url
                .ends_with("/v1/messages")
        );
        assert!(
            Provider::OpenAi
                .codec()
                .build(&cfg(), &p)
                .url
                .ends_with("/v1/chat/completions")
        );
    }
}
