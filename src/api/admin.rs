//! The admin API (scope `admin`): `POST /api/admin/disconnect` ends the
//! streams a selector matches with a reconnect hint, and
//! `GET /debug/connections` lists the top connections by a sort key.
//! Both need every reactor's answer: the handler checks the request and
//! returns [`Action::Admin`]; the reactor asks its peers through their
//! mailboxes and answers when all replied (`reactor/admin.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::answers::Reject;
use super::{Action, Ctx};
use crate::admin::{
    Ask, ConnId, Disconnect, ReportQuery, Selector, Sort, DEFAULT_TOP, MAX_REASON_BYTES,
    MAX_RETRY_MS, MAX_TOP,
};
use crate::hub::check_channel;
use crate::proto::http::{query_param, Head};

/// Longest subject accepted in a disconnect.
const MAX_SUBJECT_BYTES: usize = 256;

/// An admin request for the reactors.
#[derive(Debug)]
pub struct AdminStart {
    pub ask: Arc<Ask>,
    /// Ask only this reactor (a disconnect by connection id); else all.
    pub only: Option<usize>,
    pub keep_alive: bool,
}

/// `POST /api/admin/disconnect`'s body: exactly one selector, a reason,
/// and an optional reconnect hint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    channel: Option<String>,
    ip: Option<String>,
    subject: Option<String>,
    connection: Option<String>,
    reason: String,
    retry_ms: Option<u64>,
}

fn bad(code: &'static str, message: impl Into<String>) -> Reject {
    Reject::new(400, code, message)
}

/// `POST /api/admin/disconnect` (the caller checked the scope).
pub fn disconnect(head: &Head, body: &[u8], ctx: &Ctx<'_>) -> Result<Action, Reject> {
    let req: DisconnectBody = serde_json::from_slice(body)
        .map_err(|e| bad("bad_json", format!("disconnect body: {e}")))?;
    if req.reason.trim().is_empty() || req.reason.len() > MAX_REASON_BYTES {
        let why = format!("give a reason of 1 to {MAX_REASON_BYTES} bytes");
        return Err(bad("bad_reason", why));
    }
    if req.retry_ms.is_some_and(|ms| ms > MAX_RETRY_MS) {
        let why = format!("retry_ms is at most {MAX_RETRY_MS}");
        return Err(bad("bad_retry", why));
    }
    let (selector, only) = selector(&req, ctx)?;
    let ask = Ask::Disconnect(Disconnect {
        selector,
        reason: Arc::from(req.reason.trim()),
        retry_ms: req.retry_ms,
    });
    Ok(Action::Admin(AdminStart {
        ask: Arc::new(ask),
        only,
        keep_alive: head.keep_alive,
    }))
}

/// The one selector of a disconnect, and the reactor to ask when it names
/// a connection.
fn selector(req: &DisconnectBody, ctx: &Ctx<'_>) -> Result<(Selector, Option<usize>), Reject> {
    let named = [&req.channel, &req.ip, &req.subject, &req.connection];
    if named.iter().filter(|s| s.is_some()).count() != 1 {
        let why = "name exactly one of \"channel\", \"ip\", \"subject\" or \"connection\"";
        return Err(bad("bad_request", why));
    }
    if let Some(ch) = &req.channel {
        check_channel(ch).map_err(|m| bad("bad_channel", m))?;
        return Ok((Selector::Channel(Arc::from(ch.as_str())), None));
    }
    if let Some(ip) = &req.ip {
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| bad("bad_ip", format!("{ip:?} is not an IP address")))?;
        return Ok((Selector::Ip(ip), None));
    }
    if let Some(subject) = &req.subject {
        if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
            let why = format!("subjects are 1 to {MAX_SUBJECT_BYTES} bytes");
            return Err(bad("bad_subject", why));
        }
        return Ok((Selector::Subject(Arc::from(subject.as_str())), None));
    }
    let id = req.connection.as_deref().unwrap_or_default();
    let conn = ConnId::parse(id).ok_or_else(|| {
        let why = format!("{id:?} is not a connection id (see /debug/connections)");
        bad("bad_connection", why)
    })?;
    if conn.reactor >= ctx.shared.reactor_count() {
        let why = "no open stream has this connection id";
        return Err(Reject::new(404, "not_found", why));
    }
    Ok((Selector::Conn(conn), Some(conn.reactor)))
}

/// `GET /debug/connections?top=N&sort=queue|drops|age|idle` (the caller
/// checked the scope).
pub fn connections(head: &Head) -> Result<Action, Reject> {
    let top = match query_param(&head.query, "top") {
        None => DEFAULT_TOP,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => return Err(bad("bad_top", format!("top is 1 to {MAX_TOP}"))),
        },
    };
    let sort = match query_param(&head.query, "sort") {
        None => Sort::Queue,
        Some(v) => Sort::parse(&v)
            .ok_or_else(|| bad("bad_sort", "sort is one of queue, drops, age, idle"))?,
    };
    Ok(Action::Admin(AdminStart {
        ask: Arc::new(Ask::Report(ReportQuery { top, sort })),
        only: None,
        keep_alive: head.keep_alive,
    }))
}
