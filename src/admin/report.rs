//! Reports of connections: one reactor's rows and totals, the bounded
//! top-N choice that makes them, and the merge of every reactor's answer
//! into the JSON the operator reads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Answer, Ask, ConnId, Selector, Sort};
use crate::mailbox::ConnRef;

/// One connection as `/debug/connections` shows it. Times are ms.
#[derive(Debug, Clone)]
pub struct ConnRow {
    pub id: ConnRef,
    /// `ip:port` of the TCP peer.
    pub peer: String,
    /// `sse`, `ws`, `http` (a request connection) or `closing`.
    pub transport: &'static str,
    pub subject: Option<Arc<str>>,
    /// The first [`super::MAX_CHANNELS_SHOWN`] channels.
    pub channels: Vec<Arc<str>>,
    pub channel_count: usize,
    pub queued_bytes: u64,
    pub queued_events: u64,
    pub drops: u64,
    pub warnings: u64,
    pub age_ms: u64,
    pub idle_ms: u64,
    /// Since the last write that moved bytes; `None`: nothing written yet.
    pub last_write_ago_ms: Option<u64>,
}

impl ConnRow {
    /// The row's value for `sort` (larger ranks first).
    pub fn score(&self, sort: Sort) -> u64 {
        match sort {
            Sort::Queue => self.queued_bytes,
            Sort::Drops => self.drops,
            Sort::Age => self.age_ms,
            Sort::Idle => self.idle_ms,
        }
    }

    fn to_json(&self, wall_now_ms: u64) -> Value {
        json!({
            "id": ConnId(self.id).to_string(),
            "peer": self.peer,
            "transport": self.transport,
            "subject": self.subject.as_deref(),
            "channels": self.channels.iter().map(|c| &**c).collect::<Vec<_>>(),
            "channel_count": self.channel_count,
            "queued_bytes": self.queued_bytes,
            "queued_events": self.queued_events,
            "drops": self.drops,
            "warnings": self.warnings,
            "age_ms": self.age_ms,
            "idle_ms": self.idle_ms,
            "last_write_ago_ms": self.last_write_ago_ms,
            "last_write_unix_ms": self.last_write_ago_ms.map(|ago| wall_now_ms.saturating_sub(ago)),
        })
    }
}

/// Counts over every connection of a reactor (or all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub http: u64,
    pub sse: u64,
    pub ws: u64,
    pub closing: u64,
    pub queued_bytes: u64,
    pub queued_events: u64,
    pub drops: u64,
}

impl Totals {
    /// Counts one connection.
    pub fn count(
        &mut self,
        row_transport: &str,
        queued_bytes: u64,
        queued_events: u64,
        drops: u64,
    ) {
        self.connections += 1;
        match row_transport {
            "sse" => self.sse += 1,
            "ws" => self.ws += 1,
            "closing" => self.closing += 1,
            _ => self.http += 1,
        }
        self.queued_bytes += queued_bytes;
        self.queued_events += queued_events;
        self.drops += drops;
    }

    fn add(&mut self, o: &Totals) {
        self.connections += o.connections;
        self.http += o.http;
        self.sse += o.sse;
        self.ws += o.ws;
        self.closing += o.closing;
        self.queued_bytes += o.queued_bytes;
        self.queued_events += o.queued_events;
        self.drops += o.drops;
    }
}

/// One reactor's report: its top rows (best first) and its totals.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<ConnRow>,
    pub totals: Totals,
}

/// The `n` largest of a stream of `(score, item)`, in O(stream · log n)
/// time and O(n) memory: a min-heap whose root is the one to beat.
pub struct TopN<T: Ord> {
    n: usize,
    heap: BinaryHeap<Reverse<(u64, T)>>,
}

impl<T: Ord> TopN<T> {
    pub fn new(n: usize) -> TopN<T> {
        TopN {
            n,
            heap: BinaryHeap::with_capacity(n.min(super::MAX_TOP) + 1),
        }
    }

    pub fn offer(&mut self, score: u64, item: T) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() < self.n {
            return self.heap.push(Reverse((score, item)));
        }
        if self
            .heap
            .peek()
            .is_some_and(|Reverse((low, _))| score > *low)
        {
            self.heap.pop();
            self.heap.push(Reverse((score, item)));
        }
    }

    /// The items kept, largest score first.
    pub fn into_sorted(self) -> Vec<T> {
        let mut all: Vec<(u64, T)> = self.heap.into_iter().map(|Reverse(p)| p).collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        all.into_iter().map(|(_, item)| item).collect()
    }
}

/// The answers to one admin request as they come in from the reactors.
#[derive(Debug)]
pub struct Gathered {
    pub asked: usize,
    pub answered: usize,
    done: u64,
    more: u64,
    rows: Vec<ConnRow>,
    totals: Totals,
    fds: Option<Value>,
}

impl Gathered {
    pub fn new(asked: usize) -> Gathered {
        Gathered {
            asked,
            answered: 0,
            done: 0,
            more: 0,
            rows: Vec::new(),
            totals: Totals::default(),
            fds: None,
        }
    }

