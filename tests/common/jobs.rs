//! Job clients: a summarize request, a job stream read to its end, the
//! text its tokens make.

use std::net::SocketAddr;

use serde_json::Value;

use super::http::{raw_exchange, status_of};
use super::sse::SseClient;

/// One event of a job stream as a client sees it: (id, event name, data).
pub type JobEvent = (String, String, Value);

/// `POST /api/summarize{query}` for `url`: (status, JSON body, head).
pub fn summarize(addr: SocketAddr, url: &str, query: &str) -> (u16, Value, String) {
    let body = serde_json::json!({ "url": url }).to_string();
    let path = format!("/api/summarize{query}");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = raw_exchange(addr, req.as_bytes());
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status_of(&text), json, head.to_string())
}

/// The next event of a job stream, `None` when the server ended it.
pub fn next_job_event(c: &mut SseClient) -> Option<JobEvent> {
    let ev = c.next_message()?;
    let v: Value = serde_json::from_str(&ev.data).expect("json");
    let kind = ev.event.clone().unwrap_or_default();
    Some((ev.id.unwrap_or_default(), kind, v["data"].clone()))
}

/// Every event of a job stream until the server ends it after `done` or
/// `error` (asserted).
pub fn read_job(c: &mut SseClient) -> Vec<JobEvent> {
    let mut out = Vec::new();
    while let Some(ev) = next_job_event(c) {
        let end = ev.1 == "done" || ev.1 == "error";
        out.push(ev);
        if end {
            assert!(
                c.next_event().is_none(),
                "the stream ends after {}",
                out[out.len() - 1].1
            );
            break;
        }
    }
    out
}

/// The text of the `token` events, in order.
pub fn text_of(events: &[JobEvent]) -> String {
    events
        .iter()
        .filter(|(_, kind, _)| kind == "token")
        .map(|(_, _, d)| d["text"].as_str().unwrap_or_default())
        .collect()
}
