//! Start-up and shutdown: limits, listeners, reactors, signals, systemd.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use mio::Poll;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};

use crate::activation;
use crate::bridge::{self, Retention};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::health::STUCK_AFTER_MS;
use crate::hub::history::HistoryLimits;
use crate::hub::{Hub, HubConfig, MAX_REACTORS};
use crate::jobs::{self, Jobs};
use crate::limits::{connection_cap, raise_nofile_limit};
use crate::link::{Queues, Redis};
use crate::mailbox::{Mailbox, Msg, Outbox};
use crate::market;
use crate::reactor::{Worker, WAKER};
use crate::state::{Shared, Sizing};

/// Below this many file descriptors redix warns that it cannot hold many clients.
const LOW_FD_LIMIT: u64 = 4096;

/// Binds one `SO_REUSEPORT` listener.
fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

fn hub_config(config: &Config) -> HubConfig {
    HubConfig {
        history: HistoryLimits {
            max_events: config.history.max_events,
            max_age_ms: config.history.max_age_ms,
        },
        job_history: HistoryLimits {
            max_events: config.jobs.max_events,
            max_age_ms: config.jobs.ttl_ms,
        },
        max_channels: config.history.max_channels,
        max_bytes: config.history.max_bytes,
        dedupe_ttl_ms: config.publish.dedupe_ttl_ms,
        dedupe_max: config.publish.dedupe_max,
        redis: config.redis.enabled(),
    }
}

/// Under systemd with `WatchdogSec`, pings the watchdog at half its
/// interval while every reactor keeps turning; a stuck reactor stops the
/// pings and systemd restarts the service.
fn start_watchdog(shared: &Arc<Shared>) -> Result<(), String> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Ok(());
    };
    let shared = shared.clone();
    let stuck_ms = (interval.as_millis() as u64).max(STUCK_AFTER_MS);
    log::info!("systemd watchdog every {interval:?}");
    std::thread::Builder::new()
        .name("redix-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(interval / 2);
            let stale = shared.health.stale_thread(shared.now_ms(), stuck_ms);
            match (shared.reactors_alive(stuck_ms), stale) {
                (true, None) => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                (false, _) => log::error!(
                    "a reactor has not turned for {stuck_ms} ms: withholding the watchdog ping"
                ),
                (true, Some(name)) => log::error!(
                    "the {name} thread has not turned for {stuck_ms} ms: withholding the watchdog ping"
                ),
            }
        })
        .map(|_| ())
        .map_err(|e| format!("spawn watchdog thread: {e}"))
}

/// Binds one listener per reactor on `addr`; returns them and the address
/// they share (port 0 picks one).
fn bind_all(
    mut addr: SocketAddr,
    backlog: i32,
    n: usize,
) -> Result<(Vec<mio::net::TcpListener>, SocketAddr), String> {
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let l = bind(addr, backlog).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // With port 0 the first bind picks the port; the others share it.
        addr = l
            .local_addr()
            .map_err(|e| format!("listener address: {e}"))?;
        listeners.push(l);
    }
    Ok((listeners, addr))
}

/// A reactor's poll and the two ends of its mailbox.
type ReactorIo = (Poll, (Arc<Mailbox>, Receiver<Msg>));

fn reactor_io(n: usize) -> Result<Vec<ReactorIo>, String> {
    (0..n)
        .map(|_| {
            let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
            let mailbox = Mailbox::new(&poll, WAKER).map_err(|e| format!("waker: {e}"))?;
            Ok((poll, mailbox))
        })
        .collect()
}

/// The hub, its first id and its outboxes (one per reactor mailbox).
fn build_hub(config: &Config, mailboxes: &[Arc<Mailbox>]) -> Arc<Hub> {
    let outboxes: Vec<Arc<dyn Outbox>> = mailboxes
        .iter()
        .map(|m| m.clone() as Arc<dyn Outbox>)
        .collect();
    // Embedded ids count from the clock in µs, so they grow across
    // restarts; in Redis mode Redis hands them out and the hub only tracks
    // the newest it has seen (none yet).
    let first_id = match config.redis.enabled() {
        true => 1,
        false => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64),
    };
    Arc::new(Hub::new(outboxes, first_id, hub_config(config)))
}

/// Starts one thread per reactor.
fn spawn_reactors(
    shared: &Arc<Shared>,
    io: Vec<ReactorIo>,
    listeners: Vec<mio::net::TcpListener>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let per_worker = shared.fds.max_conns / io.len().max(1) + 1;
    let mut threads = Vec::with_capacity(io.len());
    for (id, ((poll, mailbox), listener)) in io.into_iter().zip(listeners).enumerate() {
        let capacity = per_worker.min(65_536);
        let worker = Worker::new(id, poll, listener, mailbox, shared.clone(), capacity)
            .map_err(|e| format!("reactor {id}: {e}"))?;
        let handle = std::thread::Builder::new()
            .name(format!("redix-reactor-{id}"))
            .spawn(move || worker.run())
            .map_err(|e| format!("spawn reactor {id}: {e}"))?;
        threads.push(handle);
    }
    Ok(threads)
}

