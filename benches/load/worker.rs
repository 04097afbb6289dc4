//! The subscriber side of the generator: `--threads` mio event loops, each owning its share
//! of the connections (at most `--connect-concurrency` being set up at once, bounded
//! retries), counters per thread summed into `Shared` once per loop iteration. `ConnSet`
//! starts the threads over a deployment's nodes and collects their histograms.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::cli::{Args, Transport};
use crate::conn::{Conn, Outcome, St};
use crate::deployment::Deployment;
use crate::hist::{Hists, Tally};
use crate::server::{Kind, Server};
use crate::support::spawn::interrupted;
use crate::support::ws;
use crate::Res;

/// Hands out loopback source addresses 127.0.0.2, 127.0.0.3, …, never reusing one within a run
/// (so TIME_WAIT from an earlier scenario never gets in the way).
pub struct SrcAlloc {
    pub next: u32,
}

impl SrcAlloc {
    pub fn take(&mut self) -> Ipv4Addr {
        loop {
            let v = 0x7f00_0000u32 + self.next;
            self.next += 1;
            let low = v & 0xff;
            if low != 0 && low != 255 && v != 0x7f00_0001 {
                return Ipv4Addr::from(v);
            }
        }
    }
}

pub struct Shared {
    pub stop: AtomicBool,
    pub base: Instant,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub dropped: AtomicUsize,
    /// of those, streams the server announced as slow consumers before closing them
    pub slow_closed: AtomicUsize,
    pub retries: AtomicUsize,
    pub events: AtomicU64,
    pub stale: AtomicU64,
    pub bytes: AtomicU64,
    /// ns since `base` when the last connection became ready
    pub last_ready_ns: AtomicU64,
    /// unix ns of the last counted delivery
    pub last_recv_ns: AtomicU64,
    /// events whose "t" is older than this are counted as stale, not as deliveries
    pub pub_start_ns: AtomicU64,
    pub first_err: Mutex<Option<String>>,
    pub errors: AtomicUsize,
    /// connections ready, per node
    pub node_ready: Vec<AtomicUsize>,
}

impl Shared {
    fn err(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut g = self.first_err.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
    }
}

/// Where one node's connections go and what they send.
struct NodeTarget {
    addr: SocketAddr,
    /// the SSE request (unused for WebSocket)
    req: Vec<u8>,
    /// Some: WebSocket connections
    ws: Option<Arc<ws::Config>>,
}

/// What the connections read: the bench's events (`"t"` in ns, one per event) or market
/// trades (`"t"` in ms, one per trade, several per event).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Events,
    Trades,
}

#[derive(Clone)]
struct WorkerCfg {
    nodes: Arc<Vec<NodeTarget>>,
    /// (source address, node index) of each of this thread's connections
    conns: Vec<(Ipv4Addr, usize)>,
    need_retry: bool,
    concurrency: usize,
    attempts: u32,
    connect_timeout: Duration,
    feed: Feed,
}

/// This thread's counts since they were last added to `Shared`.
#[derive(Default)]
struct Counts {
    ready: usize,
    failed: usize,
    dropped: usize,
    slow_closed: usize,
    retries: usize,
    /// ns since `Shared::base` when the last connection became ready
    last_ready: u64,
}

/// One generator thread: its connections, the ones waiting for an attempt, its tally.
struct Worker {
    cfg: WorkerCfg,
    sh: Arc<Shared>,
    poll: Poll,
    conns: Vec<Conn>,
    /// connections waiting for an attempt
    queue: VecDeque<usize>,
    /// connections being set up
    in_flight: usize,
    loc: Tally,
    counts: Counts,
}

