//! What the scenarios run against: one server (embedded redix, nchan), or in Redis mode a
//! redis-server and `--redis-nodes` redix nodes using it, ready when every node's `/readyz`
//! says 200. Subscribers are split over the nodes, the publisher posts to the first.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, Mode, Transport};
use crate::peers::http_status;
use crate::server::{Kind, Server};
use crate::support::spawn::{interrupted, tail_file};
use crate::Res;

/// What the scenarios run against: one server (embedded redix, nchan), or in Redis mode a
/// redis-server and `--redis-nodes` redix nodes using it. Subscribers are split over `nodes`,
/// the publisher posts to `nodes[0]`.
pub struct Deployment {
    pub kind: Kind,
    pub mode: Mode,
    pub nodes: Vec<Server>,
    pub redis: Option<Server>,
}

impl Deployment {
    pub fn start(kind: Kind, mode: Mode, a: &Args, tr: Transport) -> Res<Deployment> {
        let mut d = Deployment {
            kind,
            mode,
            nodes: vec![],
            redis: None,
        };
        match (kind, mode) {
            (Kind::Redix, Mode::Embedded) => d.nodes.push(Server::start_redix(a, tr, None)?),
            (Kind::Redix, Mode::Redis) => {
                let redis = Server::start_redis(a)?;
                let url = format!("redis://{}", redis.addr);
                d.redis = Some(redis);
                for i in 0..a.redis_nodes.max(1) {
                    d.nodes.push(Server::start_redix(a, tr, Some((i, &url)))?);
                }
                d.wait_redis_ready(Instant::now() + Duration::from_secs(30))?;
            }
            (Kind::Nchan, _) => d.nodes.push(Server::start_nchan(a)?),
            (Kind::Redis | Kind::FinnhubSim, _) => {
                return Err(format!("{} is not a load target", kind.name()))
            }
        }
        Ok(d)
    }

    /// Redis mode: every node's `/readyz` says 200 (a canary went through Redis pub/sub).
    fn wait_redis_ready(&mut self, until: Instant) -> Res<()> {
        for i in 0..self.nodes.len() {
            loop {
                let last = match http_status(self.nodes[i].addr, "/readyz") {
                    Ok(200) => break,
                    Ok(st) => format!("HTTP {st}"),
                    Err(e) => e,
                };
                self.check_alive()?;
                if Instant::now() > until || interrupted() {
                    return Err(format!(
                        "node {} ({}) /readyz not 200 within 30 s (last: {last}); stderr tail:\n{}",
                        node_name(i),
                        self.nodes[i].addr,
                        self.nodes[i]
                            .log
                            .as_deref()
                            .map(|p| tail_file(p, 20))
                            .unwrap_or_default()
                    ));
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The node the publisher posts to (the only node in embedded mode).
    pub fn primary(&self) -> &Server {
        &self.nodes[0]
    }

    pub fn check_alive(&mut self) -> Res<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.check_alive().map_err(|e| match self.mode {
                Mode::Embedded => e,
                Mode::Redis => format!("node {}: {e}", node_name(i)),
            })?;
        }
        if let Some(r) = &mut self.redis {
            r.check_alive()?;
        }
        Ok(())
    }

    /// Every process measured: (name, pid); the redix nodes first, then redis-server.
    pub fn procs(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("node {}", node_name(i)), n.pid))
            .collect();
        v.extend(
            self.redis
                .iter()
                .map(|r| (r.kind.name().to_string(), r.pid)),
        );
        v
    }

    pub fn note(&self) -> String {
        match self.mode {
            Mode::Embedded => self.nodes[0].note.clone(),
            Mode::Redis => {
                let mut s = self
                    .redis
                    .as_ref()
                    .map(|r| r.note.clone())
                    .unwrap_or_default();
                for (i, n) in self.nodes.iter().enumerate() {
                    let _ = write!(s, "; node {} on {}: {}", node_name(i), n.addr, n.note);
                }
                s
            }
        }
    }

    /// Stops the nodes, then redis-server; how each ended.
    pub fn stop(&mut self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let m = n.stop();
            parts.push(match self.mode {
                Mode::Embedded => m,
                Mode::Redis => format!("node {}: {m}", node_name(i)),
            });
        }
        if let Some(r) = &mut self.redis {
            parts.push(format!("redis-server: {}", r.stop()));
        }
        parts.join("; ")
    }
}

/// "A", "B", … for node 0, 1, …
pub fn node_name(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        i.to_string()
    }
}