/// SIGTERM/SIGINT drain (a second one exits at once); SIGHUP reloads keys
/// and limits (`Shared::reload`).
fn spawn_signal_thread(
    mut signals: Signals,
    shared: &Arc<Shared>,
    stop: impl Fn() + Send + 'static,
    reload: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<(), String> {
    let drain_ms = shared.config.shutdown.drain_ms;
    let shared = shared.clone();
    let on_signal = move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload() {
                    Ok(new) => shared.reload(&new),
                    Err(e) => log::error!("SIGHUP: {e}; keeping the running configuration"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                continue;
            }
            seen += 1;
            if seen > 1 {
                log::warn!("second signal {sig}: exiting now");
                std::process::exit(1);
            }
            log::info!("signal {sig}: draining connections (up to {drain_ms} ms); a second signal exits at once");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            stop();
        }
    };
    std::thread::Builder::new()
        .name("redix-signals".into())
        .spawn(on_signal)
        .map(|_| ())
        .map_err(|e| format!("spawn signal thread: {e}"))
}

/// Samples figures that are too costly to read on a reactor (the process's
/// open fds) once a second, for `/metrics/prom`.
fn start_sampler(shared: &Arc<Shared>) -> Result<(), String> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("redix-sampler".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            shared.fds.sample();
        })
        .map(|_| ())
        .map_err(|e| format!("spawn sampler thread: {e}"))
}

/// Starts the threads that feed the hub: the Redis bridge (Redis mode) and
/// the market upstream (with `market.url`, or the simulator on demand).
fn start_bridges(
    shared: &Arc<Shared>,
    queues: Option<Queues>,
    mailboxes: &[Arc<Mailbox>],
) -> Result<(), String> {
    if let (Some(redis), Some(queues)) = (&shared.redis, queues) {
        bridge::start(bridge::Parts {
            redis: redis.clone(),
            queues,
            hub: shared.hub.clone(),
            clock: shared.clock,
            mailboxes: mailboxes.to_vec(),
            retention: Retention::of(&shared.config),
            beats: (
                shared.health.beat("redis-command", shared.clock),
                shared.health.beat("redis-pubsub", shared.clock),
            ),
        })?;
    }
    if let Some(link) = shared.market.as_ref() {
        let cluster = shared
            .redis
            .as_ref()
            .map(|redis| market::lease::ClusterParts {
                master: redis.master.clone(),
                names: redis.names.clone(),
                node: redis.node.clone(),
                lease_ms: shared.config.market.lease_ms,
                retention: Retention::of(&shared.config),
                hub: shared.hub.clone(),
                link: link.clone(),
            });
        market::upstream::start(market::upstream::Upstream {
            config: shared.config.market.clone(),
            hub: shared.hub.clone(),
            clock: shared.clock,
            link: link.clone(),
            cluster,
            beat: shared.health.beat("market", shared.clock),
        })?;
    }
    Ok(())
}

/// Starts the job engine: in Redis mode this node's side of the worker
/// protocol (workers anywhere, jobs in Redis), else embedded (the jobs and
/// the demo worker in this process).
fn start_jobs(
    shared: &Arc<Shared>,
    requests: crossbeam_channel::Receiver<jobs::Request>,
    mailboxes: &[Arc<Mailbox>],
) -> Result<(), String> {
    if let Some(redis) = &shared.redis {
        return jobs::redis::start(jobs::redis::Parts {
            config: shared.config.jobs.clone(),
            redis: redis.config.clone(),
            master: redis.master.clone(),
            max_event_bytes: shared.config.limits.max_body_bytes,
            clock: shared.clock,
            mailboxes: mailboxes.to_vec(),
            jobs: shared.jobs.clone(),
            requests,
            beat: shared.health.beat("jobs", shared.clock),
        });
    }
    jobs::embedded::start(jobs::embedded::Parts {
        config: shared.config.jobs.clone(),
        hub: shared.hub.clone(),
        clock: shared.clock,
        mailboxes: mailboxes.to_vec(),
        jobs: shared.jobs.clone(),
        requests,
        beat: shared.health.beat("jobs", shared.clock),
    })
}

/// A redix started in this process: its reactors, bridges and job engine
/// run; signals, the systemd watchdog and the fd sampler are `run`'s.
/// For benchmarks that drive the real path in-process.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    mailboxes: Vec<Arc<Mailbox>>,
}