fn worker(cfg: WorkerCfg, sh: Arc<Shared>) -> Hists {
    let mut loc = Tally::new(cfg.nodes.len(), u64::MAX, 0);
    if cfg.feed == Feed::Trades {
        loc.t_unit_ns = 1_000_000;
    }
    let n = cfg.conns.len();
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            sh.err(format!("epoll: {e}"));
            sh.failed.fetch_add(n, Relaxed);
            return loc.into_hists();
        }
    };
    let conns = cfg
        .conns
        .iter()
        .map(|&(src, node)| Conn {
            node,
            every_t: cfg.feed == Feed::Trades,
            ..Conn::new(src)
        })
        .collect();
    let mut w = Worker {
        cfg,
        sh,
        poll,
        conns,
        queue: (0..n).collect(),
        in_flight: 0,
        loc,
        counts: Counts::default(),
    };
    w.run();
    w.loc.into_hists()
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut last_scan = Instant::now();
        while !self.sh.stop.load(Relaxed) && !interrupted() {
            self.start_attempts();
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(50))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.sh.err(format!("poll: {e}"));
                    break;
                }
            }
            self.loc.pub_start = self.sh.pub_start_ns.load(Relaxed);
            for ev in events.iter() {
                let drain = ev.is_read_closed() || ev.is_error();
                self.on_event(ev.token().0, &mut rbuf, drain);
            }
            if last_scan.elapsed() > Duration::from_millis(250) {
                last_scan = Instant::now();
                self.time_out_attempts();
            }
            self.flush_counts();
        }
        // Reset rather than FIN: no TIME_WAIT left behind on either side.
        for c in self.conns.iter_mut() {
            c.close(self.poll.registry(), true);
        }
    }

    /// Starts waiting connections while fewer than `concurrency` are being set up.
    fn start_attempts(&mut self) {
        while self.in_flight < self.cfg.concurrency {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            let t = &self.cfg.nodes[self.conns[i].node];
            match self.conns[i].start(i, t.addr, self.poll.registry(), t.ws.as_ref()) {
                Ok(()) => self.in_flight += 1,
                Err(e) => self.attempt_failed(i, format!("socket/bind/connect: {e}"), true),
            }
        }
    }

    /// A connection attempt went wrong: retry it (bounded) or count it as failed.
    fn attempt_failed(&mut self, i: usize, msg: String, retryable: bool) {
        let c = &mut self.conns[i];
        c.close(self.poll.registry(), true);
        c.attempts += 1;
        if retryable && c.attempts < self.cfg.attempts {
            self.counts.retries += 1;
            self.queue.push_back(i);
        } else {
            self.counts.failed += 1;
            self.sh.err(format!(
                "connection from {} failed after {} attempt(s): {msg}",
                c.src, c.attempts
            ));
        }
    }

    fn on_event(&mut self, i: usize, rbuf: &mut [u8], drain: bool) {
        let c = &mut self.conns[i];
        if c.sock.is_none() {
            return;
        }
        self.loc.node = c.node;
        match c.on_event(&self.cfg.nodes[c.node].req, rbuf, &mut self.loc, drain) {
            Outcome::Continue => {
                if !c.ready && c.in_body() && (!self.cfg.need_retry || c.got_retry()) {
                    c.ready = true;
                    self.sh.node_ready[c.node].fetch_add(1, Relaxed);
                    self.loc
                        .setup
                        .record(c.started.elapsed().as_micros() as u64);
                    self.in_flight -= 1;
                    self.counts.ready += 1;
                    self.counts.last_ready = self.sh.base.elapsed().as_nanos() as u64;
                }
            }
            Outcome::Fail(msg, _) if c.ready => {
                c.close(self.poll.registry(), true);
                self.counts.dropped += 1;
                if c.slow() {
                    self.counts.slow_closed += 1;
                }
                self.sh.err(format!(
                    "stream from {} ended after it was ready: {msg}",
                    c.src
                ));
            }
            Outcome::Fail(msg, retryable) => {
                self.in_flight -= 1;
                self.attempt_failed(i, msg, retryable);
            }
        }
    }

    /// Fails (for a retry) every attempt older than `--connect-timeout`.
    fn time_out_attempts(&mut self) {
        let ws = self.cfg.nodes.first().is_some_and(|t| t.ws.is_some());
        let timeout = self.cfg.connect_timeout;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.sock.is_none() || c.ready || c.started.elapsed() <= timeout {
                continue;
            }
            let what = match (c.st, c.in_body(), ws) {
                (St::Connecting, _, _) => "TCP connect",
                (St::Sending(_), _, _) => "sending the request",
                (_, false, false) => "response headers",
                (_, true, false) => "the first `retry:` line",
                (_, false, true) => "the 101 response",
                (_, true, true) => "the `subscribed` ack",
            };
            self.in_flight -= 1;
            let msg = format!("timed out after {timeout:?} waiting for {what}");
            self.attempt_failed(i, msg, true);
        }
    }

    /// Adds this thread's counts to `Shared` and starts them again from zero.
    fn flush_counts(&mut self) {
        let (sh, c, loc) = (&self.sh, std::mem::take(&mut self.counts), &mut self.loc);
        if c.ready > 0 {
            sh.ready.fetch_add(c.ready, Relaxed);
            sh.last_ready_ns.fetch_max(c.last_ready, Relaxed);
        }
        if c.failed > 0 {
            sh.failed.fetch_add(c.failed, Relaxed);
        }
        if c.dropped > 0 {
            sh.dropped.fetch_add(c.dropped, Relaxed);
            sh.slow_closed.fetch_add(c.slow_closed, Relaxed);
        }
        if c.retries > 0 {
            sh.retries.fetch_add(c.retries, Relaxed);
        }
        if loc.events > 0 {
            sh.events.fetch_add(loc.events, Relaxed);
            sh.last_recv_ns.fetch_max(loc.last_recv, Relaxed);
            loc.events = 0;
        }
        if loc.stale > 0 {
            sh.stale.fetch_add(loc.stale, Relaxed);
            loc.stale = 0;
        }
        if loc.bytes > 0 {
            sh.bytes.fetch_add(loc.bytes, Relaxed);
            loc.bytes = 0;
        }
    }
}

