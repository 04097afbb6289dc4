//! Admin requests on a reactor. The reactor holding the operator's
//! request parks it (it reads nothing more), sends the [`Ask`] to every
//! reactor's mailbox (its own included, so every reactor does the same
//! work the same way) and answers once all replied, or after
//! [`ADMIN_WAIT_MS`] with what came (`partial`). `/debug/fds` waits the
//! same way for a census thread instead of the reactors.
//!
//! Each reactor's share is bounded: a report is one pass over its slab
//! keeping the top N in a heap of N (N ≤ `admin::MAX_TOP`), then N rows;
//! a disconnect ends at most `admin::MAX_DISCONNECTS` streams and says how
//! many more matched. At most [`MAX_ADMIN_WAITS`] admin requests wait on
//! one reactor at a time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Parked, Waiting, Worker};
use crate::admin::{
    Answer, Ask, ConnRow, Disconnect, Gathered, Report, ReportQuery, Selector, Sort, TopN,
    MAX_CHANNELS_SHOWN, MAX_DISCONNECTS, WS_CLOSE_OPERATOR,
};
use crate::api::admin::AdminStart;
use crate::conn::{Conn, ConnState, Stamp};
use crate::limits::IpKey;
use crate::mailbox::{ConnRef, Msg};
use crate::metrics::WorkerStats;
use crate::proto::http::{self, HttpError};

/// How long an admin request waits for the reactors' answers.
const ADMIN_WAIT_MS: u64 = 2_000;
/// How long `/debug/fds` waits for its census (then 503).
const CENSUS_WAIT_MS: u64 = 10_000;
/// Admin requests waiting on one reactor at once; more get a 503.
pub(super) const MAX_ADMIN_WAITS: usize = 8;

/// An admin request parked while the reactors answer.
pub struct AdminWait {
    ask: Arc<Ask>,
    gathered: Gathered,
    keep_alive: bool,
}

impl Worker {
    /// Parks the request and sends its ask to the reactors it concerns.
    pub(super) fn start_admin(&mut self, key: usize, gen: u32, start: AdminStart, now: u64) {
        if self.admin_waits >= MAX_ADMIN_WAITS {
            let err = HttpError::new(503, "admin_busy", "too many admin requests at once");
            let bytes = http::error_response(&err, start.keep_alive, &["Retry-After: 1".into()]);
            return self.answer_parked(key, Bytes::from(bytes), start.keep_alive, now);
        }
        let reply = self.conn_ref(key, gen);
        let (asked, wait_ms) = match *start.ask {
            Ask::Fds => (usize::from(self.spawn_census(reply)), CENSUS_WAIT_MS),
            _ => (self.ask_reactors(&start, reply), ADMIN_WAIT_MS),
        };
        let wait = AdminWait {
            ask: start.ask,
            gathered: Gathered::new(asked),
            keep_alive: start.keep_alive,
        };
        if asked == 0 {
            return self.answer_admin(key, wait, now);
        }
        self.admin_waits += 1;
        self.park_until(key, Waiting::Admin(wait), now + wait_ms);
    }

    /// Sends the ask to the reactors it concerns; how many took it (a full
    /// inbox refuses).
    fn ask_reactors(&self, start: &AdminStart, reply: ConnRef) -> usize {
        let targets = match start.only {
            Some(id) => id..id + 1,
            None => 0..self.shared.reactor_count(),
        };
        let ask = |id: usize| {
            let msg = Msg::Admin {
                ask: start.ask.clone(),
                reply,
            };
            self.shared.mailbox(id).is_some_and(|m| m.send(msg))
        };
        targets.filter(|&id| ask(id)).count()
    }

    /// Takes the fd census on a thread of its own, which answers `reply`
    /// like a reactor; false when no thread could start. At most
    /// [`MAX_ADMIN_WAITS`] per reactor run at once.
    fn spawn_census(&self, reply: ConnRef) -> bool {
        let shared = self.shared.clone();
        let census = move || {
            let answer = Answer::Fds(shared.fd_report());
            if let Some(mailbox) = shared.mailbox(reply.reactor) {
                mailbox.send(Msg::AdminAnswer {
                    conn: reply,
                    answer,
                });
            }
        };
        let spawned = std::thread::Builder::new()
            .name("redix-fd-census".into())
            .spawn(census);
        if let Err(e) = &spawned {
            log::warn!("reactor {}: cannot start the fd census: {e}", self.id);
        }
        spawned.is_ok()
    }

