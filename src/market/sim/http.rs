//! The plain-HTTP side of the simulator's port: reading a request head
//! without consuming it (the WebSocket handshake needs it intact), and the
//! `/stats` and `/control/*` routes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Longest request head the simulator reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request body it reads (and ignores) on a control request.
const MAX_BODY: usize = 64 * 1024;

/// The request line and what the simulator needs of the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub content_length: usize,
}

/// Parses a complete head; `Ok(None)` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    let content_length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some(Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        len,
        content_length,
    }))
}

/// Peeks until a whole head is buffered, the deadline passes or `stop`
/// says so. `None`: no usable head (the caller closes).
pub fn peek_head(stream: &TcpStream, deadline: Instant, stop: impl Fn() -> bool) -> Option<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    while Instant::now() < deadline && !stop() {
        match stream.peek(&mut buf) {
            Ok(0) => return None,
            Ok(n) => match parse_head(&buf[..n]) {
                Ok(Some(head)) => return Some(head),
                Ok(None) if n == MAX_HEAD => return None,
                // peek returns at once while bytes wait: let more arrive.
                Ok(None) if n == seen => std::thread::sleep(super::TICK),
                Ok(None) => seen = n,
                Err(_) => return None,
            },
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    None
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What a control route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Drop,
    Stall,
    Unstall,
    Refuse,
    Accept,
}

/// Which plain-HTTP route a head names; `None`: not one (a WebSocket request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Stats,
    Control(Control),
    /// A known path with the wrong method.
    MethodNotAllowed,
    /// Under `/control/` but no such control.
    NotFound,
}

pub fn route(head: &Head) -> Option<Route> {
    let path = head.path.split('?').next().unwrap_or("");
    let get = head.method == "GET";
    let post = head.method == "POST";
    if path == "/stats" {
        return Some(if get {
            Route::Stats
        } else {
            Route::MethodNotAllowed
        });
    }
    let name = path.strip_prefix("/control/")?;
    let control = match name {
        "drop" => Control::Drop,
        "stall" => Control::Stall,
        "unstall" => Control::Unstall,
        "refuse" => Control::Refuse,
        "accept" => Control::Accept,
        _ => return Some(Route::NotFound),
    };
    Some(if post {
        Route::Control(control)
    } else {
        Route::MethodNotAllowed
    })
}

/// Consumes the peeked head (and a small body), writes the answer, closes.
/// Unread bytes at close would make the kernel send a reset that can
/// overtake the answer.
pub fn respond(mut stream: TcpStream, head: &Head, status: &str, body: &str, deadline: Instant) {
    let mut left = head.len + head.content_length.min(MAX_BODY);
    let mut scratch = [0u8; 4096];
    while left > 0 && Instant::now() < deadline {
        match stream.read(&mut scratch[..left.min(4096)]) {
            Ok(0) => break,
            Ok(n) => left -= n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str) -> Head {
        Head {
            method: method.into(),
            path: path.into(),
            len: 0,
            content_length: 0,
        }
    }

    #[test]
    fn parses_heads() {
        assert_eq!(parse_head(b"GET /stats HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let raw = b"POST /control/drop HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            parse_head(raw),
            Ok(Some(Head {
                method: "POST".into(),
                path: "/control/drop".into(),
                len: raw.len() - 3,
                content_length: 3,
            }))
        );
        assert!(parse_head(b"\x16\x03\x01 tls hello\r\n\r\n").is_err());
    }

    #[test]
    fn routes() {
        let cases = [
            ("GET", "/stats", Some(Route::Stats)),
            ("GET", "/stats?x=1", Some(Route::Stats)),
            ("POST", "/stats", Some(Route::MethodNotAllowed)),
            ("POST", "/control/drop", Some(Route::Control(Control::Drop))),
            (
                "POST",
                "/control/stall",
                Some(Route::Control(Control::Stall)),
            ),
            (
                "POST",
                "/control/unstall",
                Some(Route::Control(Control::Unstall)),
            ),
            (
                "POST",
                "/control/refuse",
                Some(Route::Control(Control::Refuse)),
            ),
            (
                "POST",
                "/control/accept",
                Some(Route::Control(Control::Accept)),
            ),
            ("GET", "/control/drop", Some(Route::MethodNotAllowed)),
            ("POST", "/control/explode", Some(Route::NotFound)),
            ("GET", "/?token=abc", None),
            ("GET", "/ws", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&head(method, path)), want, "{method} {path}");
        }
    }
}
