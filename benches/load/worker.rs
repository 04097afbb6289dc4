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

#[derive(Clone)]
struct WorkerCfg {
    nodes: Arc<Vec<NodeTarget>>,
    /// (source address, node index) of each of this thread's connections
    conns: Vec<(Ipv4Addr, usize)>,
    need_retry: bool,
    concurrency: usize,
    attempts: u32,
    connect_timeout: Duration,
}

fn worker(cfg: WorkerCfg, sh: Arc<Shared>) -> Hists {
    let mut loc = Tally::new(cfg.nodes.len(), u64::MAX, 0);
    let n = cfg.conns.len();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            sh.err(format!("epoll: {e}"));
            sh.failed.fetch_add(n, Relaxed);
            return loc.into_hists();
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Conn> = cfg
        .conns
        .iter()
        .map(|&(src, node)| Conn {
            node,
            ..Conn::new(src)
        })
        .collect();
    let ws = cfg.nodes.first().is_some_and(|t| t.ws.is_some());
    let mut queue: VecDeque<usize> = (0..n).collect();
    let mut in_flight = 0usize;
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut last_scan = Instant::now();
    let (mut ready, mut failed, mut dropped, mut retries) = (0usize, 0usize, 0usize, 0usize);
    let mut slow_closed = 0usize;
    let mut last_ready = 0u64;

    // A connection attempt went wrong: retry it (bounded) or count it as failed.
    macro_rules! attempt_failed {
        ($i:expr, $msg:expr, $retryable:expr) => {{
            let i = $i;
            let c = &mut conns[i];
            c.close(poll.registry(), true);
            c.attempts += 1;
            if $retryable && c.attempts < cfg.attempts {
                retries += 1;
                queue.push_back(i);
            } else {
                failed += 1;
                sh.err(format!(
                    "connection from {} failed after {} attempt(s): {}",
                    c.src, c.attempts, $msg
                ));
            }
        }};
    }

    while !sh.stop.load(Relaxed) && !interrupted() {
        while in_flight < cfg.concurrency {
            let Some(i) = queue.pop_front() else { break };
            let t = &cfg.nodes[conns[i].node];
            match conns[i].start(i, t.addr, poll.registry(), t.ws.as_ref()) {
                Ok(()) => in_flight += 1,
                Err(e) => attempt_failed!(i, format!("socket/bind/connect: {e}"), true),
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                sh.err(format!("poll: {e}"));
                break;
            }
        }
        loc.pub_start = sh.pub_start_ns.load(Relaxed);
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if c.sock.is_none() {
                continue;
            }
            let drain = ev.is_read_closed() || ev.is_error();
            loc.node = c.node;
            match c.on_event(&cfg.nodes[c.node].req, &mut rbuf, &mut loc, drain) {
                Outcome::Continue => {
                    if !c.ready && c.in_body() && (!cfg.need_retry || c.got_retry()) {
                        c.ready = true;
                        sh.node_ready[c.node].fetch_add(1, Relaxed);
                        loc.setup.record(c.started.elapsed().as_micros() as u64);
                        in_flight -= 1;
                        ready += 1;
                        last_ready = sh.base.elapsed().as_nanos() as u64;
                    }
                }
                Outcome::Fail(msg, retryable) => {
                    if c.ready {
                        c.close(poll.registry(), true);
                        dropped += 1;
                        if c.slow() {
                            slow_closed += 1;
                        }
                        sh.err(format!(
                            "stream from {} ended after it was ready: {msg}",
                            c.src
                        ));
                    } else {
                        in_flight -= 1;
                        attempt_failed!(i, msg, retryable);
                    }
                }
            }
        }
        if last_scan.elapsed() > Duration::from_millis(250) {
            last_scan = Instant::now();
            for i in 0..n {
                let c = &conns[i];
                if c.sock.is_some() && !c.ready && c.started.elapsed() > cfg.connect_timeout {
                    let what = match (c.st, c.in_body(), ws) {
                        (St::Connecting, _, _) => "TCP connect",
                        (St::Sending(_), _, _) => "sending the request",
                        (_, false, false) => "response headers",
                        (_, true, false) => "the first `retry:` line",
                        (_, false, true) => "the 101 response",
                        (_, true, true) => "the `subscribed` ack",
                    };
                    in_flight -= 1;
                    attempt_failed!(
                        i,
                        format!(
                            "timed out after {:?} waiting for {what}",
                            cfg.connect_timeout
                        ),
                        true
                    );
                }
            }
        }
        // flush counters
        if ready > 0 {
            sh.ready.fetch_add(ready, Relaxed);
            sh.last_ready_ns.fetch_max(last_ready, Relaxed);
            ready = 0;
        }
        if failed > 0 {
            sh.failed.fetch_add(failed, Relaxed);
            failed = 0;
        }
        if dropped > 0 {
            sh.dropped.fetch_add(dropped, Relaxed);
            sh.slow_closed.fetch_add(slow_closed, Relaxed);
            dropped = 0;
            slow_closed = 0;
        }
        if retries > 0 {
            sh.retries.fetch_add(retries, Relaxed);
            retries = 0;
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
    // Reset rather than FIN: no TIME_WAIT left behind on either side.
    for c in conns.iter_mut() {
        c.close(poll.registry(), true);
    }
    loc.into_hists()
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
            node_ready: nodes.iter().map(|_| AtomicUsize::new(0)).collect(),
        });
        let kind = nodes.first().ok_or("no server to connect to")?.kind;
        let mut per_thread: Vec<Vec<(Ipv4Addr, usize)>> = vec![Vec::new(); threads];
        let mut per_node = vec![0; nodes.len()];
        let mut src = srcs.take();
        for i in 0..n {
            if i > 0 && i % per_source == 0 {
                src = srcs.take();
            }
            let node = i % nodes.len();
            per_node[node] += 1;
            per_thread[i % threads].push((src, node));
        }
        let targets: Arc<Vec<NodeTarget>> = Arc::new(
            nodes
                .iter()
                .map(|srv| NodeTarget {
                    addr: srv.addr,
                    req: srv.sse_request(&a.channel),
                    ws: (tr == Transport::Ws).then(|| Arc::new(srv.ws_config(&a.channel))),
                })
                .collect(),
        );
        let mut handles = Vec::new();
        for (t, list) in per_thread.into_iter().enumerate() {
            let cfg = WorkerCfg {
                nodes: targets.clone(),
                conns: list,
                need_retry: kind == Kind::Redix,
                concurrency: (a.connect_concurrency / threads).max(1),
                attempts: a.connect_attempts.max(1),
                connect_timeout: Duration::from_secs_f64(a.connect_timeout),
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
