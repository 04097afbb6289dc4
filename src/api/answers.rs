//! The HTTP answers redix gives: JSON errors (`{"error":{"code","message"}}`
//! with their extra headers), JSON successes, and the answers the reactor
//! queues itself once a parked request is settled (a publish through
//! Redis, a 503 when Redis cannot serve).

use super::Action;
use crate::proto::http::{self, Head, HttpError};

/// An error answer, with any extra headers it needs.
pub struct Reject {
    err: HttpError,
    pub extra: Vec<String>,
}

impl Reject {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Reject {
        Reject {
            err: HttpError::new(status, code, message),
            extra: Vec::new(),
        }
    }

    pub fn with_header(mut self, line: String) -> Reject {
        self.extra.push(line);
        self
    }

    pub fn into_action(self, head: &Head) -> Action {
        // A refused upgrade ends the connection: the client meant to leave HTTP.
        let keep_alive = head.keep_alive && !head.connection_upgrade;
        Action::Respond {
            bytes: http::error_response(&self.err, keep_alive, &self.extra),
            close: !keep_alive,
        }
    }
}

pub fn json_ok(head: &Head, body: String) -> Action {
    Action::Respond {
        bytes: http::response(
            200,
            "application/json",
            body.as_bytes(),
            head.keep_alive,
            &[],
        ),
        close: !head.keep_alive,
    }
}

/// 503 with a Retry-After: the client should come back shortly.
pub fn unavailable(code: &'static str, message: impl Into<String>) -> Reject {
    Reject::new(503, code, message).with_header("Retry-After: 1".into())
}

/// The 503 of a request that Redis could not serve.
pub fn redis_unavailable(message: &str, keep_alive: bool) -> Vec<u8> {
    let err = HttpError::new(503, "redis_unavailable", message.to_string());
    http::error_response(&err, keep_alive, &["Retry-After: 1".to_string()])
}

/// The 200 of a publish: the event id and whether it was a duplicate.
pub fn publish_ok(id: &str, channel: &str, duplicate: bool, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "id": id,
        "channel": channel,
        "duplicate": duplicate,
    });
    http::response(
        200,
        "application/json",
        body.to_string().as_bytes(),
        keep_alive,
        &[],
    )
}
