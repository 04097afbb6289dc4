//! A generator process (`box --gen …`, started by the bench itself): one mio loop holding
//! up to ~19,000 subscribers (the open-file limit is per process, so more connections mean
//! more processes). It connects them with at most `--concurrency` in setup at once, then
//! answers commands read from stdin, one JSON line each on stdout:
//!
//! * at start: `{"ev":"ready","ready":N,"failed":F,"first_us":…,"last_us":…,"p50_ms":…,"p99_ms":…}`
//!   (connect → ready per client; times in µs since the UNIX epoch);
//! * `stat` → `{"ev":"stat","received":R,"closed":C}` (this pass so far);
//! * `pass E` → the pass's counts (`received`, `gaps`, `dups`, clients that got all `E`
//!   events, clients closed) and its latency histogram, then a new pass begins;
//! * `stall K RCVBUF` → K more subscribers with a `RCVBUF`-byte receive buffer that are never
//!   read after their request: `{"ev":"stalled","opened":K}`;
//! * `churn K` → K more subscribers that are closed (every other one with RST, the rest with
//!   FIN) and reopened every second, from fresh source ports; what they receive is not
//!   counted: `{"ev":"churning","opened":K}`;
//! * `quit` (or EOF) → every socket is closed with RST and the process exits.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::client::{open, source, Client, Counts, State};
use crate::support::ws;