impl Running {
    /// Begins the drain: every reactor ends its connections and stops.
    pub fn stop(&self) {
        self.stopper()();
    }

    /// What begins the drain, for another thread.
    fn stopper(&self) -> impl Fn() + Clone + Send + 'static {
        let (shared, mailboxes) = (self.shared.clone(), self.mailboxes.clone());
        move || {
            shared.health.begin_shutdown();
            mailboxes.iter().for_each(|w| w.wake());
        }
    }

    /// Waits for every reactor (after `stop`, or a signal).
    pub fn join(self) -> Result<(), String> {
        let stop = self.stopper();
        join_reactors(self.threads, stop)
    }
}

/// Starts the reactors, the bridges and the job engine; returns once they run.
pub fn start(config: Config) -> Result<Running, String> {
    let (soft, hard) = raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if soft < LOW_FD_LIMIT {
        log::warn!("open-file limit is {soft} (hard {hard}): redix can hold few connections; raise LimitNOFILE");
    }
    let max_conns = connection_cap(config.limits.max_connections, soft);
    let workers = config.worker_count().min(MAX_REACTORS);
    if config.auth.keys.is_empty()
        && config.auth.publish_keys.is_empty()
        && config.auth.admin_keys.is_empty()
    {
        log::warn!(
            "no API key configured: publish and admin endpoints accept clients on this machine only, not requests a proxy forwards (X-Forwarded-For, Forwarded, X-Real-IP from a peer outside limits.trusted_proxies); configure auth.keys"
        );
    }
    let (listeners, addr) = match activation::inherited()? {
        Some(inherited) => {
            let addr = inherited
                .local_addr()
                .map_err(|e| format!("inherited listener: {e}"))?;
            (activation::share(inherited, workers)?, addr)
        }
        None => bind_all(config.listen, config.backlog, workers)?,
    };
    let io = reactor_io(workers)?;
    let mailboxes: Vec<Arc<Mailbox>> = io.iter().map(|(_, (m, _))| m.clone()).collect();
    let hub = build_hub(&config, &mailboxes);
    let (redis, queues) = match config.redis.enabled() {
        true => {
            let master = Arc::new(bridge::Master::from_config(&config.redis)?);
            let (redis, rx) = Redis::new(config.redis.clone(), master);
            (Some(Arc::new(redis)), Some(rx))
        }
        false => (None, None),
    };
    let sizing = Sizing {
        reactors: workers,
        fd_limit: soft,
        max_conns,
    };
    let clock = Clock::start();
    let (jobs, job_requests) = Jobs::new();
    jobs.set_in_flight_cap(config.limits.jobs_in_flight);
    let shared = Shared::new(config, hub, clock, sizing, redis, Arc::new(jobs));
    let _ = shared.mailboxes.set(mailboxes.clone().into_boxed_slice());
    let threads = spawn_reactors(&shared, io, listeners)?;
    shared.fds.record_baseline();
    shared.fds.sample();
    start_bridges(&shared, queues, &mailboxes)?;
    start_jobs(&shared, job_requests, &mailboxes)?;
    log::info!(
        "{workers} reactors, connection cap {max_conns} (RLIMIT_NOFILE {soft}/{hard}), fd baseline {}",
        shared.fds.internal_fds.load(Ordering::Relaxed)
    );
    Ok(Running {
        addr,
        shared,
        threads,
        mailboxes,
    })
}

/// Runs redix until a signal has drained it. Errors are start-up failures.
///
/// `reload` builds the configuration again (file, environment, command
/// line); SIGHUP applies its API keys and per-IP limits.
pub fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<(), String> {
    // Before the fd baseline (taken in `start`): the signal pipe is an fd of its own.
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signals: {e}"))?;
    let running = start(config)?;
    let shared = running.shared.clone();
    spawn_signal_thread(signals, &shared, running.stopper(), reload)?;
    start_watchdog(&shared)?;
    start_sampler(&shared)?;
    println!("redix listening on {}", running.addr);
    let _ = std::io::stdout().flush();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    running.join()
}

/// Waits for every reactor; a panicked one shuts the others down.
fn join_reactors(threads: Vec<JoinHandle<()>>, stop: impl Fn()) -> Result<(), String> {
    let mut failed = false;
    for (id, t) in threads.into_iter().enumerate() {
        if t.join().is_err() {
            log::error!("reactor {id} panicked; shutting the others down");
            failed = true;
            stop();
        }
    }
    match failed {
        true => Err("a reactor thread failed".into()),
        false => {
            log::info!("drained; exiting");
            Ok(())
        }
    }
}
