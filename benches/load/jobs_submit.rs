//! The submit burst of `--scenario jobs`, on the calling thread: per round, `--jobs-clients`
//! connections (one source address each) are opened and given 50 ms to be accepted; then each
//! writes its `POST /api/summarize` (a URL no request used before) in one tight loop that
//! polls without waiting after every write, so answers are timed as they arrive while the
//! burst is still going out. Latency is from the write of a request to its whole answer; the
//! connect is not in it. Each round ends when every request has its answer or the round's
//! time (the wait asked, plus 5 s) is up; its connections are then closed.

use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::hist::Histogram;
use crate::jobs_conn::{PostConn, Step};
use crate::jobs_figs::{classify, job_url, summarize_request, BurstFigs};
use crate::support::spawn::check_interrupted;
use crate::Res;

/// Time for the server to accept the round's connections before the burst.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A round waits this long beyond the wait it asked for.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// One kind of burst: `?wait=` (None: the server's window of `window_ms`), how many rounds.
pub struct BurstCfg<'a> {
    pub addr: SocketAddr,
    pub srcs: &'a [Ipv4Addr],
    pub wait_s: Option<u32>,
    pub window_ms: u64,
    pub rounds: usize,
    /// in every URL: the run, and which burst
    pub tag: String,
    pub phase: &'static str,
    pub deadline: Instant,
}

impl BurstCfg<'_> {
    fn answer_within(&self) -> Duration {
        let wait_ms = self.wait_s.map_or(self.window_ms, |w| u64::from(w) * 1000);
        Duration::from_millis(wait_ms) + ANSWER_SLACK
    }
}

/// A round's connections and which of them still wait for their answer.
struct Round {
    conns: Vec<PostConn>,
    waiting: Vec<bool>,
    open: usize,
    hist: Histogram,
}

/// Every round of `cfg`; the figures.
pub fn run_burst(cfg: &BurstCfg) -> Res<BurstFigs> {
    let mut f = BurstFigs::new(cfg.wait_s, cfg.srcs.len(), cfg.rounds);
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    for round in 0..cfg.rounds {
        check_interrupted()?;
        if Instant::now() > cfg.deadline {
            return Err(format!(
                "deadline passed after {round} of {} rounds",
                cfg.rounds
            ));
        }
        let mut r = open_all(&mut poll, &mut events, cfg, &mut f)?;
        thread::sleep(ACCEPT_PAUSE);
        burst(&mut poll, &mut events, &mut r, cfg, round, &mut f)?;
        f.round_p99_us.push(r.hist.percentile(99.0));
        for c in &mut r.conns {
            c.close(poll.registry());
        }
        thread::sleep(ROUND_PAUSE);
    }
    Ok(f)
}

/// Connects every client; one that is not connected within 5 s counts as an error.
fn open_all(poll: &mut Poll, events: &mut Events, cfg: &BurstCfg, f: &mut BurstFigs) -> Res<Round> {
    let mut r = Round {
        conns: cfg.srcs.iter().map(|&s| PostConn::new(s)).collect(),
        waiting: vec![false; cfg.srcs.len()],
        open: 0,
        hist: Histogram::new(),
    };
    let mut connecting = 0;
    for (i, c) in r.conns.iter_mut().enumerate() {
        match c.connect(i, cfg.addr, poll.registry()) {
            Ok(()) => connecting += 1,
            Err(e) => f.tally.error(format!("connect from {}: {e}", c.src)),
        }
    }
    let until = Instant::now() + CONNECT_TIMEOUT;
    while connecting > 0 && Instant::now() < until {
        poll.poll(events, Some(Duration::from_millis(50)))
            .map_err(|e| format!("poll: {e}"))?;
        for ev in events.iter() {
            let c = &mut r.conns[ev.token().0];
            if c.ready() {
                continue;
            }
            match c.progress() {
                Step::Connected => connecting -= 1,
                Step::Failed(e) => {
                    connecting -= 1;
                    f.tally.error(e);
                    c.close(poll.registry());
                }
                _ => {}
            }
        }
    }
    if connecting > 0 {
        let e = format!("{connecting} connection(s) not up within 5 s");
        f.tally.error_n(connecting as u64, e);
    }
    Ok(r)
}

/// Writes every ready connection's request in one loop, then waits for the answers.
fn burst(
    poll: &mut Poll,
    events: &mut Events,
    r: &mut Round,
    cfg: &BurstCfg,
    round: usize,
    f: &mut BurstFigs,
) -> Res<()> {
    let host = cfg.addr.to_string();
    let t0 = Instant::now();
    let mut last_write = t0;
    for i in 0..r.conns.len() {
        if !r.conns[i].ready() {
            continue;
        }
        let url = job_url(&cfg.tag, cfg.phase, round, i, 0);
        let req = summarize_request(&host, &url, cfg.wait_s);
        r.waiting[i] = true;
        r.open += 1;
        let step = r.conns[i].send(req);
        last_write = r.conns[i].sent_at;
        settle(i, step, r, f);
        pump(poll, events, r, f, Duration::ZERO)?;
    }
    f.burst_spread_us = f
        .burst_spread_us
        .max(last_write.duration_since(t0).as_micros() as u64);
    let until = Instant::now() + cfg.answer_within();
    while r.open > 0 && Instant::now() < until {
        check_interrupted()?;
        let left = until.saturating_duration_since(Instant::now());
        pump(poll, events, r, f, left.min(Duration::from_millis(100)))?;
    }
    if r.open > 0 {
        let within = cfg.answer_within().as_secs_f64();
        let e = format!("{} request(s) unanswered within {within:.0} s", r.open);
        f.tally.error_n(r.open as u64, e);
    }
    Ok(())
}

/// One poll (waiting at most `wait`) and whatever it reports.
fn pump(
    poll: &mut Poll,
    events: &mut Events,
    r: &mut Round,
    f: &mut BurstFigs,
    wait: Duration,
) -> Res<()> {
    poll.poll(events, Some(wait))
        .map_err(|e| format!("poll: {e}"))?;
    for ev in events.iter() {
        let i = ev.token().0;
        let step = r.conns[i].progress();
        settle(i, step, r, f);
    }
    Ok(())
}

/// Counts what connection `i` reported, if it was waiting for its answer.
fn settle(i: usize, step: Step, r: &mut Round, f: &mut BurstFigs) {
    if !r.waiting[i] {
        return;
    }
    let done = match step {
        Step::Answer { status, body, .. } => {
            let us = r.conns[i].sent_at.elapsed().as_micros() as u64;
            f.lat.record(us);
            r.hist.record(us);
            f.tally.answer(classify(status, &body));
            true
        }
        Step::Failed(e) => {
            f.tally.error(e);
            true
        }
        Step::Wait | Step::Connected => false,
    };
    if done {
        r.waiting[i] = false;
        r.open -= 1;
    }
}
