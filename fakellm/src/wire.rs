//! What both wire formats share: the provider-neutral request, the choice of format by
//! route, and the pieces of an answer (error headers, token estimates) that do not depend on it.

use serde_json::{Value, json};

use crate::http::{Head, Rejection, Response};
use crate::phase::Answer;
use crate::ratelimit::Remaining;
use crate::{anthropic, openai};

/// Stands in for the answer text in a body that is cut in two around it; plain ASCII, so JSON
/// encoding leaves it as it is and it can be found again in the encoded body.
const TEXT_SLOT: &str = "FAKELLM-TEXT-SLOT-3f9c1a";

/// The output cap a client sent, and under which field name, since OpenAI has two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenCap {
    pub field: &'static str,
    pub value: u64,
}

/// What fakellm needs from a valid request body, whichever format it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub max_tokens: Option<TokenCap>,
    /// The system instructions, which decide the phase being asked for.
    pub system_text: String,
    /// All non-system message text joined, where `[fakellm:...]` markers are looked for.
    pub messages_text: String,
    /// The text of the last `user` message, the source of the feature name.
    pub last_user_text: String,
    /// Characters of system and message text, for the rough input token count.
    pub input_chars: usize,
}

/// A wire format fakellm speaks, chosen by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Anthropic,
    OpenAi,
}

impl Format {
    pub(crate) fn for_path(path: &str) -> Option<Format> {
        match path {
            anthropic::PATH => Some(Format::Anthropic),
            openai::PATH => Some(Format::OpenAi),
            _ => None,
        }
    }

    /// Header checks, in the order the real API makes them, before the body is looked at.
    pub(crate) fn check_headers(self, head: &Head) -> Result<(), Rejection> {
        match self {
            Format::Anthropic => anthropic::check_headers(head),
            Format::OpenAi => openai::check_headers(head),
        }
    }

    pub(crate) fn parse(self, body: &Value) -> Result<ChatRequest, String> {
        match self {
            Format::Anthropic => anthropic::parse_request(body),
            Format::OpenAi => openai::parse_request(body),
        }
    }

    /// A 200 carrying `answer`; `id` makes every answer's id unique across both formats.
    pub(crate) fn success(self, id: u64, request: &ChatRequest, answer: &Answer) -> Response {
        let body = match self {
            Format::Anthropic => anthropic::success_body(id, request, answer),
            Format::OpenAi => openai::success_body(id, request, answer),
        };
        json_response(200, body.to_string())
    }

    /// Adds prompt-cache counts to a success response's usage, in this format's words.
    pub(crate) fn add_cache_usage(self, resp: &mut Response, write: u64, read: Option<u64>) {
        let Ok(mut body) = serde_json::from_slice::<Value>(&resp.body) else {
            return;
        };
        match self {
            Format::Anthropic => {
                body["usage"]["cache_creation_input_tokens"] = json!(write);
                body["usage"]["cache_read_input_tokens"] = json!(read);
            }
            Format::OpenAi => {
                body["usage"]["prompt_tokens_details"] = match read {
                    Some(r) => json!({"cached_tokens": r}),
                    None => Value::Null,
                };
            }
        }
        *resp = json_response(200, body.to_string());
    }

    /// A 200 body split where the answer text goes, for texts that are written separately: too
    /// large to hold, not UTF-8, or never finished. The text must need no JSON escaping, and
    /// `text_chars` is its length, so the usage counts match what is eventually sent.
    pub(crate) fn success_around_text(
        self,
        id: u64,
        request: &ChatRequest,
        text_chars: usize,
    ) -> (Vec<u8>, Vec<u8>) {
        let slot = Answer {
            text: TEXT_SLOT.to_string(),
            truncated: false,
        };
        let tokens = rough_tokens(text_chars);
        let body = match self {
            Format::Anthropic => {
                let mut body = anthropic::success_body(id, request, &slot);
                anthropic::set_output_tokens(&mut body, tokens);
                body
            }
            Format::OpenAi => {
                let mut body = openai::success_body(id, request, &slot);
                openai::set_output_tokens(&mut body, tokens);
                body
            }
        }
        .to_string();
        match body.split_once(TEXT_SLOT) {
            Some((before, after)) => (before.into(), after.into()),
            // The slot is always in the body it was put in; this arm only keeps the server from panicking.
            None => (body.into_bytes(), Vec::new()),
        }
    }

    /// A 200 in this format's envelope that carries no text at all.
    pub(crate) fn empty(self, id: u64, request: &ChatRequest) -> Response {
        let body = match self {
            Format::Anthropic => anthropic::empty_body(id, request),
            Format::OpenAi => openai::empty_body(id, request),
        };
        json_response(200, body.to_string())
    }

