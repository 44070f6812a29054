//! The Anthropic Messages API contract: its headers, request validation and JSON envelopes.

use serde_json::{Value, json};

use crate::http::{Head, Rejection};
use crate::phase::Answer;
use crate::ratelimit::Remaining;
use crate::wire::{
    ChatRequest, TokenCap, content_text, input_tokens, output_tokens, refuse_streaming,
    required_string,
};

pub(crate) const PATH: &str = "/v1/messages";

pub(crate) fn check_headers(head: &Head) -> Result<(), Rejection> {
    if head.header("x-api-key").is_none_or(str::is_empty) {
        return Err(Rejection::new(401, "x-api-key header is required"));
    }
    if head.header("anthropic-version").is_none_or(str::is_empty) {
        return Err(Rejection::bad("anthropic-version: header is required"));
    }
    Ok(())
}

/// Validates the body the way the real API does for the fields damascus sends; the message
/// names the offending field so a failing client is easy to fix.
pub(crate) fn parse_request(body: &Value) -> Result<ChatRequest, String> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let model = required_string(obj, "model")?;
    let max_tokens = obj
        .get("max_tokens")
        .ok_or("max_tokens: Field required")?
        .as_u64()
        .filter(|n| *n > 0)
        .ok_or("max_tokens: must be a positive integer")?;
    refuse_streaming(obj)?;
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
    Ok(ChatRequest {
        model,
        max_tokens: Some(TokenCap {
            field: "max_tokens",
            value: max_tokens,
        }),
        system_text,
        messages_text,
        last_user_text,
        input_chars,
    })
}

/// A `message` object carrying one text block.
pub(crate) fn success_body(id: u64, request: &ChatRequest, answer: &Answer) -> Value {
    let stop_reason = if answer.truncated {
        "max_tokens"
    } else {
        "end_turn"
    };
    json!({
        "id": format!("msg_fake_{id}"),
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input_tokens(request),
            "output_tokens": output_tokens(request, answer),
        },
    })
}

/// For a body whose text is sent apart from it, so its usage still counts that text.
pub(crate) fn set_output_tokens(body: &mut Value, tokens: u64) {
    body["usage"]["output_tokens"] = json!(tokens);
}

fn no_text() -> Answer {
    Answer {
        text: String::new(),
        truncated: false,
    }
}

/// A message with no content blocks, as the real API sends when the model stops at once.
pub(crate) fn empty_body(id: u64, request: &ChatRequest) -> Value {
    let mut body = success_body(id, request, &no_text());
    body["content"] = json!([]);
    body
}

/// A message whose only block is a tool call, which a client that offered no tools cannot use.
pub(crate) fn tool_use_body(id: u64, request: &ChatRequest) -> Value {
    let mut body = success_body(id, request, &no_text());
    body["content"] =
        json!([{"type": "tool_use", "id": "toolu_fake", "name": "noop", "input": {}}]);
    body["stop_reason"] = json!("tool_use");
    body
}

/// The error `type` the real API pairs with each status.
pub(crate) fn error_type(status: u16) -> &'static str {
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

pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// The spend cap refusal: Anthropic files it as a 429 `rate_limit_error`, and only the message
/// (with its `enforced_spend_limit_reached` marker) tells it from a limit that passes.
pub(crate) const SPEND_LIMIT_MESSAGE: &str = "Your organization has reached its monthly spend \
     limit (enforced_spend_limit_reached); raise it in the console (simulated by fakellm)";

/// What is left of each limited dimension, under the names the real API uses; the API counts
/// input and output tokens apart, so each has its own header.
pub(crate) fn rate_limit_headers(left: &Remaining) -> Vec<(&'static str, String)> {
    [
        ("anthropic-ratelimit-requests-remaining", left.requests),
        (
            "anthropic-ratelimit-input-tokens-remaining",
            left.input_tokens,
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining",
            left.output_tokens,
        ),
    ]
    .into_iter()
    .filter_map(|(name, n)| Some((name, n?.to_string())))
    .collect()
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
        assert_eq!(
            req.max_tokens,
            Some(TokenCap {
                field: "max_tokens",
                value: 100
            })
        );
        assert_eq!(req.system_text, "be brief");
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
    fn status_types_match_the_real_api() {
        assert_eq!(error_type(401), "authentication_error");
        assert_eq!(error_type(429), "rate_limit_error");
        assert_eq!(error_type(529), "overloaded_error");
        assert_eq!(error_type(500), "api_error");
        assert_eq!(error_type(503), "api_error");
        assert_eq!(error_type(400), "invalid_request_error");
        assert_eq!(
            error_body(529, "busy"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
    }

    #[test]
    fn remaining_headers_cover_only_limited_dimensions() {
        let all = Remaining {
            requests: Some(4),
            input_tokens: Some(900),
            output_tokens: Some(0),
        };
        assert_eq!(
            rate_limit_headers(&all),
            [
                ("anthropic-ratelimit-requests-remaining", "4".to_string()),
                (
                    "anthropic-ratelimit-input-tokens-remaining",
                    "900".to_string()
                ),
                (
                    "anthropic-ratelimit-output-tokens-remaining",
                    "0".to_string()
                ),
            ]
        );
        let some = Remaining {
            requests: None,
            input_tokens: None,
            output_tokens: Some(7),
        };
        assert_eq!(
            rate_limit_headers(&some),
            [(
                "anthropic-ratelimit-output-tokens-remaining",
                "7".to_string()
            )]
        );
    }

    #[test]
    fn textless_messages_keep_the_envelope() {
        let req = parse_request(&valid()).unwrap();
        let empty = empty_body(1, &req);
        assert_eq!(empty["type"], "message");
        assert_eq!(empty["content"], json!([]));
        assert_eq!(empty["stop_reason"], "end_turn");
        let odd = tool_use_body(2, &req);
        assert_eq!(odd["content"][0]["type"], "tool_use");
        assert_eq!(odd["content"].as_array().unwrap().len(), 1);
        assert_eq!(odd["stop_reason"], "tool_use");
    }

    #[test]
    fn truncated_answers_report_the_cap() {
        let req = parse_request(&valid()).unwrap();
        let cut = Answer {
            text: "## Sum".into(),
            truncated: true,
        };
        let body = success_body(7, &req, &cut);
        assert_eq!(body["id"], "msg_fake_7");
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 100);
    }
}
