//! The OpenAI Chat Completions contract: its headers, request validation and JSON envelopes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::http::{Head, Rejection};
use crate::phase::Answer;
use crate::ratelimit::Remaining;
use crate::wire::{
    ChatRequest, TokenCap, content_text, input_tokens, output_tokens, refuse_streaming,
    required_string,
};

pub(crate) const PATH: &str = "/v1/chat/completions";

/// The cap fields, newest first; the API still accepts the older `max_tokens`.
const CAP_FIELDS: [&str; 2] = ["max_completion_tokens", "max_tokens"];

const SYSTEM_ROLES: [&str; 2] = ["system", "developer"];

pub(crate) fn check_headers(head: &Head) -> Result<(), Rejection> {
    let token = head
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if token.is_none_or(str::is_empty) {
        return Err(Rejection::new(
            401,
            "an API key is required: send it as an Authorization: Bearer <key> header",
        ));
    }
    Ok(())
}

/// Validates the body the way the real API does for the fields a client sends; the message
/// names the offending field so a failing client is easy to fix.
pub(crate) fn parse_request(body: &Value) -> Result<ChatRequest, String> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let model = required_string(obj, "model")?;
    let max_tokens = token_cap(obj)?;
    refuse_streaming(obj)?;
    let messages = obj
        .get("messages")
        .ok_or("messages: Field required")?
        .as_array()
        .ok_or("messages: must be an array")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut system_texts = Vec::new();
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
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(format!(
                "messages.{i}.role: must be one of 'system', 'developer', 'user', 'assistant'"
            ));
        }
        let content = message
            .get("content")
            .ok_or_else(|| format!("messages.{i}.content: Field required"))?;
        let text = content_text(content, &format!("messages.{i}.content"))?;
        if SYSTEM_ROLES.contains(&role) {
            system_texts.push(text);
        } else {
            if role == "user" {
                last_user_text.clone_from(&text);
            }
            texts.push(text);
        }
    }
    let system_text = system_texts.join("\n");
    let messages_text = texts.join("\n");
    let input_chars = system_text.chars().count() + messages_text.chars().count();
    Ok(ChatRequest {
        model,
        max_tokens,
        system_text,
        messages_text,
        last_user_text,
        input_chars,
    })
}

/// The optional output cap under either of its names. Both at once is refused, so a test
/// never has to guess which of two caps a truncated answer was measured against.
fn token_cap(obj: &Map<String, Value>) -> Result<Option<TokenCap>, String> {
    let mut found = None;
    for field in CAP_FIELDS {
        let value = match obj.get(field) {
            None | Some(Value::Null) => continue,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{field}: must be a positive integer"))?,
        };
        if found.is_some() {
            return Err(format!(
                "{field}: send either max_tokens or max_completion_tokens, not both"
            ));
        }
        found = Some(TokenCap { field, value });
    }
    Ok(found)
}

/// A `chat.completion` object with one choice.
pub(crate) fn success_body(id: u64, request: &ChatRequest, answer: &Answer) -> Value {
    let finish_reason = if answer.truncated { "length" } else { "stop" };
    // A clock before 1970 is not worth failing a test double over.
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prompt_tokens = input_tokens(request);
    let completion_tokens = output_tokens(request, answer);
    json!({
        "id": format!("chatcmpl-fake-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens),
        },
    })
}

/// For a body whose text is sent apart from it, so its usage still counts that text.
pub(crate) fn set_output_tokens(body: &mut Value, tokens: u64) {
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    body["usage"]["completion_tokens"] = json!(tokens);
    body["usage"]["total_tokens"] = json!(prompt_tokens.saturating_add(tokens));
}

fn no_text() -> Answer {
    Answer {
        text: String::new(),
        truncated: false,
    }
}

/// A completion whose message content is the empty string, with a normal stop.
pub(crate) fn empty_body(id: u64, request: &ChatRequest) -> Value {
    success_body(id, request, &no_text())
}

