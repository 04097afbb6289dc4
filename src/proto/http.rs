//! HTTP/1.1 request heads and responses over byte buffers.
//!
//! No sockets, no clock: [`parse_head`] looks at whatever bytes have arrived
//! and answers `Ok(None)` while the head is incomplete, so partial and
//! pipelined input are the caller's buffer bookkeeping only. Only the
//! headers redix acts on are kept, so a parsed head owns a few small strings.

use std::fmt::Write as _;

/// Most headers one request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// The parts of a request head that redix uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub method: Option<Method>,
    /// Path without the query string, still percent-encoded.
    pub path: String,
    /// Raw query string (after `?`), empty when absent.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub content_length: usize,
    pub chunked: bool,
    /// The connection should stay open after the response.
    pub keep_alive: bool,
    /// `Connection: upgrade` was present.
    pub connection_upgrade: bool,
    pub upgrade: Option<String>,
    pub last_event_id: Option<String>,
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    pub forwarded_for: Option<String>,
    /// A `Forwarded` or `X-Real-IP` header came: a proxy forwarded this.
    pub forwarded: bool,
    pub accept_encoding: Option<String>,
    pub origin: Option<String>,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub ws_extensions: Option<String>,
}

impl Head {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// The credential presented as `Authorization: Bearer …` or `X-API-Key`.
    pub fn credential(&self) -> Option<&str> {
        if let Some(auth) = &self.authorization {
            let (scheme, rest) = auth.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(rest.trim());
            }
        }
        self.api_key.as_deref()
    }
}

/// A request that cannot be served, with the status that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more (unless `buf` already holds
/// `max_head` bytes, which is a 431). `Err`: answer with the error and close.
pub fn parse_head(buf: &[u8], max_head: usize, max_body: usize) -> Result<Option<Head>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let status = req.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => {
            HttpError::new(431, "headers_too_large", "too many request headers")
        }
        e => HttpError::new(400, "bad_request", format!("malformed request: {e}")),
    })?;
    let len = match status {
        httparse::Status::Complete(n) if n > max_head => return Err(head_too_large(max_head)),
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= max_head => return Err(head_too_large(max_head)),
        httparse::Status::Partial => return Ok(None),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let version = req.version.unwrap_or(1);
    let mut head = Head {
        method: Some(match req.method.unwrap_or("") {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        }),
        path: path.to_string(),
        query: query.to_string(),
        version,
        len,
        keep_alive: version == 1,
        ..Head::default()
    };
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| {
                let why = format!("header {} is not UTF-8", h.name);
                HttpError::new(400, "bad_request", why)
            })?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(content_length_of(value, content_length)?);
        } else {
            apply_header(&mut head, h.name, value);
        }
    }
    check_body(&mut head, content_length, max_body)?;
    Ok(Some(head))
}

/// A `Content-Length` value; a second one must agree with the first.
fn content_length_of(value: &str, before: Option<usize>) -> Result<usize, HttpError> {
    // Digits only (RFC 9110 §8.6): Rust's integer parse would take `+5`.
    let invalid = || HttpError::new(400, "bad_request", "invalid Content-Length");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: usize = value.parse().map_err(|_| invalid())?;
    if before.is_some_and(|old| old != n) {
        return Err(HttpError::new(
            400,
            "bad_request",
            "conflicting Content-Length",
        ));
    }
    Ok(n)
}

/// Records what one header (other than `Content-Length`) says.
fn apply_header(head: &mut Head, name: &str, value: &str) {
    if name.eq_ignore_ascii_case("transfer-encoding") {
        head.chunked = true;
    } else if name.eq_ignore_ascii_case("forwarded") || name.eq_ignore_ascii_case("x-real-ip") {
        head.forwarded = true;
    } else if name.eq_ignore_ascii_case("connection") {
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                head.connection_upgrade = true;
            }
        }
    } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
        // Several headers are one comma-separated list (RFC 9110 §5.3).
        match &mut head.ws_extensions {
            Some(list) => {
                list.push_str(", ");
                list.push_str(value);
            }
            None => head.ws_extensions = Some(value.to_string()),
        }
    } else if let Some(slot) = match_header(head, name) {
        *slot = Some(value.to_string());
    }
}

/// The body's framing: a length, no chunked bodies, at most `max_body`.
fn check_body(head: &mut Head, length: Option<usize>, max_body: usize) -> Result<(), HttpError> {
    if head.chunked {
        return Err(HttpError::new(
            411,
            "length_required",
            "chunked request bodies are not accepted; send Content-Length",
        ));
    }
    head.content_length = length.unwrap_or(0);
    if head.content_length > max_body {
        return Err(HttpError::new(
            413,
            "body_too_large",
            format!("request body over {max_body} bytes"),
        ));
    }
    Ok(())
}