pub struct GenArgs {
    pub target: SocketAddr,
    pub conns: usize,
    /// index of this process's first connection in the whole run (for source addresses)
    pub first: usize,
    pub per_source: usize,
    pub channel: String,
    pub ws: bool,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

struct Gen {
    a: GenArgs,
    poll: Poll,
    clients: Vec<Client>,
    ws_cfg: Option<Arc<ws::Config>>,
    counts: Counts,
    /// what the churning clients received (discarded)
    churn_counts: Counts,
    /// indices of the churning clients, and how many reopens so far
    churners: Vec<usize>,
    churned: u64,
    closed: u64,
    /// connect → ready of each ready client, µs
    setup_us: Vec<u64>,
    /// connections opened so far (regular and stalled), for source addresses
    opened: usize,
    /// µs since the epoch when connecting began; clients' `started_us` count from it
    origin_us: u64,
    /// µs since the epoch when the latest client became ready
    last_ready_us: u64,
    /// socket/bind/connect errors by message
    errors: std::collections::BTreeMap<String, u64>,
}

pub fn run(a: GenArgs) -> Result<(), String> {
    let ws_cfg = a.ws.then(|| {
        Arc::new(ws::Config {
            path: "/ws".into(),
            host: "box".into(),
            subscribe: Some(
                format!("{{\"type\":\"subscribe\",\"channel\":\"{}\"}}", a.channel).into_bytes(),
            ),
        })
    });
    let mut g = Gen {
        poll: Poll::new().map_err(|e| e.to_string())?,
        clients: Vec::with_capacity(a.conns),
        ws_cfg,
        counts: Counts::default(),
        churn_counts: Counts::default(),
        churners: Vec::new(),
        churned: 0,
        closed: 0,
        setup_us: Vec::with_capacity(a.conns),
        opened: 0,
        origin_us: 0,
        last_ready_us: 0,
        errors: Default::default(),
        a,
    };
    let cmds = stdin_lines();
    g.connect_all()?;
    let mut last_churn = Instant::now();
    loop {
        g.pump(Duration::from_millis(20))?;
        if !g.churners.is_empty() && last_churn.elapsed() >= Duration::from_secs(1) {
            last_churn = Instant::now();
            g.churn_all();
        }
        match cmds.try_recv() {
            Ok(line) => {
                if !g.command(line.trim())? {
                    return Ok(());
                }
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {}
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
        }
    }
}

fn stdin_lines() -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Gen {
    fn open_one(&mut self, rcvbuf: usize, t0: u64) -> bool {
        let src = source(self.a.first + self.opened, self.a.per_source);
        self.opened += 1;
        let mut stream = match open(src, self.a.target, rcvbuf) {
            Ok(s) => s,
            Err(e) => {
                *self.errors.entry(e.to_string()).or_default() += 1;
                return false;
            }
        };
        let tok = Token(self.clients.len());
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, tok, interest)
            .is_err()
        {
            return false;
        }
        let c = Client::new(stream, epoch_us() - t0, self.ws_cfg.as_ref());
        self.clients.push(c);
        true
    }

    /// Closes every churning client (even ones with RST, odd ones with FIN) and opens it
    /// again in the same slot.
    fn churn_all(&mut self) {
        for k in 0..self.churners.len() {
            let i = self.churners[k];
            let _ = self.poll.registry().deregister(&mut self.clients[i].stream);
            if k % 2 == 1 {
                // FIN instead of the RST every socket here is set up for
                let _ = socket2::SockRef::from(&self.clients[i].stream).set_linger(None);
            }
            let src = source(self.a.first + self.opened, self.a.per_source);
            self.opened += 1;
            let mut stream = match open(src, self.a.target, 0) {
                Ok(s) => s,
                Err(e) => {
                    *self.errors.entry(e.to_string()).or_default() += 1;
                    self.clients[i].state = State::Closed;
                    continue;
                }
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(i), interest)
                .is_err()
            {
                continue;
            }
            let mut c = Client::new(stream, 0, self.ws_cfg.as_ref());
            c.churn = true;
            // the old socket closes here
            self.clients[i] = c;
            self.churned += 1;
        }
    }

    fn connect_all(&mut self) -> Result<(), String> {
        let first_us = epoch_us();
        self.origin_us = first_us;
        let deadline = Instant::now() + self.a.connect_timeout;
        let (mut failed, mut pending) = (0usize, 0usize);
        while self.clients.len() + failed < self.a.conns || pending > 0 {
            while pending < self.a.concurrency && self.clients.len() + failed < self.a.conns {
                match self.open_one(0, first_us) {
                    true => pending += 1,
                    false => failed += 1,
                }
            }
            self.pump(Duration::from_millis(5))?;
            pending = self.clients.len() - self.ready_or_closed();
            if Instant::now() > deadline {
                break;
            }
        }
        let ready = self
            .clients
            .iter()
            .filter(|c| c.state == State::Ready)
            .count();
        let mut s = std::mem::take(&mut self.setup_us);
        s.sort_unstable();
        let pct = |q: f64| {
            s.get(((s.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        say(
            json!({"ev": "ready", "ready": ready, "failed": self.a.conns - ready,
            "first_us": first_us, "last_us": self.last_ready_us,
            "p50_ms": pct(0.5) as f64 / 1e3, "p99_ms": pct(0.99) as f64 / 1e3,
            "max_ms": pct(1.0) as f64 / 1e3}),
        );
        Ok(())
    }

    fn ready_or_closed(&self) -> usize {
        let done = |c: &&Client| matches!(c.state, State::Ready | State::Closed);
        self.clients.iter().filter(done).count()
    }

    /// One poll: connects finish, requests go out, streams are read.
    fn pump(&mut self, timeout: Duration) -> Result<(), String> {
        let mut events = Events::with_capacity(4096);
        self.poll
            .poll(&mut events, Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 64 * 1024];
        let now_ns = epoch_us() * 1000;
        for ev in events.iter() {
            let Some(c) = self.clients.get_mut(ev.token().0) else {
                continue;
            };
            match c.state {
                State::Connecting if ev.is_writable() || ev.is_error() => {
                    if !c.send_request(&self.a.channel) {
                        c.state = State::Closed;
                        self.closed += u64::from(!c.churn);
                        continue;
                    }
                    c.state = if c.stall {
                        State::Stalled
                    } else {
                        State::Waiting
                    };
                    continue;
                }
                State::Stalled | State::Closed | State::Connecting => continue,
                _ => {}
            }
            let was_ready = c.state == State::Ready;
            let counts = match c.churn {
                true => &mut self.churn_counts,
                false => &mut self.counts,
            };
            if !c.read(&mut chunk, now_ns, counts) {
                c.state = State::Closed;
                self.closed += u64::from(!c.churn);
            } else if !was_ready && c.state == State::Ready && !c.churn {
                self.last_ready_us = now_ns / 1000;
                let since = (now_ns / 1000).saturating_sub(self.origin_us);
                self.setup_us.push(since.saturating_sub(c.started_us));
            }
        }
        Ok(())
    }

    /// Handles one command; false to exit.
    fn command(&mut self, line: &str) -> Result<bool, String> {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("stat") => say(json!({"ev": "stat", "received": self.counts.received,
                "closed": self.closed})),
            Some("pass") => {
                let expected: u32 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let complete = self
                    .clients
                    .iter()
                    .filter(|c| !c.churn && c.state == State::Ready && c.got == expected)
                    .count();
                let c = std::mem::take(&mut self.counts);
                let churn = std::mem::take(&mut self.churn_counts);
                let (buckets, max) = c.hist.to_sparse();
                say(json!({"ev": "pass", "received": c.received, "gaps": c.gaps,
                    "dups": c.dups, "last_ns": c.last_ns, "complete": complete, "closed": self.closed,
                    "churned": self.churned, "churn_received": churn.received,
                    "hist": buckets, "max": max}));
                for c in &mut self.clients {
                    c.got = 0;
                }
            }
            Some("stall") => {
                let k: usize = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let rcvbuf: usize = w.next().and_then(|v| v.parse().ok()).unwrap_or(4096);
                let t0 = self.origin_us;
                let mut opened = 0;
                for _ in 0..k {
                    if self.open_one(rcvbuf, t0) {
                        opened += 1;
                        if let Some(c) = self.clients.last_mut() {
                            c.stall = true;
                        }
                    }
                }
                say(json!({"ev": "stalled", "opened": opened}));
            }
            Some("churn") => {
                let k: usize = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let t0 = self.origin_us;
                let mut opened = 0;
                for _ in 0..k {
                    if self.open_one(0, t0) {
                        opened += 1;
                        let i = self.clients.len() - 1;
                        self.clients[i].churn = true;
                        self.churners.push(i);
                    }
                }
                say(json!({"ev": "churning", "opened": opened}));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