    /// Does this reactor's share of an ask and sends the answer back.
    pub(super) fn on_admin(&mut self, ask: &Ask, reply: ConnRef) {
        let now = self.now_ms();
        let answer = match ask {
            Ask::Disconnect(d) => self.disconnect_matching(d, now),
            Ask::Report(q) => Answer::Report(Box::new(self.report(q, now))),
            // Never sent to a reactor (see `spawn_census`).
            Ask::Fds => return,
        };
        let msg = Msg::AdminAnswer {
            conn: reply,
            answer,
        };
        // A full inbox there: the request is answered as partial when its
        // wait runs out.
        if let Some(mailbox) = self.shared.mailbox(reply.reactor) {
            mailbox.send(msg);
        }
    }

    /// One reactor answered the admin request `conn` holds.
    pub(super) fn admin_answered(&mut self, conn: ConnRef, answer: Answer) {
        let (key, gen) = (conn.key, conn.gen);
        let Some(Parked {
            gen: parked_gen,
            what: Waiting::Admin(wait),
        }) = self.parked.get_mut(&key)
        else {
            return;
        };
        if *parked_gen != gen {
            return;
        }
        wait.gathered.add(answer, &wait.ask);
        if !wait.gathered.complete() {
            return;
        }
        if let Some(Waiting::Admin(wait)) = self.unpark(key, gen) {
            self.admin_waits -= 1;
            let now = self.now_ms();
            self.answer_admin(key, wait, now);
        }
    }

    /// The wait ran out: answer with what came.
    pub(super) fn admin_timeout(&mut self, key: usize, wait: AdminWait, now: u64) {
        self.admin_waits -= 1;
        self.answer_admin(key, wait, now);
    }

    /// A parked admin request went away without an answer.
    pub(super) fn admin_abandoned(&mut self) {
        self.admin_waits -= 1;
    }

    fn answer_admin(&mut self, key: usize, wait: AdminWait, now: u64) {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (status, body) = wait.gathered.render(&wait.ask, wall_ms);
        let bytes = http::response(
            status,
            "application/json",
            body.as_bytes(),
            wait.keep_alive,
            &[],
        );
        self.answer_parked(key, Bytes::from(bytes), wait.keep_alive, now);
    }

    /// Ends this reactor's streams that `d` selects, up to the cap.
    fn disconnect_matching(&mut self, d: &Disconnect, now: u64) -> Answer {
        let keys: Vec<usize> = match &d.selector {
            Selector::Conn(c) if c.reactor != self.id => Vec::new(),
            Selector::Conn(c) => match self.conns.get(c.key) {
                Some(conn) if conn.gen == c.gen && is_stream(conn) => vec![c.key],
                _ => Vec::new(),
            },
            Selector::Channel(ch) => match self.topics.get(ch) {
                Some(subs) => subs.iter().collect(),
                None => Vec::new(),
            },
            Selector::Ip(ip) => {
                let (ip, key) = (ip.to_canonical(), IpKey::of(*ip));
                self.matching(|c| {
                    c.peer.to_canonical() == ip || c.ip_slot.is_some_and(|(_, k)| k == key)
                })
            }
            Selector::Subject(s) => self.matching(|c| c.state.subject() == Some(s)),
        };
        let more = keys.len().saturating_sub(MAX_DISCONNECTS) as u64;
        let mut done = 0;
        for key in keys.into_iter().take(MAX_DISCONNECTS) {
            done += u64::from(self.operator_close(key, d, now));
        }
        WorkerStats::add(&self.stats().admin_disconnects, done);
        if done > 0 {
            log::info!(
                "reactor {}: an operator disconnected {done} streams ({:?}): {}",
                self.id,
                d.selector,
                d.reason
            );
        }
        Answer::Disconnected { done, more }
    }