fn match_header<'a>(head: &'a mut Head, name: &str) -> Option<&'a mut Option<String>> {
    let table: [(&str, &mut Option<String>); 9] = [
        ("upgrade", &mut head.upgrade),
        ("last-event-id", &mut head.last_event_id),
        ("authorization", &mut head.authorization),
        ("x-api-key", &mut head.api_key),
        ("x-forwarded-for", &mut head.forwarded_for),
        ("accept-encoding", &mut head.accept_encoding),
        ("origin", &mut head.origin),
        ("sec-websocket-key", &mut head.ws_key),
        ("sec-websocket-version", &mut head.ws_version),
    ];
    table
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, slot)| slot)
}

fn head_too_large(max: usize) -> HttpError {
    HttpError::new(
        431,
        "headers_too_large",
        format!("request head over {max} bytes"),
    )
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| percent_decode(k).as_deref() == Some(name))
        .and_then(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` and `+`; `None` for bad escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response with a body; `extra` are whole header lines without CRLF.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &[String],
) -> Vec<u8> {
    let mut head = String::with_capacity(128 + extra.len() * 32);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The JSON error body every endpoint uses: `{"error":{"code","message"}}`.
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "error": { "code": code, "message": message } })
        .to_string()
        .into_bytes()
}

/// A JSON error response.
pub fn error_response(err: &HttpError, keep_alive: bool, extra: &[String]) -> Vec<u8> {
    response(
        err.status,
        "application/json",
        &error_body(err.code, &err.message),
        keep_alive,
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 8192;
    const MAX_BODY: usize = 65536;

    fn parse(raw: &str) -> Result<Option<Head>, HttpError> {
        parse_head(raw.as_bytes(), MAX_HEAD, MAX_BODY)
    }

    #[test]
    fn complete_head_with_query_and_headers() {
        let h =
            parse("GET /api/stream?channels=a,b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.method(), Method::Get);
        assert_eq!(h.path, "/api/stream");
        assert_eq!(h.query, "channels=a,b");
        assert_eq!(h.last_event_id.as_deref(), Some("7"));
        assert!(h.keep_alive);
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let raw = "POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        let h = parse(raw).unwrap().unwrap();
        assert_eq!((h.len, h.content_length), (raw.len(), 2));
    }

    #[test]
    fn errors_carry_their_status() {
        let table: [(&str, u16); 9] = [
            ("GARBAGE\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -0\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            ("GET / HTTP/1.1\r\nHost: x\r\n", 0),
        ];
        for (raw, status) in table {
            match parse(raw) {
                Err(e) => assert_eq!(e.status, status, "{raw:?}"),
                Ok(None) => assert_eq!(status, 0, "{raw:?}"),
                Ok(Some(_)) => panic!("{raw:?} parsed"),
            }
        }
    }

    #[test]
    fn oversized_heads_are_431_even_when_incomplete() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&big).unwrap_err().status, 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n"))
                .unwrap_err()
                .status,
            431
        );
    }

    #[test]
    fn connection_tokens_and_versions() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive && h.connection_upgrade);
        let h = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn repeated_extension_headers_join() {
        let raw = "GET /ws HTTP/1.1\r\nSec-WebSocket-Extensions: a\r\nSec-WebSocket-Extensions: b; x=1\r\n\r\n";
        let h = parse(raw).unwrap().unwrap();
        assert_eq!(h.ws_extensions.as_deref(), Some("a, b; x=1"));
    }

    #[test]
    fn credentials_from_bearer_or_header() {
        let h = parse("GET / HTTP/1.1\r\nAuthorization: Bearer k1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.credential(), Some("k1"));
        let h = parse("GET / HTTP/1.1\r\nX-API-Key: k2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.credential(), Some("k2"));
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param("channels=a%2Cb&x=1", "channels").as_deref(),
            Some("a,b")
        );
        assert_eq!(
            query_param("a=1&lastEventId=9", "lastEventId").as_deref(),
            Some("9")
        );
        assert_eq!(query_param("flag", "flag").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn responses_frame_their_body() {
        let r = response(
            200,
            "application/json",
            b"{}",
            false,
            &["Retry-After: 1".into()],
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\nRetry-After: 1\r\n\r\n{}"));
        let e = String::from_utf8(error_body("x", "y\"z")).unwrap();
        assert_eq!(e, r#"{"error":{"code":"x","message":"y\"z"}}"#);
    }
}