/// A completion whose message is a tool call with no content, which a client that offered no
/// tools cannot use.
pub(crate) fn tool_call_body(id: u64, request: &ChatRequest) -> Value {
    let mut body = success_body(id, request, &no_text());
    body["choices"][0]["message"] = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{
            "id": "call_fake",
            "type": "function",
            "function": {"name": "noop", "arguments": "{}"},
        }],
    });
    body["choices"][0]["finish_reason"] = json!("tool_calls");
    body
}

/// The error `type` the real API pairs with each status; it files a missing or bad key
/// under `invalid_request_error` and says more in `code`.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn error_code(status: u16) -> Option<&'static str> {
    match status {
        401 => Some("invalid_api_key"),
        429 => Some("rate_limit_exceeded"),
        _ => None,
    }
}

pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": error_type(status),
        "param": null,
        "code": error_code(status),
    }})
}

/// The spend cap refusal's message; OpenAI's own wording, with the marker a client may look for.
pub(crate) const SPEND_LIMIT_MESSAGE: &str = "You exceeded your current quota, please check your \
     plan and billing details (enforced_spend_limit_reached; simulated by fakellm)";

/// OpenAI sends a spent quota as a 429 too, but typed and coded `insufficient_quota`, so a
/// client can tell it from a rate limit that waiting would lift.
pub(crate) fn quota_body(message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": "insufficient_quota",
        "param": null,
        "code": "insufficient_quota",
    }})
}