    /// Adds one reactor's answer; rows beyond `top` are let go at once so
    /// the merge never holds more than `2 × top` of them.
    pub fn add(&mut self, answer: Answer, ask: &Ask) {
        self.answered += 1;
        match answer {
            Answer::Disconnected { done, more } => {
                self.done += done;
                self.more += more;
            }
            Answer::Report(report) => {
                self.totals.add(&report.totals);
                self.rows.extend(report.rows);
                if let Ask::Report(q) = ask {
                    self.rows
                        .sort_by_key(|r| (Reverse(r.score(q.sort)), r.id.reactor, r.id.key));
                    self.rows.truncate(q.top);
                }
            }
            Answer::Fds(report) => self.fds = Some(report),
        }
    }

    pub fn complete(&self) -> bool {
        self.answered >= self.asked
    }

    /// The HTTP status and JSON body of the answer. A disconnect of one
    /// connection id that ended nothing is a 404, a census that did not
    /// finish a 503; anything else is a 200 with `partial` set when a
    /// reactor did not answer in time.
    pub fn render(&self, ask: &Ask, wall_now_ms: u64) -> (u16, String) {
        let reactors = json!({"asked": self.asked, "answered": self.answered});
        let partial = !self.complete();
        let body = match ask {
            Ask::Disconnect(d) => {
                let not_found = matches!(d.selector, Selector::Conn(_)) && self.done == 0;
                if not_found && !partial {
                    let error = json!({"error": {"code": "not_found",
                        "message": "no open stream has this connection id"}});
                    return (404, error.to_string());
                }
                json!({
                    "disconnected": self.done, "more": self.more,
                    "reactors": reactors, "partial": partial,
                })
            }
            Ask::Report(q) => {
                let t = &self.totals;
                json!({
                    "sort": q.sort.name(), "top": q.top,
                    "reactors": reactors, "partial": partial,
                    "totals": {
                        "connections": t.connections, "http": t.http, "sse": t.sse,
                        "ws": t.ws, "closing": t.closing, "queued_bytes": t.queued_bytes,
                        "queued_events": t.queued_events, "drops": t.drops,
                    },
                    "connections": self.rows.iter().map(|r| r.to_json(wall_now_ms)).collect::<Vec<_>>(),
                })
            }
            Ask::Fds => match &self.fds {
                Some(report) => report.clone(),
                None => {
                    let error = json!({"error": {"code": "census_timeout",
                        "message": "the fd census did not finish in time"}});
                    return (503, error.to_string());
                }
            },
        };
        (200, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReportQuery;
    use super::*;

    fn row(reactor: usize, key: usize, queued_bytes: u64) -> ConnRow {
        ConnRow {
            id: ConnRef {
                reactor,
                key,
                gen: 1,
            },
            peer: "127.0.0.1:1".into(),
            transport: "sse",
            subject: None,
            channels: vec![Arc::from("c")],
            channel_count: 1,
            queued_bytes,
            queued_events: 1,
            drops: 0,
            warnings: 0,
            age_ms: 5,
            idle_ms: 5,
            last_write_ago_ms: Some(3),
        }
    }

    #[test]
    fn top_n_keeps_the_largest_in_order() {
        let mut top = TopN::new(3);
        for (score, key) in [(5, 1), (1, 2), (9, 3), (7, 4), (3, 5), (9, 6)] {
            top.offer(score, key);
        }
        assert_eq!(top.into_sorted(), vec![3, 6, 4]);
        let mut none = TopN::new(0);
        none.offer(1, 1);
        assert!(none.into_sorted().is_empty());
    }

    #[test]
    fn answers_merge_into_the_top_rows_and_totals() {
        let ask = Ask::Report(ReportQuery {
            top: 2,
            sort: Sort::Queue,
        });
        let mut g = Gathered::new(2);
        for (reactor, sizes) in [(0, [10, 300]), (1, [200, 5])] {
            let mut report = Report::default();
            for (key, size) in sizes.into_iter().enumerate() {
                report.rows.push(row(reactor, key, size));
                report.totals.count("sse", size, 1, 0);
            }
            assert!(!g.complete());
            g.add(Answer::Report(Box::new(report)), &ask);
        }
        assert!(g.complete());
        let (status, body) = g.render(&ask, 1_000);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200);
        let ids: Vec<&str> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["0-1-1", "1-0-1"]);
        assert_eq!(v["totals"]["queued_bytes"], 515);
        assert_eq!(v["totals"]["sse"], 4);
        assert_eq!(v["connections"][0]["last_write_unix_ms"], 997);
        assert_eq!(v["partial"], false);
    }

    #[test]
    fn a_connection_id_that_ended_nothing_is_not_found() {
        let ask = Ask::Disconnect(super::super::Disconnect {
            selector: Selector::Conn(ConnRef {
                reactor: 0,
                key: 1,
                gen: 1,
            }),
            reason: Arc::from("x"),
            retry_ms: None,
        });
        let mut g = Gathered::new(1);
        g.add(Answer::Disconnected { done: 0, more: 0 }, &ask);
        assert_eq!(g.render(&ask, 0).0, 404);
        let mut g = Gathered::new(1);
        g.add(Answer::Disconnected { done: 1, more: 0 }, &ask);
        let (status, body) = g.render(&ask, 0);
        assert_eq!((status, body.contains("\"disconnected\":1")), (200, true));
    }
}