    /// A 200 whose only content is a tool call, which a text-only client never asked for.
    pub(crate) fn odd_block(self, id: u64, request: &ChatRequest) -> Response {
        let body = match self {
            Format::Anthropic => anthropic::tool_use_body(id, request),
            Format::OpenAi => openai::tool_call_body(id, request),
        };
        json_response(200, body.to_string())
    }

    /// The name this format gives the error class of `status`, also used in log lines.
    pub(crate) fn error_type(self, status: u16) -> &'static str {
        match self {
            Format::Anthropic => anthropic::error_type(status),
            Format::OpenAi => openai::error_type(status),
        }
    }

    /// An error in this format's envelope. Rate limits and overloads (429, 503, 529) carry
    /// `retry-after` as both real APIs do, so client back-off logic is exercised.
    pub(crate) fn error(self, status: u16, message: &str) -> Response {
        let body = match self {
            Format::Anthropic => anthropic::error_body(status, message),
            Format::OpenAi => openai::error_body(status, message),
        };
        let mut resp = json_response(status, body.to_string());
        if matches!(status, 429 | 503 | 529) {
            resp.headers.push(("retry-after", "1".to_string()));
        }
        if status == 405 {
            resp.headers.push(("allow", "POST".to_string()));
        }
        resp
    }

    pub(crate) fn reject(self, rejection: &Rejection) -> Response {
        self.error(rejection.status, &rejection.message)
    }

    /// A 429 in this format's rate-limit envelope telling the client to wait `retry_after_secs`.
    pub(crate) fn rate_limited(self, message: &str, retry_after_secs: u64) -> Response {
        let mut resp = self.error(429, message);
        resp.headers.retain(|(name, _)| *name != "retry-after");
        resp.headers
            .push(("retry-after", retry_after_secs.to_string()));
        resp
    }

    /// A 429 for a spending cap, as each API words it. It has no `retry-after`, as the real
    /// ones send none: waiting does not lift the cap, so a client must give up, not retry.
    pub(crate) fn spend_limited(self) -> Response {
        let body = match self {
            Format::Anthropic => anthropic::error_body(429, anthropic::SPEND_LIMIT_MESSAGE),
            Format::OpenAi => openai::quota_body(openai::SPEND_LIMIT_MESSAGE),
        };
        json_response(429, body.to_string())
    }

    /// The remaining-figure headers of a 200 answered under rate limits.
    pub(crate) fn rate_limit_headers(self, left: &Remaining) -> Vec<(&'static str, String)> {
        match self {
            Format::Anthropic => anthropic::rate_limit_headers(left),
            Format::OpenAi => openai::rate_limit_headers(left),
        }
    }
}

pub(crate) fn json_response(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        headers: vec![("content-type", "application/json".to_string())],
        body: body.into(),
    }
}

/// The message for `Behavior::Status(code)`; the wording says "simulated" so nobody debugs a
/// real outage that is not there.
pub(crate) fn simulated_message(status: u16) -> &'static str {
    match status {
        429 => "Number of requests has exceeded your rate limit (simulated by fakellm)",
        529 => "Overloaded (simulated by fakellm)",
        500 => "Internal server error (simulated by fakellm)",
        501..=599 => "Upstream failure (simulated by fakellm)",
        _ => "Request rejected (simulated by fakellm)",
    }
}

/// Both APIs' rough rule of thumb: about four characters per token.
pub(crate) fn rough_tokens(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn input_tokens(request: &ChatRequest) -> u64 {
    rough_tokens(request.input_chars)
}

/// A provider that stops on its token cap reports having used all of it; without a cap in
/// the request there is nothing to report but the estimate.
pub(crate) fn output_tokens(request: &ChatRequest, answer: &Answer) -> u64 {
    match (&request.max_tokens, answer.truncated) {
        (Some(cap), true) => cap.value,
        _ => rough_tokens(answer.text.chars().count()),
    }
}

/// The text of a string-or-parts content value. Non-text parts (images, tool results) are
/// accepted but contribute no text, since neither real API refuses them.
pub(crate) fn content_text(value: &Value, at: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part = part
                    .as_object()
                    .ok_or_else(|| format!("{at}.{j}: must be an object"))?;
                let kind = part
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}.{j}.type: Field required"))?;
                if kind == "text" {
                    let text = part
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("{at}.{j}.text: Field required"))?;
                    texts.push(text);
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(format!(
            "{at}: must be a string or an array of content parts"
        )),
    }
}

/// A non-empty string field, with the message both formats use when it is not one.
pub(crate) fn required_string(
    obj: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<String, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(format!("{field}: Field required")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("{field}: must be a non-empty string")),
    }
}

