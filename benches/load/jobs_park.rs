//! The parked requests of `--scenario jobs`: on a thread of their own (outside the
//! generator's event loops, like the attacker, so the subscribers' accounting is untouched),
//! one mio loop keeps `--jobs-clients` connections (one source address each), each with a
//! `POST /api/summarize?wait=W` in flight for a URL no request used before. With no worker the
//! answer is a `202` after W s; the next request then goes out at once on the same connection
//! (a connection the server closes or breaks is reopened after 100 ms). Once `mark` is called
//! (the first publish) the requests in flight are counted every 100 ms. Everything stops at
//! `finish` (or the scenario's deadline); requests still parked then are abandoned.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::cli::{Args, Pass};
use crate::jobs_conn::{PostConn, Step};
use crate::jobs_figs::{classify, job_url, summarize_request};
use crate::jobs_park_figs::ParkFigs;
use crate::now_ns;
use crate::support::spawn::interrupted;
use crate::worker::SrcAlloc;
use crate::Res;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const POLL_WAIT: Duration = Duration::from_millis(20);
/// `start` waits at most this for every client to have a request in flight.
const RAMP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the loop shares with the scenario.
#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    /// the sampled window has begun
    marked: AtomicBool,
    in_flight: AtomicUsize,
}

/// The running parked requests.
pub struct Parkers {
    flags: Arc<Flags>,
    clients: usize,
    handle: Option<JoinHandle<ParkFigs>>,
}

struct Cfg {
    addr: SocketAddr,
    srcs: Vec<Ipv4Addr>,
    wait_s: u32,
    tag: String,
    deadline: Instant,
}

impl Parkers {
    /// For `Pass::Parked`: starts them against `addr` and waits until every client has a
    /// request in flight (at most 5 s); None for any other pass.
    pub fn start_for(
        pass: Pass,
        addr: SocketAddr,
        a: &Args,
        srcs: &mut SrcAlloc,
        deadline: Instant,
    ) -> Res<Option<Parkers>> {
        if pass != Pass::Parked {
            return Ok(None);
        }
        let cfg = Cfg {
            addr,
            srcs: (0..a.jobs_clients).map(|_| srcs.take()).collect(),
            wait_s: a.jobs_park_wait,
            tag: format!("park-{:x}", now_ns()),
            deadline,
        };
        let flags = Arc::new(Flags::default());
        let fl = flags.clone();
        let handle = thread::Builder::new()
            .name("jobs-parked".into())
            .spawn(move || run(&cfg, &fl))
            .map_err(|e| e.to_string())?;
        let p = Parkers {
            flags,
            clients: a.jobs_clients,
            handle: Some(handle),
        };
        let until = Instant::now() + RAMP_TIMEOUT;
        while p.flags.in_flight.load(Relaxed) < p.clients && Instant::now() < until {
            if p.handle.as_ref().is_some_and(|h| h.is_finished()) || interrupted() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let now = p.flags.in_flight.load(Relaxed);
        eprintln!("[jobs] {now} of {} parked requests in flight", p.clients);
        Ok(Some(p))
    }

    /// The sampled window begins (the first publish).
    pub fn mark(&self) {
        self.flags.marked.store(true, Relaxed);
    }

    /// Stops the loop; its figures.
    pub fn finish(mut self) -> ParkFigs {
        self.flags.stop.store(true, Relaxed);
        let empty = ParkFigs::new(self.clients, 0);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(empty)
    }
}

impl Drop for Parkers {
    fn drop(&mut self) {
        self.flags.stop.store(true, Relaxed);
    }
}

/// The loop's state besides the figures.
struct Loop<'a> {
    cfg: &'a Cfg,
    poll: Poll,
    conns: Vec<PostConn>,
    /// when a closed connection is reopened
    reopen_at: Vec<Option<Instant>>,
    seq: u64,
    t0: Instant,
}

fn run(cfg: &Cfg, flags: &Flags) -> ParkFigs {
    let mut f = ParkFigs::new(cfg.srcs.len(), cfg.wait_s);
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            f.tally.error(format!("poll: {e}"));
            return f;
        }
    };
    let now = Instant::now();
    let mut lp = Loop {
        cfg,
        poll,
        conns: cfg.srcs.iter().map(|&s| PostConn::new(s)).collect(),
        reopen_at: vec![Some(now); cfg.srcs.len()],
        seq: 0,
        t0: now,
    };
    let mut events = Events::with_capacity(1024);
    let (mut next_sample, mut marked_at) = (now, None);
    while !flags.stop.load(Relaxed) && Instant::now() < cfg.deadline && !interrupted() {
        lp.reopen_due(&mut f);
        if let Err(e) = lp.poll.poll(&mut events, Some(POLL_WAIT)) {
            f.tally.error(format!("poll: {e}"));
            break;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let step = lp.conns[i].progress();
            lp.settle(i, step, &mut f);
        }
        let in_flight = lp.conns.iter().filter(|c| c.in_flight()).count();
        flags.in_flight.store(in_flight, Relaxed);
        if f.ramp_s.is_none() && in_flight == cfg.srcs.len() {
            f.ramp_s = Some(lp.t0.elapsed().as_secs_f64());
        }
        let now = Instant::now();
        if flags.marked.load(Relaxed) && now >= next_sample {
            marked_at.get_or_insert(now);
            f.sample(in_flight);
            next_sample = now + SAMPLE_EVERY;
        }
    }
    f.window_s = marked_at.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
    for c in &mut lp.conns {
        c.close(lp.poll.registry());
    }
    f
}

impl Loop<'_> {
    /// Reopens the closed connections whose pause is over.
    fn reopen_due(&mut self, f: &mut ParkFigs) {
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.reopen_at[i].is_some_and(|t| t <= now) {
                self.reopen_at[i] = None;
                if let Err(e) = self.conns[i].connect(i, self.cfg.addr, self.poll.registry()) {
                    f.tally
                        .error(format!("connect from {}: {e}", self.conns[i].src));
                    self.reopen_at[i] = Some(now + RECONNECT_PAUSE);
                }
            }
        }
    }

    /// Acts on what connection `i` reported until it has nothing more to say.
    fn settle(&mut self, i: usize, mut step: Step, f: &mut ParkFigs) {
        loop {
            step = match step {
                Step::Wait => return,
                Step::Connected => self.post(i, f),
                Step::Answer {
                    status,
                    body,
                    close,
                } => {
                    let us = self.conns[i].sent_at.elapsed().as_micros() as u64;
                    f.answer.record(us);
                    f.tally.answer(classify(status, &body));
                    if close {
                        self.reopen(i, f, Instant::now());
                        return;
                    }
                    self.post(i, f)
                }
                Step::Failed(e) => {
                    f.tally.error(e);
                    self.reopen(i, f, Instant::now() + RECONNECT_PAUSE);
                    return;
                }
            };
        }
    }

    /// The next request on connection `i`, for a new URL.
    fn post(&mut self, i: usize, f: &mut ParkFigs) -> Step {
        self.seq += 1;
        let url = job_url(&self.cfg.tag, "parked", 0, i, self.seq);
        let req = summarize_request(&self.cfg.addr.to_string(), &url, Some(self.cfg.wait_s));
        f.posts += 1;
        self.conns[i].send(req)
    }

    fn reopen(&mut self, i: usize, f: &mut ParkFigs, at: Instant) {
        if self.conns[i].is_open() {
            self.conns[i].close(self.poll.registry());
            f.reconnects += 1;
        }
        self.reopen_at[i] = Some(at);
    }
}
