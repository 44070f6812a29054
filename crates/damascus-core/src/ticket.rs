//! Validation of what a user submits as a ticket, so bad input is refused before it reaches a table.

use std::fmt;

/// Longest title we accept; titles end up in prompts and log lines, so they stay short.
pub const MAX_TITLE_CHARS: usize = 500;
/// Longest body we accept; a body far beyond this would not fit any model's context anyway.
pub const MAX_BODY_CHARS: usize = 100_000;

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    EmptyTitle,
    TitleTooLong(usize),
    BodyTooLong(usize),
    NulByte(&'static str),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::EmptyTitle => write!(f, "title is empty"),
            SubmitError::TitleTooLong(n) => {
                write!(
                    f,
                    "title has {n} characters, the limit is {MAX_TITLE_CHARS}"
                )
            }
            SubmitError::BodyTooLong(n) => {
                write!(f, "body has {n} characters, the limit is {MAX_BODY_CHARS}")
            }
            SubmitError::NulByte(field) => write!(f, "{field} contains a NUL character"),
        }
    }
}

/// A submission that passed validation; the title is trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket {
    pub title: String,
    pub body: String,
    pub priority: i32,
}

/// Checks a submission the way `damascus_submit` promises: a non-blank title, bounded sizes.
pub fn validate_submission(
    title: &str,
    body: &str,
    priority: i32,
) -> Result<NewTicket, SubmitError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(SubmitError::EmptyTitle);
    }
    if title.contains('\0') {
        return Err(SubmitError::NulByte("title"));
    }
    if body.contains('\0') {
        return Err(SubmitError::NulByte("body"));
    }
    let title_chars = title.chars().count();
    if title_chars > MAX_TITLE_CHARS {
        return Err(SubmitError::TitleTooLong(title_chars));
    }
    let body_chars = body.chars().count();
    if body_chars > MAX_BODY_CHARS {
        return Err(SubmitError::BodyTooLong(body_chars));
    }
    Ok(NewTicket {
        title: title.to_string(),
        body: body.to_string(),
        priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_title_and_keeps_body() {
        let t = validate_submission("  Add a health endpoint ", "GET /healthz", 5).unwrap();
        assert_eq!(t.title, "Add a health endpoint");
        assert_eq!(t.body, "GET /healthz");
        assert_eq!(t.priority, 5);
    }

    #[test]
    fn refuses_blank_title() {
        assert_eq!(
            validate_submission(" \t\n", "x", 0),
            Err(SubmitError::EmptyTitle)
        );
    }

    #[test]
    fn refuses_oversized_fields() {
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(
            validate_submission(&long, "", 0),
            Err(SubmitError::TitleTooLong(MAX_TITLE_CHARS + 1))
        );
        let body = "é".repeat(MAX_BODY_CHARS + 1);
        assert_eq!(
            validate_submission("t", &body, 0),
            Err(SubmitError::BodyTooLong(MAX_BODY_CHARS + 1))
        );
        // The limit counts characters, not bytes.
        let body = "é".repeat(MAX_BODY_CHARS);
        assert!(validate_submission("t", &body, 0).is_ok());
    }
}
