//! Minimal HTTP/1.1 framing: reading one request (head + Content-Length body) and writing one response.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Larger bodies get 413; no real prompt damascus sends comes near this.
pub(crate) const MAX_BODY: usize = 8 * 1024 * 1024;

/// Bounds memory for a client that streams header bytes forever.
const MAX_HEAD: usize = 64 * 1024;

/// A refusal before any answer is chosen. It carries no error type because each wire format
/// names its error types differently; the format that answers derives one from the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client vanished or stalled; there is nobody sensible to answer.
    Io,
    /// The bytes were not an acceptable request; answer with this.
    Reject(Rejection),
}

/// The request line and headers, plus any body bytes that arrived with them.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub leftover: Vec<u8>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query string, for routing.
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }
}

/// Reads up to and including the blank line that ends the head.
pub(crate) fn read_head(stream: &mut impl Read) -> Result<Head, ReadError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((head_end, body_start)) = find_head_end(&buf) {
            let mut head = parse_head(&buf[..head_end]).map_err(ReadError::Reject)?;
            head.leftover = buf[body_start..].to_vec();
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(Rejection::new(
                431,
                "request head exceeds 64 KiB",
            )));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
}

/// Finds the blank line ending the head; bare LF line endings are tolerated because
/// hand-written test clients often send them. Returns (end of head, start of body).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        let rest = &buf[i + 1..];
        if rest.starts_with(b"\r\n") {
            Some((i + 1, i + 3))
        } else if rest.starts_with(b"\n") {
            Some((i + 1, i + 2))
        } else {
            None
        }
    })
}

fn parse_head(bytes: &[u8]) -> Result<Head, Rejection> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Rejection::bad("request head is not valid UTF-8"))?;
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines
        .next()
        .ok_or_else(|| Rejection::bad("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::bad(format!(
            "malformed request line {request_line:?}"
        )));
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || target.is_empty()
        || !version.starts_with("HTTP/1.")
    {
        return Err(Rejection::bad(format!(
            "malformed request line {request_line:?}"
        )));
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .filter(|(n, _)| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_whitespace()))
            .ok_or_else(|| Rejection::bad(format!("malformed header line {line:?}")))?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        leftover: Vec::new(),
    })
}

/// The declared body length; absent means empty, and conflicting values are refused
/// because they are the classic request-smuggling ambiguity.
fn content_length(head: &Head) -> Result<usize, Rejection> {
    let mut found: Option<usize> = None;
    for (_, value) in head.headers.iter().filter(|(n, _)| n == "content-length") {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::bad(format!("invalid Content-Length {value:?}")));
        }
        // All digits but unparsable can only mean astronomically large.
        let len = value.parse::<usize>().unwrap_or(usize::MAX);
        if found.is_some_and(|f| f != len) {
            return Err(Rejection::bad("conflicting Content-Length headers"));
        }
        found = Some(len);
    }
    Ok(found.unwrap_or(0))
}

/// Reads exactly the declared body. `Err(Io)` means the client went away mid-body.
pub(crate) fn read_body(stream: &mut TcpStream, head: &Head) -> Result<Vec<u8>, ReadError> {
    if head.header("transfer-encoding").is_some() {
        return Err(ReadError::Reject(Rejection::new(
            411,
            "chunked request bodies are not supported; send Content-Length",
        )));
    }
    let len = content_length(head).map_err(ReadError::Reject)?;
    if len > MAX_BODY {
        return Err(ReadError::Reject(Rejection::new(
            413,
            format!("request body of {len} bytes exceeds the 8 MiB limit"),
        )));
    }
    let mut body = head.leftover.clone();
    body.truncate(len);
    if body.len() < len {
        // curl and others pause before sending a large body until told to go ahead.
        let expects_continue = head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue {
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Io)?;
        }
        let have = body.len();
        body.resize(len, 0);
        stream
            .read_exact(&mut body[have..])
            .map_err(|_| ReadError::Io)?;
    }
    Ok(body)
}

/// One complete response; `connection` and `content-length` are always added. The body is bytes,
/// not text, because some simulated failures are precisely bodies that are not UTF-8.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// The status line and headers of `resp`, declaring `content_length` rather than the length of
/// `resp.body`, so a body written piecewise (or never finished) can be announced up front.
pub(crate) fn head_bytes(resp: &Response, content_length: u64, keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str(&format!("content-length: {content_length}\r\n"));
    out.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    out.into_bytes()
}

/// Writes the whole response in one buffer so it leaves in as few segments as possible; `keep_alive` says
/// whether the connection stays open for another request.
pub(crate) fn write_response(
    stream: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
) -> io::Result<()> {
    let len = u64::try_from(resp.body.len()).unwrap_or(u64::MAX);
    let mut out = head_bytes(resp, len, keep_alive);
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)?;
    stream.flush()
}

/// Closing a socket with unread input makes the kernel send RST, which can destroy the
/// response before the client reads it; so after an early refusal, half-close and swallow
/// what the client is still sending, within bounds.
pub(crate) fn linger_close(stream: &mut TcpStream) {
    const LIMIT: usize = 2 * MAX_BODY;
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    while total < LIMIT && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(raw: &str) -> Result<Head, ReadError> {
        read_head(&mut raw.as_bytes())
    }

    #[test]
    fn parses_head_and_keeps_leftover_body() {
        let head = head_of(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nX-Api-Key:  k \r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path(), "/v1/messages");
        assert_eq!(head.header("x-api-key"), Some("k"));
        assert_eq!(head.headers[0], ("host".to_string(), "x".to_string()));
        assert_eq!(head.leftover, b"{\"a\":1}");
    }

    #[test]
    fn tolerates_bare_lf() {
        let head = head_of("GET / HTTP/1.0\nA: b\n\n").unwrap();
        assert_eq!(head.header("a"), Some("b"));
    }

    #[test]
    fn rejects_malformed_heads() {
        for raw in [
            "NONSENSE\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
        ] {
            assert!(
                matches!(head_of(raw), Err(ReadError::Reject(r)) if r.status == 400),
                "{raw:?}"
            );
        }
        assert!(matches!(head_of("GET / HTTP/1.1\r\n"), Err(ReadError::Io)));
    }

    #[test]
    fn content_length_rules() {
        let head = |cl: &[&str]| Head {
            method: "POST".into(),
            target: "/".into(),
            headers: cl
                .iter()
                .map(|v| ("content-length".to_string(), v.to_string()))
                .collect(),
            leftover: Vec::new(),
        };
        assert_eq!(content_length(&head(&[])), Ok(0));
        assert_eq!(content_length(&head(&["12", "12"])), Ok(12));
        assert!(content_length(&head(&["12", "13"])).is_err());
        assert!(content_length(&head(&["-1"])).is_err());
        assert!(content_length(&head(&["+1"])).is_err());
        assert_eq!(
            content_length(&head(&["99999999999999999999999"])),
            Ok(usize::MAX)
        );
    }
}
