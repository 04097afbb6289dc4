//! HTTP/1.1 as text, without sockets: finding things in a response head, framing a response
//! (Content-Length, chunked, or until EOF), reading a head incrementally, and the requests
//! the benches send (a JSON POST, redix's publish body). Leaf module (std and serde_json).

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// The value of header `name` (any case) in a response head; the status line is skipped.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The status code of a response head; 0 when there is none.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Does the head say `Transfer-Encoding: chunked`?
pub fn is_chunked(head: &str) -> bool {
    header_value(head, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
}

/// One complete response at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// bytes it takes, head and body
    pub len: usize,
    /// where the body starts
    pub body: usize,
    pub status: u16,
    /// the server will close the connection after it
    pub close: bool,
}

/// One complete response at the start of `buf`; None while incomplete. Bodies framed by
/// Content-Length or chunked; anything else is read until EOF (`eof`).
pub fn parse_response(buf: &[u8], eof: bool) -> Option<Result<Response, String>> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(e) => e,
        None if buf.len() > 64 * 1024 => return Some(Err("response headers over 64 KiB".into())),
        None => return None,
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let Some(status) = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u16>().ok())
    else {
        return Some(Err(format!(
            "bad status line: {}",
            head.lines().next().unwrap_or("")
        )));
    };
    let close = header_value(&head, "connection")
        .map(|v| v.eq_ignore_ascii_case("close"))
        .unwrap_or(false)
        || head.starts_with("HTTP/1.0");
    let body = end + 4;
    let done = |len, close| {
        Some(Ok(Response {
            len,
            body,
            status,
            close,
        }))
    };
    if let Some(cl) = header_value(&head, "content-length") {
        let Ok(cl) = cl.parse::<usize>() else {
            return Some(Err("bad content-length".into()));
        };
        return if buf.len() >= body + cl {
            done(body + cl, close)
        } else {
            None
        };
    }
    if is_chunked(&head) {
        return find(&buf[body..], b"0\r\n\r\n").and_then(|e| done(body + e + 5, close));
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return done(body, close);
    }
    if eof {
        done(buf.len(), true)
    } else {
        None
    }
}

/// Collects a response head that may arrive in pieces.
#[derive(Default)]
pub struct HeadReader {
    buf: Vec<u8>,
}

impl HeadReader {
    /// Heads longer than this are refused.
    pub const MAX: usize = 16 * 1024;

    /// Adds `data`; once the head is complete returns it (without the blank line) and the
    /// bytes after it.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(String, Vec<u8>)>, String> {
        self.buf.extend_from_slice(data);
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > Self::MAX {
                return Err("response headers over 16 KiB".into());
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let rest = self.buf.split_off(end + 4);
        self.buf = Vec::new();
        Ok(Some((head, rest)))
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// A `POST path` with a JSON body.
pub fn post_json(host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of redix's `POST /api/publish`: `{"channel":…,"data":<data>}`.
pub fn publish_body(channel: &str, data: &str) -> String {
    format!(
        "{{\"channel\":{},\"data\":{data}}}",
        serde_json::Value::from(channel)
    )
}
