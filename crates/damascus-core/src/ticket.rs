//! Validation of what a user submits as a ticket, so bad input is refused before it reaches a table.

use std::fmt;

/// Longest title we accept; titles end up in prompts and log lines, so they stay short.
pub const MAX_TITLE_CHARS: usize = 500;

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    EmptyTitle,
    EmptyBody,
    TitleTooLong(usize),
    /// The body's size in bytes and the limit (`damascus.max_body_bytes`).
    BodyTooLarge {
        bytes: usize,
        limit: usize,
    },
    NulByte(&'static str),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::EmptyTitle => write!(f, "title is empty"),
            SubmitError::EmptyBody => write!(f, "body is empty"),
            SubmitError::TitleTooLong(n) => {
                write!(
                    f,
                    "title has {n} characters, the limit is {MAX_TITLE_CHARS}"
                )
            }
            SubmitError::BodyTooLarge { bytes, limit } => {
                write!(
                    f,
                    "body has {bytes} bytes, the limit (damascus.max_body_bytes) is {limit}"
                )
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

/// Checks a submission the way `damascus_submit` promises: a non-blank title and body, a title of at most
/// `MAX_TITLE_CHARS` characters and a body of at most `max_body_bytes` bytes.
pub fn validate_submission(
    title: &str,
    body: &str,
    priority: i32,
    max_body_bytes: usize,
) -> Result<NewTicket, SubmitError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(SubmitError::EmptyTitle);
    }
    if body.trim().is_empty() {
        return Err(SubmitError::EmptyBody);
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
    if body.len() > max_body_bytes {
        return Err(SubmitError::BodyTooLarge {
            bytes: body.len(),
            limit: max_body_bytes,
        });
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

    const MB: usize = 1024 * 1024;

    #[test]
    fn trims_title_and_keeps_body() {
        let t = validate_submission("  Add a health endpoint ", "GET /healthz", 5, MB).unwrap();
        assert_eq!(t.title, "Add a health endpoint");
        assert_eq!(t.body, "GET /healthz");
        assert_eq!(t.priority, 5);
    }

    #[test]
    fn refuses_blank_title_or_body() {
        assert_eq!(
            validate_submission(" \t\n", "x", 0, MB),
            Err(SubmitError::EmptyTitle)
        );
        assert_eq!(
            validate_submission("t", " \n", 0, MB),
            Err(SubmitError::EmptyBody)
        );
    }

    #[test]
    fn refuses_oversized_fields() {
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(
            validate_submission(&long, "b", 0, MB),
            Err(SubmitError::TitleTooLong(MAX_TITLE_CHARS + 1))
        );
        // The body limit counts bytes: 'é' is two.
        let body = "é".repeat(50);
        assert_eq!(
            validate_submission("t", &body, 0, 99),
            Err(SubmitError::BodyTooLarge {
                bytes: 100,
                limit: 99
            })
        );
        assert!(validate_submission("t", &body, 0, 100).is_ok());
    }
}
