//! Server-Sent Events wire format (WHATWG HTML §9.2): pure byte builders.
//!
//! Every data event is one JSON line (compact JSON never contains a raw
//! newline), so an event is exactly `id:`, `event:` and one `data:` line.

use std::fmt::Write as _;

/// Response head of an event stream. The body is close-delimited: no
/// `Content-Length`, no chunking, so every byte after the head is events.
pub const HEAD: &str = "HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\n\r\n";

/// The same head for a gzip-encoded stream.
pub const HEAD_GZIP: &str = "HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\n\
Content-Encoding: gzip\r\n\
Vary: Accept-Encoding\r\n\r\n";

/// Heartbeat comment; ignored by EventSource, keeps proxies from timing out.
pub const PING: &[u8] = b": ping\n\n";

/// The first bytes of a stream's body: the reconnect delay.
pub fn retry(retry_ms: u64) -> Vec<u8> {
    format!("retry: {retry_ms}\n\n").into_bytes()
}

/// One data event: `id`, event name and a single-line JSON payload.
pub fn event(id: &str, name: &str, json: &str) -> Vec<u8> {
    let mut s = String::with_capacity(json.len() + name.len() + 40);
    let _ = write!(s, "id: {id}\nevent: {name}\ndata: {json}\n\n");
    s.into_bytes()
}

/// The last event of a stream closed as too slow. It carries the id to
/// resume from, also as `id:` so EventSource sends it back on reconnect.
pub fn slow(last_id: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(96);
    if let Some(id) = last_id {
        let _ = writeln!(s, "id: {id}");
    }
    let resume = last_id.map_or("null".to_string(), |id| format!("\"{id}\""));
    let _ = write!(
        s,
        "event: slow\ndata: {{\"reason\":\"slow consumer\",\"lastEventId\":{resume}}}\n\n"
    );
    s.into_bytes()
}

/// Tells a resuming client that events of `channel` after its cursor are
/// gone from history: it should reload that channel's state. No `id:`, so
/// the client's resume point stays where it was.
/// `event: error` for a stream's channel (its upstream failed); `code`
/// and `message` are JSON-escaped.
pub fn error(channel: &str, code: &str, message: &str) -> Vec<u8> {
    let data = serde_json::json!({"channel": channel, "code": code, "message": message});
    format!("event: error\ndata: {data}\n\n").into_bytes()
}

pub fn reset(channel: &str) -> Vec<u8> {
    format!("event: reset\ndata: {{\"channel\":\"{channel}\",\"reason\":\"history\"}}\n\n")
        .into_bytes()
}

/// The last event of a stream whose subscription token expired: open it
/// again with a fresh token from `lastEventId` (also sent as `id:`, so the
/// cursor survives in an `EventSource`), and nothing is lost.
pub fn token_expired(last_id: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(96);
    if let Some(id) = last_id {
        let _ = writeln!(s, "id: {id}");
    }
    let resume = last_id.map_or("null".to_string(), |id| format!("\"{id}\""));
    let _ = write!(
        s,
        "event: token_expired\ndata: {{\"reason\":\"token_expired\",\"lastEventId\":{resume}}}\n\n"
    );
    s.into_bytes()
}

/// The last event of a stream closed by a shutdown: reconnect after `retry_ms`.
pub fn reconnect(retry_ms: u64) -> Vec<u8> {
    format!("retry: {retry_ms}\nevent: reconnect\ndata: {{\"reason\":\"shutdown\"}}\n\n")
        .into_bytes()
}

/// The last event of a stream an operator ended (`POST
/// /api/admin/disconnect`): `retry:` when the operator gave a reconnect
/// hint, `id:` the resume point (EventSource sends it back as
/// `Last-Event-ID`), then `event: reconnect` with the reason.
pub fn operator_reconnect(retry_ms: Option<u64>, last_id: Option<&str>, message: &str) -> Vec<u8> {
    let mut s = String::with_capacity(128 + message.len());
    if let Some(ms) = retry_ms {
        let _ = writeln!(s, "retry: {ms}");
    }
    if let Some(id) = last_id {
        let _ = writeln!(s, "id: {id}");
    }
    let data = serde_json::json!({
        "reason": "operator", "message": message, "retry": retry_ms, "lastEventId": last_id,
    });
    let _ = write!(s, "event: reconnect\ndata: {data}\n\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn event_lines() {
        assert_eq!(
            text(event("7", "message", r#"{"a":1}"#)),
            "id: 7\nevent: message\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn heads_and_retry() {
        assert!(HEAD.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(
            HEAD_GZIP.contains("Content-Encoding: gzip\r\n") && HEAD_GZIP.ends_with("\r\n\r\n")
        );
        assert_eq!(text(retry(2500)), "retry: 2500\n\n");
    }

    #[test]
    fn slow_carries_resume_id() {
        assert_eq!(
            text(slow(Some("42"))),
            "id: 42\nevent: slow\ndata: {\"reason\":\"slow consumer\",\"lastEventId\":\"42\"}\n\n"
        );
        assert!(text(slow(None)).starts_with("event: slow\n"));
        assert!(text(reconnect(1234)).starts_with("retry: 1234\nevent: reconnect\n"));
        assert_eq!(
            text(token_expired(Some("7"))),
            "id: 7\nevent: token_expired\ndata: {\"reason\":\"token_expired\",\"lastEventId\":\"7\"}\n\n"
        );
        assert!(text(token_expired(None)).ends_with("\"lastEventId\":null}\n\n"));
    }

    #[test]
    fn an_operator_reconnect_carries_the_hint_and_the_resume_point() {
        assert_eq!(
            text(operator_reconnect(Some(500), Some("9"), "rebalance")),
            "retry: 500\nid: 9\nevent: reconnect\ndata: {\"reason\":\"operator\",\"message\":\"rebalance\",\"retry\":500,\"lastEventId\":\"9\"}\n\n"
        );
        let bare = text(operator_reconnect(None, None, "a\nb"));
        assert!(bare.starts_with("event: reconnect\ndata: {"), "{bare}");
        assert_eq!(
            bare.matches('\n').count(),
            3,
            "the message stays on the data line"
        );
    }
}
