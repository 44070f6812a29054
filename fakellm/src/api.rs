//! The Anthropic Messages API contract: request validation and the JSON bodies of answers.

use serde_json::{Value, json};

use crate::http::Response;

/// What fakellm needs from a valid `POST /v1/messages` body.
#[derive(Debug)]
pub(crate) struct MessagesRequest {
    pub model: String,
    pub max_tokens: u64,
    /// All message text joined, where `[fakellm:...]` markers are looked for.
    pub messages_text: String,
    /// The text of the last `user` message, the source of the feature name.
    pub last_user_text: String,
    /// Characters of system and message text, for the rough `input_tokens`.
    pub input_chars: usize,
}

/// Validates the body the way the real API does for the fields damascus sends; the message
/// names the offending field so a failing client is easy to fix.
pub(crate) fn parse_request(body: &Value) -> Result<MessagesRequest, String> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let model = match obj.get("model") {
        None => return Err("model: Field required".into()),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err("model: must be a non-empty string".into()),
    };
    let max_tokens = obj
        .get("max_tokens")
        .ok_or("max_tokens: Field required")?
        .as_u64()
        .filter(|n| *n > 0)
        .ok_or("max_tokens: must be a positive integer")?;
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(
            "stream: fakellm does not implement streaming; omit it or set it to false".into(),
        );
    }
    let system_text = match obj.get("system") {
        None => String::new(),
        Some(v) => content_text(v, "system")?,
    };
    let messages = obj
        .get("messages")
        .ok_or("messages: Field required")?
        .as_array()
        .ok_or("messages: must be an array")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut texts = Vec::with_capacity(messages.len());
    let mut last_user_text = String::new();
    for (i, message) in messages.iter().enumerate() {
        let message = message
            .as_object()
            .ok_or_else(|| format!("messages.{i}: must be an object"))?;
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages.{i}.role: Field required"))?;
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        let content = message
            .get("content")
            .ok_or_else(|| format!("messages.{i}.content: Field required"))?;
        let text = content_text(content, &format!("messages.{i}.content"))?;
        if role == "user" {
            last_user_text.clone_from(&text);
        }
        texts.push(text);
    }
    let messages_text = texts.join("\n");
    let input_chars = system_text.chars().count() + messages_text.chars().count();
    Ok(MessagesRequest {
        model,
        max_tokens,
        messages_text,
        last_user_text,
        input_chars,
    })
}

/// The text of a string-or-blocks content value; non-text blocks (images, tool results)
/// are accepted but contribute no text.
fn content_text(value: &Value, at: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                let block = block
                    .as_object()
                    .ok_or_else(|| format!("{at}.{j}: must be an object"))?;
                let kind = block
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}.{j}.type: Field required"))?;
                if kind == "text" {
                    let text = block
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("{at}.{j}.text: Field required"))?;
                    parts.push(text);
                }
            }
            Ok(parts.join("\n"))
        }
        _ => Err(format!(
            "{at}: must be a string or an array of content blocks"
        )),
    }
}

/// The API's own rough rule of thumb: about four characters per token.
pub(crate) fn rough_tokens(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

/// A successful `message` object carrying one text block.
pub(crate) fn message_response(
    id: u64,
    model: &str,
    text: &str,
    stop_reason: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Response {
    let body = json!({
        "id": format!("msg_fake_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    });
    json_response(200, body.to_string())
}

pub(crate) fn json_response(status: u16, body: String) -> Response {
    Response {
        status,
        headers: vec![("content-type", "application/json".to_string())],
        body,
    }
}

/// The error `type` the real API pairs with each status.
pub(crate) fn error_kind_for(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error envelope; 429 carries `retry-after` as the real API does, so client
/// back-off logic is exercised.
pub(crate) fn error_response(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut resp = json_response(status, body.to_string());
    if status == 429 {
        resp.headers.push(("retry-after", "1".to_string()));
    }
    if status == 405 {
        resp.headers.push(("allow", "POST".to_string()));
    }
    resp
}

/// The answer for `Behavior::Status(code)`.
pub(crate) fn simulated_status(status: u16) -> Response {
    let message = match status {
        429 => "Number of requests has exceeded your rate limit (simulated by fakellm)",
        529 => "Overloaded (simulated by fakellm)",
        500 => "Internal server error (simulated by fakellm)",
        501..=599 => "Upstream failure (simulated by fakellm)",
        _ => "Request rejected (simulated by fakellm)",
    };
    error_response(status, error_kind_for(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "model": "claude-x",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {"role": "user", "content": [{"type": "text", "text": "Add login"}, {"type": "image", "source": {}}]},
            ]
        })
    }

    #[test]
    fn accepts_a_valid_request() {
        let req = parse_request(&valid()).unwrap();
        assert_eq!(req.model, "claude-x");
        assert_eq!(req.max_tokens, 100);
        assert_eq!(req.last_user_text, "Add login");
        assert_eq!(req.messages_text, "first\nok\nAdd login");
        assert_eq!(req.input_chars, "be brief".len() + req.messages_text.len());
    }

    #[test]
    fn rejects_invalid_requests() {
        let cases: Vec<(&str, Value)> = vec![
            ("model", json!(null)),
            ("model", json!(3)),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(-5)),
            ("max_tokens", json!(1.5)),
            ("max_tokens", json!("10")),
            ("messages", json!([])),
            ("messages", json!("hi")),
            ("messages", json!([{"role": "system", "content": "x"}])),
            ("messages", json!([{"role": "user"}])),
            ("messages", json!([{"role": "user", "content": 5}])),
            (
                "messages",
                json!([{"role": "user", "content": [{"type": "text"}]}]),
            ),
            ("system", json!(7)),
            ("stream", json!(true)),
        ];
        for (field, value) in cases {
            let mut body = valid();
            if value.is_null() {
                body.as_object_mut().unwrap().remove(field);
            } else {
                body[field] = value.clone();
            }
            let err = parse_request(&body).unwrap_err();
            assert!(err.starts_with(field), "{field}={value}: {err}");
        }
        assert!(parse_request(&json!([1])).is_err());
    }

    #[test]
    fn status_kinds_match_the_real_api() {
        assert_eq!(error_kind_for(429), "rate_limit_error");
        assert_eq!(error_kind_for(529), "overloaded_error");
        assert_eq!(error_kind_for(500), "api_error");
        assert_eq!(error_kind_for(503), "api_error");
        assert_eq!(error_kind_for(400), "invalid_request_error");
        assert!(
            simulated_status(429)
                .headers
                .contains(&("retry-after", "1".to_string()))
        );
        assert_eq!(rough_tokens(0), 1);
        assert_eq!(rough_tokens(40), 10);
    }
}