/// What is left of each limited dimension, under the names the real API uses; it counts input
/// and output tokens together, so its one token figure is their sum.
pub(crate) fn rate_limit_headers(left: &Remaining) -> Vec<(&'static str, String)> {
    let tokens = match (left.input_tokens, left.output_tokens) {
        (None, None) => None,
        (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
    };
    [
        ("x-ratelimit-remaining-requests", left.requests),
        ("x-ratelimit-remaining-tokens", tokens),
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
            "model": "gpt-x",
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "VERDICT: line"}]},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "Add login"}]},
            ]
        })
    }

    #[test]
    fn accepts_a_valid_request() {
        let req = parse_request(&valid()).unwrap();
        assert_eq!(req.model, "gpt-x");
        assert_eq!(
            req.max_tokens,
            Some(TokenCap {
                field: "max_tokens",
                value: 100
            })
        );
        assert_eq!(req.system_text, "be brief\nVERDICT: line");
        assert_eq!(req.messages_text, "first\nok\nAdd login");
        assert_eq!(req.last_user_text, "Add login");
        assert_eq!(
            req.input_chars,
            req.system_text.len() + req.messages_text.len()
        );
    }

    #[test]
    fn the_cap_is_optional_and_remembers_its_name() {
        let mut body = valid();
        body.as_object_mut().unwrap().remove("max_tokens");
        assert_eq!(parse_request(&body).unwrap().max_tokens, None);
        body["max_tokens"] = Value::Null;
        assert_eq!(parse_request(&body).unwrap().max_tokens, None);
        body["max_completion_tokens"] = json!(64);
        assert_eq!(
            parse_request(&body).unwrap().max_tokens,
            Some(TokenCap {
                field: "max_completion_tokens",
                value: 64
            })
        );
        body["max_tokens"] = json!(64);
        assert!(parse_request(&body).unwrap_err().contains("not both"));
    }

    #[test]
    fn rejects_invalid_requests() {
        let cases: Vec<(&str, Value)> = vec![
            ("model", json!(null)),
            ("model", json!("")),
            ("model", json!(3)),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(-5)),
            ("max_tokens", json!(1.5)),
            ("max_tokens", json!("10")),
            ("max_completion_tokens", json!(0)),
            ("messages", json!([])),
            ("messages", json!("hi")),
            ("messages", json!(["hi"])),
            ("messages", json!([{"content": "x"}])),
            ("messages", json!([{"role": "tool", "content": "x"}])),
            ("messages", json!([{"role": "user"}])),
            ("messages", json!([{"role": "user", "content": 5}])),
            (
                "messages",
                json!([{"role": "user", "content": [{"type": "text"}]}]),
            ),
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
    fn bodies_have_the_real_shapes() {
        let req = parse_request(&valid()).unwrap();
        let answer = Answer {
            text: "x".repeat(40),
            truncated: false,
        };
        let body = success_body(3, &req, &answer);
        assert_eq!(body["id"], "chatcmpl-fake-3");
        assert_eq!(body["object"], "chat.completion");
        assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 10);
        let cut = Answer {
            truncated: true,
            ..answer
        };
        let body = success_body(4, &req, &cut);
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 100);
        assert_eq!(
            body["usage"]["total_tokens"],
            body["usage"]["prompt_tokens"].as_u64().unwrap() + 100
        );
        assert_eq!(
            error_body(429, "slow"),
            json!({"error": {"message": "slow", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(
            error_body(401, "k")["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(error_body(503, "x")["error"]["type"], "server_error");
        assert!(error_body(400, "x")["error"]["code"].is_null());
    }

    #[test]
    fn quota_errors_are_typed_apart_from_rate_limits() {
        let body = quota_body(SPEND_LIMIT_MESSAGE);
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert_eq!(body["error"]["code"], "insufficient_quota");
        assert!(body["error"]["param"].is_null());
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("enforced_spend_limit_reached")
        );
    }

    #[test]
    fn remaining_headers_sum_the_token_dimensions() {
        let all = Remaining {
            requests: Some(4),
            input_tokens: Some(900),
            output_tokens: Some(100),
        };
        assert_eq!(
            rate_limit_headers(&all),
            [
                ("x-ratelimit-remaining-requests", "4".to_string()),
                ("x-ratelimit-remaining-tokens", "1000".to_string()),
            ]
        );
        let input_only = Remaining {
            requests: None,
            input_tokens: Some(900),
            output_tokens: None,
        };
        assert_eq!(
            rate_limit_headers(&input_only),
            [("x-ratelimit-remaining-tokens", "900".to_string())]
        );
        let requests_only = Remaining {
            requests: Some(0),
            input_tokens: None,
            output_tokens: None,
        };
        assert_eq!(
            rate_limit_headers(&requests_only),
            [("x-ratelimit-remaining-requests", "0".to_string())]
        );
    }

    #[test]
    fn textless_completions_keep_the_envelope() {
        let req = parse_request(&valid()).unwrap();
        let empty = empty_body(1, &req);
        assert_eq!(
            empty["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}])
        );
        let odd = tool_call_body(2, &req);
        let choice = &odd["choices"][0];
        assert!(choice["message"]["content"].is_null());
        assert_eq!(choice["message"]["tool_calls"][0]["type"], "function");
        assert_eq!(choice["finish_reason"], "tool_calls");
        let mut body = success_body(3, &req, &no_text());
        set_output_tokens(&mut body, 40);
        assert_eq!(body["usage"]["completion_tokens"], 40);
        assert_eq!(
            body["usage"]["total_tokens"],
            body["usage"]["prompt_tokens"].as_u64().unwrap() + 40
        );
    }

    fn head_with(auth: Option<&str>) -> Head {
        Head {
            method: "POST".into(),
            target: PATH.into(),
            headers: auth
                .map(|v| ("authorization".to_string(), v.to_string()))
                .into_iter()
                .collect(),
            leftover: Vec::new(),
        }
    }

    #[test]
    fn bearer_key_is_required() {
        assert!(check_headers(&head_with(Some("Bearer sk-1"))).is_ok());
        assert!(check_headers(&head_with(Some("bearer sk-1"))).is_ok());
        for bad in [
            None,
            Some("Bearer "),
            Some("Bearer"),
            Some("Basic abc"),
            Some("sk-1"),
        ] {
            assert_eq!(
                check_headers(&head_with(bad)).map_err(|r| r.status),
                Err(401),
                "{bad:?}"
            );
        }
    }
}
