//! The WebSocket JSON protocol: client commands parsed and checked into a
//! [`WsRequest`], and the JSON replies encoded as text frames. Pure: the
//! reactor (`reactor/websocket.rs`) runs the requests.
//!
//! Commands: `{"type":"subscribe","channel":"c","since":"<id>"}` (or
//! `"symbol":"AAPL"` for `trades:AAPL`), `unsubscribe`, `ping`, and
//! `{"type":"auth","token":"<JWT>"}` (token mode: a fresh token for the
//! same subject, before the current one expires).

use bytes::Bytes;
use serde::Deserialize;

use crate::hub::check_channel;
use crate::hub::ids::Format;
use crate::proto::ws;

/// Longest market symbol (`BINANCE:BTCUSDT` and the like).
const MAX_SYMBOL_LEN: usize = 32;

#[derive(Deserialize)]
struct Command {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    symbol: Option<String>,
    /// Resume point: replay the channel's events after this id.
    since: Option<String>,
    /// `auth`: the subscription token.
    token: Option<String>,
}

/// A checked command.
#[derive(Debug, PartialEq, Eq)]
pub enum WsRequest {
    Ping,
    Subscribe { channel: String, since: Option<u64> },
    Unsubscribe { channel: String },
    Auth { token: String },
}

/// A command's error: code and message, sent back as an `error` reply.
pub type CommandError = (&'static str, String);

/// Reads one text message; ids (`since`) are read in the node's `format`.
pub fn parse(text: &str, format: Format) -> Result<WsRequest, CommandError> {
    let cmd: Command = serde_json::from_str(text).map_err(|e| ("bad_json", e.to_string()))?;
    match cmd.kind.as_str() {
        "ping" => Ok(WsRequest::Ping),
        "subscribe" => {
            let channel = target_channel(&cmd).map_err(|m| ("bad_request", m))?;
            let since = parse_since(cmd.since.as_deref(), format)?;
            Ok(WsRequest::Subscribe { channel, since })
        }
        "unsubscribe" => {
            let channel = target_channel(&cmd).map_err(|m| ("bad_request", m))?;
            Ok(WsRequest::Unsubscribe { channel })
        }
        "auth" => match cmd.token {
            Some(token) if !token.is_empty() => Ok(WsRequest::Auth { token }),
            _ => Err(("bad_request", "auth needs a \"token\"".into())),
        },
        other => Err(("unknown_type", format!("unknown message type {other:?}"))),
    }
}

/// The `since` of a subscribe: an event id redix gave out (or `0`).
fn parse_since(since: Option<&str>, format: Format) -> Result<Option<u64>, CommandError> {
    match since.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => format.parse_cursor(v).map(Some).ok_or_else(|| {
            (
                "bad_cursor",
                format!("since {v:?} is not an event id redix gave out"),
            )
        }),
    }
}

/// The channel a subscribe/unsubscribe command names.
fn target_channel(cmd: &Command) -> Result<String, String> {
    match (&cmd.channel, &cmd.symbol) {
        (Some(ch), None) => check_channel(ch).map(|_| ch.clone()),
        (None, Some(sym)) => {
            let ok = |c: char| c.is_ascii_alphanumeric() || ".:-_".contains(c);
            if sym.is_empty() || sym.len() > MAX_SYMBOL_LEN || !sym.chars().all(ok) {
                return Err(format!(
                    "symbols are 1 to {MAX_SYMBOL_LEN} of A-Z a-z 0-9 . : - _"
                ));
            }
            Ok(format!("trades:{sym}"))
        }
        _ => Err("name exactly one of \"channel\" or \"symbol\"".into()),
    }
}

fn json_frame(value: serde_json::Value) -> Bytes {
    Bytes::from(ws::text(&value.to_string()))
}

pub fn error_frame(code: &str, message: &str) -> Bytes {
    json_frame(serde_json::json!({ "type": "error", "code": code, "message": message }))
}

/// An error about a channel's upstream, sent to its subscribers.
pub fn channel_error_frame(channel: &str, code: &str, message: &str) -> Bytes {
    json_frame(serde_json::json!({
        "type": "error", "code": code, "message": message, "channel": channel,
    }))
}

pub fn pong_frame() -> Bytes {
    json_frame(serde_json::json!({"type": "pong"}))
}

pub fn subscribed_frame(channel: &str) -> Bytes {
    json_frame(serde_json::json!({"type": "subscribed", "channel": channel}))
}

pub fn unsubscribed_frame(channel: &str) -> Bytes {
    json_frame(serde_json::json!({"type": "unsubscribed", "channel": channel}))
}

/// A token refresh was accepted: it holds until `exp` (Unix seconds).
pub fn authorized_frame(exp: u64) -> Bytes {
    json_frame(serde_json::json!({"type": "authorized", "exp": exp}))
}

/// A refreshed token no longer allows `channel`: its subscription ended.
pub fn revoked_frame(channel: &str) -> Bytes {
    json_frame(serde_json::json!({
        "type": "unsubscribed", "channel": channel, "reason": "channel_not_allowed",
    }))
}

/// Events of `channel` were lost before they reached this client.
pub fn reset_frame(channel: &str) -> Bytes {
    json_frame(serde_json::json!({"type": "reset", "channel": channel}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let sub = |c: &str, since| WsRequest::Subscribe {
            channel: c.into(),
            since,
        };
        let table: &[(&str, Result<WsRequest, &str>)] = &[
            (r#"{"type":"ping"}"#, Ok(WsRequest::Ping)),
            (r#"{"type":"subscribe","channel":"a"}"#, Ok(sub("a", None))),
            (
                r#"{"type":"subscribe","channel":"a","since":"42"}"#,
                Ok(sub("a", Some(42))),
            ),
            (
                r#"{"type":"subscribe","symbol":"AAPL"}"#,
                Ok(sub("trades:AAPL", None)),
            ),
            (
                r#"{"type":"unsubscribe","channel":"a"}"#,
                Ok(WsRequest::Unsubscribe {
                    channel: "a".into(),
                }),
            ),
            (
                r#"{"type":"subscribe","channel":"a","symbol":"B"}"#,
                Err("bad_request"),
            ),
            (r#"{"type":"subscribe","symbol":"a b"}"#, Err("bad_request")),
            (
                r#"{"type":"subscribe","channel":"a","since":"x"}"#,
                Err("bad_cursor"),
            ),
            (r#"{"type":"dance"}"#, Err("unknown_type")),
            (
                r#"{"type":"auth","token":"a.b.c"}"#,
                Ok(WsRequest::Auth {
                    token: "a.b.c".into(),
                }),
            ),
            (r#"{"type":"auth"}"#, Err("bad_request")),
            (r#"{"type":"auth","token":""}"#, Err("bad_request")),
            ("not json", Err("bad_json")),
        ];
        for (text, want) in table {
            let got = parse(text, Format::Decimal).map_err(|(code, _)| code);
            assert_eq!(&got, want, "{text}");
        }
        // A cursor in the other mode's format is refused.
        let stream = r#"{"type":"subscribe","channel":"a","since":"5-1"}"#;
        assert!(parse(stream, Format::Decimal).is_err());
        assert!(parse(stream, Format::Stream).is_ok());
        let plain = r#"{"type":"subscribe","channel":"a","since":"18446744073709551615"}"#;
        assert_eq!(
            parse(plain, Format::Stream).map_err(|e| e.0),
            Err("bad_cursor")
        );
    }
}