    /// Keys of the streams for which `pred` holds.
    fn matching(&self, pred: impl Fn(&Conn) -> bool) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| is_stream(c) && pred(c))
            .map(|(k, _)| k)
            .collect()
    }

    /// Ends one stream for an operator: the data not yet started is
    /// dropped (a gzip stream keeps it: its trailer covers every byte)
    /// and the last frame names the resume point, as for a slow consumer.
    /// True when a stream was ended.
    fn operator_close(&mut self, key: usize, d: &Disconnect, now: u64) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let in_progress = conn.queue.in_progress_id();
        let Some(resume) = conn.state.delivery().map(|dl| dl.resume_id(in_progress)) else {
            return false;
        };
        let resume = match &conn.state {
            ConnState::Sse(sse) if sse.is_composite() => sse.composite_text(),
            _ => resume.map(|id| self.shared.hub.show_id(id)),
        };
        if matches!(conn.state, ConnState::Ws(_)) {
            let reason = d.ws_reason(resume.as_deref());
            self.close_ws(key, WS_CLOSE_OPERATOR, &reason, now);
            return true;
        }
        let ConnState::Sse(sse) = &mut conn.state else {
            return false;
        };
        // A composite cursor counts every event queued: keep them.
        let keep_queue = sse.is_gzip() || sse.is_composite();
        let last = sse.last(&d.sse_last(resume.as_deref()));
        self.close_gracefully(key, Some(last), !keep_queue, now);
        true
    }

    /// This reactor's top connections by `q.sort`, and its totals.
    fn report(&self, q: &ReportQuery, now: u64) -> Report {
        let mut top = TopN::new(q.top);
        let mut report = Report::default();
        for (key, conn) in &self.conns {
            let drops = conn.state.delivery().map_or(0, |d| u64::from(d.drops));
            let (bytes, events) = (conn.queue.len_bytes(), conn.queue.len_events());
            report
                .totals
                .count(transport(conn), bytes as u64, events as u64, drops);
            let score = match q.sort {
                Sort::Queue => bytes as u64,
                Sort::Drops => drops,
                Sort::Age => age_ms(conn, now),
                Sort::Idle => idle_ms(conn, now),
            };
            top.offer(score, key);
        }
        report.rows = top
            .into_sorted()
            .into_iter()
            .filter_map(|key| Some(self.row(key, self.conns.get(key)?, now)))
            .collect();
        report
    }

    fn row(&self, key: usize, conn: &Conn, now: u64) -> ConnRow {
        let subs = conn.state.subs();
        let delivery = conn.state.delivery();
        let peer = conn
            .stream
            .peer_addr()
            .map_or_else(|_| conn.peer.to_string(), |a| a.to_string());
        ConnRow {
            id: self.conn_ref(key, conn.gen),
            peer,
            transport: transport(conn),
            subject: conn.state.subject().cloned(),
            channels: subs
                .iter()
                .take(MAX_CHANNELS_SHOWN)
                .map(|s| s.channel.clone())
                .collect(),
            channel_count: subs.len(),
            queued_bytes: conn.queue.len_bytes() as u64,
            queued_events: conn.queue.len_events() as u64,
            drops: delivery.map_or(0, |d| u64::from(d.drops)),
            warnings: delivery.map_or(0, |d| u64::from(d.warnings)),
            age_ms: age_ms(conn, now),
            idle_ms: idle_ms(conn, now),
            last_write_ago_ms: conn.last_write.since(now),
        }
    }
}

fn is_stream(conn: &Conn) -> bool {
    matches!(conn.state, ConnState::Sse(_) | ConnState::Ws(_))
}

fn transport(conn: &Conn) -> &'static str {
    match conn.state {
        ConnState::Sse(_) => "sse",
        ConnState::Ws(_) => "ws",
        ConnState::Request(_) => "http",
        ConnState::Closing { .. } => "closing",
    }
}

fn age_ms(conn: &Conn, now: u64) -> u64 {
    conn.opened.since(now).unwrap_or(0)
}

/// Since when no byte moved on the connection, either way (or since it
/// was accepted).
fn idle_ms(conn: &Conn, now: u64) -> u64 {
    let ws_read = match &conn.state {
        ConnState::Ws(ws) => ws.last_seen,
        _ => Stamp::NEVER,
    };
    [conn.last_write, conn.last_read, ws_read]
        .iter()
        .filter_map(|stamp| stamp.since(now))
        .fold(age_ms(conn, now), u64::min)
}