/// A set of SSE or WebSocket connections spread over the generator threads, and split evenly
/// over `nodes` (connection i to node i mod N; one node but in Redis mode).
pub struct ConnSet {
    pub sh: Arc<Shared>,
    pub handles: Vec<JoinHandle<Hists>>,
    pub n: usize,
    /// connections planned per node
    pub per_node: Vec<usize>,
}

impl ConnSet {
    pub fn start(
        nodes: &[Server],
        a: &Args,
        tr: Transport,
        n: usize,
        srcs: &mut SrcAlloc,
    ) -> Res<ConnSet> {
        let targets = nodes
            .iter()
            .map(|srv| NodeTarget {
                addr: srv.addr,
                req: srv.sse_request(&a.channel),
                ws: (tr == Transport::Ws).then(|| Arc::new(srv.ws_config(&a.channel))),
            })
            .collect();
        let kind = nodes.first().ok_or("no server to connect to")?.kind;
        Self::start_targets(targets, kind, Feed::Events, a, n, srcs)
    }

    /// `n` market subscribers on one server, connection i on `channels[i mod S]` (a "node"
    /// in `Shared`/`per_node` is then a channel).
    pub fn start_channels(
        srv: &Server,
        channels: &[String],
        a: &Args,
        tr: Transport,
        n: usize,
        srcs: &mut SrcAlloc,
    ) -> Res<ConnSet> {
        let targets = channels
            .iter()
            .map(|ch| NodeTarget {
                addr: srv.addr,
                req: srv.sse_request(ch),
                ws: (tr == Transport::Ws).then(|| Arc::new(srv.ws_config(ch))),
            })
            .collect();
        Self::start_targets(targets, srv.kind, Feed::Trades, a, n, srcs)
    }

    /// Connection i goes to `targets[i mod N]`; the connections are dealt over the threads.
    fn start_targets(
        targets: Vec<NodeTarget>,
        kind: Kind,
        feed: Feed,
        a: &Args,
        n: usize,
        srcs: &mut SrcAlloc,
    ) -> Res<ConnSet> {
        if targets.is_empty() {
            return Err("no server to connect to".into());
        }
        let threads = a.threads.max(1);
        let per_source = a.per_source.max(1);
        let sh = Arc::new(Shared {
            stop: AtomicBool::new(false),
            base: Instant::now(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            slow_closed: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_ready_ns: AtomicU64::new(0),
            last_recv_ns: AtomicU64::new(0),
            pub_start_ns: AtomicU64::new(u64::MAX),
            first_err: Mutex::new(None),
            errors: AtomicUsize::new(0),
            node_ready: targets.iter().map(|_| AtomicUsize::new(0)).collect(),
        });
        let mut per_thread: Vec<Vec<(Ipv4Addr, usize)>> = vec![Vec::new(); threads];
        let mut per_node = vec![0; targets.len()];
        let mut src = srcs.take();
        for i in 0..n {
            if i > 0 && i % per_source == 0 {
                src = srcs.take();
            }
            let node = i % targets.len();
            per_node[node] += 1;
            per_thread[i % threads].push((src, node));
        }
        let targets = Arc::new(targets);
        let mut handles = Vec::new();
        for (t, list) in per_thread.into_iter().enumerate() {
            let cfg = WorkerCfg {
                nodes: targets.clone(),
                conns: list,
                need_retry: kind == Kind::Redix,
                concurrency: (a.connect_concurrency / threads).max(1),
                attempts: a.connect_attempts.max(1),
                connect_timeout: Duration::from_secs_f64(a.connect_timeout),
                feed,
            };
            let sh2 = sh.clone();
            let h = thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || worker(cfg, sh2))
                .map_err(|e| format!("spawn thread: {e}"))?;
            handles.push(h);
        }
        Ok(ConnSet {
            sh,
            handles,
            n,
            per_node,
        })
    }

    pub fn settled(&self) -> usize {
        self.sh.ready.load(Relaxed) + self.sh.failed.load(Relaxed)
    }

    /// Waits until every connection is ready or has failed for good.
    pub fn wait_ready(&self, dep: &mut Deployment, deadline: Instant) -> Res<()> {
        loop {
            if self.settled() >= self.n {
                return Ok(());
            }
            dep.check_alive()?;
            if interrupted() {
                return Err("interrupted".into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "scenario deadline: only {} of {} connections ready",
                    self.sh.ready.load(Relaxed),
                    self.n
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the threads (closing every connection); returns their histograms, merged.
    pub fn finish(mut self) -> Hists {
        self.sh.stop.store(true, Relaxed);
        let mut h = Tally::new(0, 0, 0).into_hists();
        for j in self.handles.drain(..) {
            if let Ok(x) = j.join() {
                h.merge(&x);
            }
        }
        h
    }

    pub fn first_err(&self) -> Option<String> {
        self.sh.first_err.lock().unwrap().clone()
    }
}

impl Drop for ConnSet {
    fn drop(&mut self) {
        self.sh.stop.store(true, Relaxed);
        for j in self.handles.drain(..) {
            let _ = j.join();
        }
    }
}