/// Neither format streams here; saying so is kinder than answering in the wrong framing.
pub(crate) fn refuse_streaming(obj: &serde_json::Map<String, Value>) -> Result<(), String> {
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(
            "stream: fakellm does not implement streaming; omit it or set it to false".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_pick_the_format() {
        assert_eq!(Format::for_path("/v1/messages"), Some(Format::Anthropic));
        assert_eq!(
            Format::for_path("/v1/chat/completions"),
            Some(Format::OpenAi)
        );
        assert_eq!(Format::for_path("/v1/complete"), None);
    }

    #[test]
    fn errors_carry_the_shared_headers() {
        for format in [Format::Anthropic, Format::OpenAi] {
            for status in [429, 503, 529] {
                let limited = format.error(status, "slow down");
                assert!(
                    limited.headers.contains(&("retry-after", "1".to_string())),
                    "{status}"
                );
            }
            let wrong_method = format.error(405, "no");
            assert!(
                wrong_method
                    .headers
                    .contains(&("allow", "POST".to_string()))
            );
            assert!(
                !format
                    .error(500, "x")
                    .headers
                    .iter()
                    .any(|(n, _)| *n == "retry-after")
            );
        }
    }

    #[test]
    fn rate_limit_and_spend_limit_errors() {
        for format in [Format::Anthropic, Format::OpenAi] {
            let limited = format.rate_limited("slow down", 17);
            assert_eq!(limited.status, 429);
            let retry: Vec<_> = limited
                .headers
                .iter()
                .filter(|(n, _)| *n == "retry-after")
                .collect();
            assert_eq!(retry, [&("retry-after", "17".to_string())], "{format:?}");
            let spent = format.spend_limited();
            assert_eq!(spent.status, 429);
            assert!(!spent.headers.iter().any(|(n, _)| *n == "retry-after"));
            let body: Value = serde_json::from_slice(&spent.body).unwrap();
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("enforced_spend_limit_reached"),
                "{body}"
            );
        }
        let anthropic: Value =
            serde_json::from_slice(&Format::Anthropic.spend_limited().body).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        let openai: Value =
            serde_json::from_slice(&Format::OpenAi.rate_limited("x", 2).body).unwrap();
        assert_eq!(openai["error"]["type"], "requests");
        assert_eq!(openai["error"]["code"], "rate_limit_exceeded");
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            max_tokens: None,
            system_text: String::new(),
            messages_text: String::new(),
            last_user_text: String::new(),
            input_chars: 40,
        }
    }

    #[test]
    fn a_body_split_around_its_text_joins_back_into_a_message() {
        let text = "y".repeat(400);
        for format in [Format::Anthropic, Format::OpenAi] {
            let (mut body, after) = format.success_around_text(9, &request(), text.len());
            body.extend_from_slice(text.as_bytes());
            body.extend_from_slice(&after);
            let v: Value = serde_json::from_slice(&body).unwrap();
            let whole = format.success(
                9,
                &request(),
                &Answer {
                    text: text.clone(),
                    truncated: false,
                },
            );
            let mut expected: Value = serde_json::from_slice(&whole.body).unwrap();
            // OpenAI stamps the second it answered in; two calls may straddle a second.
            if let Some(created) = v.get("created") {
                expected["created"] = created.clone();
            }
            assert_eq!(v, expected, "{format:?}");
        }
    }

    #[test]
    fn token_estimates() {
        assert_eq!(rough_tokens(0), 1);
        assert_eq!(rough_tokens(40), 10);
        let mut request = ChatRequest {
            model: "m".into(),
            max_tokens: Some(TokenCap {
                field: "max_tokens",
                value: 50,
            }),
            system_text: String::new(),
            messages_text: String::new(),
            last_user_text: String::new(),
            input_chars: 400,
        };
        let cut = Answer {
            text: "x".repeat(40),
            truncated: true,
        };
        assert_eq!(input_tokens(&request), 100);
        assert_eq!(output_tokens(&request, &cut), 50);
        request.max_tokens = None;
        assert_eq!(output_tokens(&request, &cut), 10);
    }

    #[test]
    fn content_is_a_string_or_text_parts() {
        assert_eq!(content_text(&json!("hi"), "c").unwrap(), "hi");
        let parts = json!([{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&parts, "c").unwrap(), "a\nb");
        for bad in [
            json!(5),
            json!([1]),
            json!([{"text": "a"}]),
            json!([{"type": "text"}]),
        ] {
            assert!(content_text(&bad, "c").unwrap_err().starts_with("c"));
        }
    }
}
