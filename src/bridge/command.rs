//! The command thread: one blocking Redis connection (the `redis` crate)
//! for publishes, history loads and the readiness canary; with Redis
//! Cluster, the crate's cluster connection plus one connection per master
//! for pipelines (`cluster_pipe`). Each turn's publishes go out as one
//! pipeline (one per master a batch touches), then one of history loads.
//!
//! While the connection is down, publishes are answered with a failure at
//! once and loads wait (they are retried after the reconnect); a command
//! that fails on the wire drops the connection, which is then re-made with
//! backoff.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::RedisError;

pub use super::cli::publish_cli;
use super::shards::slots::slot_of;
use super::wire::{
    check_data_kept, link_failed, load_cmd, load_once, load_pipelined, load_script, open,
    parse_load, publish_once, publish_pipelined, publish_script, Link, PublishArgs, PUBLISH_BATCH,
};
use super::{Backoff, Parts, Retention};
use crate::clock::Clock;
use crate::hub::Hub;
use crate::link::{Command, Publish, Queues, Redis};
use crate::mailbox::{ConnRef, Mailbox, Msg, PublishReply};

/// Loads waiting for the connection, at most (one per channel at a time).
const MAX_WAITING_LOADS: usize = 100_000;
/// History loads per pipeline: a turn's loads hold the publishes behind
/// them for one such round trip at most.
const LOAD_BATCH: usize = 64;

/// A publish waiting for its answer, and who waits for it.
struct Pending {
    publish: Publish,
    reply: ConnRef,
}

struct CommandThread {
    redis: Arc<Redis>,
    hub: Arc<Hub>,
    clock: Clock,
    retention: Retention,
    mailboxes: Vec<Arc<Mailbox>>,
    /// One server's connection, or (Redis Cluster) the cluster's.
    con: Option<Box<dyn Link>>,
    /// The master's generation the connection was made under.
    generation: u64,
    backoff: Backoff,
    quiet: super::Quiet,
    reconnect_at: Instant,
    next_canary: Instant,
    /// Loads that could not run yet (no connection).
    waiting_loads: VecDeque<(Arc<str>, u64, Option<u64>)>,
}

/// Runs the command thread until every sender of the queue is gone.
pub fn run(parts: Parts) {
    let Parts {
        redis,
        queues,
        hub,
        clock,
        mailboxes,
        retention,
        beats: (beat, _),
    } = parts;
    let backoff = Backoff::new(redis.config.backoff_min_ms, redis.config.backoff_max_ms);
    let mut t = CommandThread {
        redis,
        hub,
        clock,
        retention,
        mailboxes,
        con: None,
        generation: 0,
        backoff,
        quiet: super::Quiet::default(),
        reconnect_at: Instant::now(),
        next_canary: Instant::now(),
        waiting_loads: VecDeque::new(),
    };
    let Queues {
        commands: rx,
        loads,
    } = queues;
    // Each turn: the publishes waiting (one pipeline), then one pipeline of
    // history loads, so a flood of loads delays publishes by one round
    // trip at most.
    loop {
        beat.stamp();
        t.follow_master();
        t.ensure_connected();
        if t.con.is_some() && Instant::now() >= t.next_canary {
            t.canary();
        }
        if t.con.is_some() {
            t.run_waiting_loads();
        }
        let wake = match t.con {
            Some(_) if !t.waiting_loads.is_empty() => Instant::now(),
            Some(_) => t.next_canary,
            None => t.reconnect_at,
        };
        // At most a second, so the heartbeat stays fresh while idle.
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        crossbeam_channel::select! {
            recv(rx) -> cmd => match cmd {
                Ok(cmd) => t.publish_queued(cmd, &rx),
                Err(_) => return,
            },
            recv(loads) -> cmd => match cmd {
                Ok(cmd) => t.take_loads(cmd, &loads),
                Err(_) => return,
            },
            default(wait) => {}
        }
    }
}

impl CommandThread {
    fn ensure_connected(&mut self) {
        if self.con.is_some() || Instant::now() < self.reconnect_at {
            return;
        }
        let redis = self.redis.clone();
        let timeout = Duration::from_millis(redis.config.timeout_ms);
        let generation = redis.master.generation();
        let connected = open(&redis, timeout);
        match connected {
            Ok(mut con) => {
                let loaded = publish_script()
                    .load(&mut *con)
                    .and_then(|_| load_script().load(&mut *con));
                if let Err(e) = loaded {
                    let wait = self.backoff.next_wait();
                    self.quiet.warn(format_args!(
                        "Redis: loading the publish script: {e}; retrying in {wait:?}"
                    ));
                    self.reconnect_at = Instant::now() + wait;
                    return;
                }
                redis.link.connections.fetch_add(1, Ordering::Relaxed);
                check_data_kept(&mut *con, &self.hub, &redis, self.retention);
                redis.link.command_up.store(true, Ordering::Release);
                log::info!("Redis command connection up");
                self.con = Some(con);
                self.generation = generation;
                self.backoff.reset();
                self.quiet.reset();
                self.next_canary = Instant::now();
            }
            Err(e) => {
                let wait = self.backoff.next_wait();
                self.quiet.warn(format_args!(
                    "Redis command connection: {e}; retrying in {wait:?}"
                ));
                self.reconnect_at = Instant::now() + wait;
            }
        }
    }

    /// Sentinel moved the master: a connection to the old one would get
    /// `READONLY` (or hang with it), so it is made again now.
    fn follow_master(&mut self) {
        // Redis Cluster: the cluster connection follows the slots itself.
        if self.redis.names.is_cluster() {
            return;
        }
        if self.con.is_some() && self.redis.master.generation() != self.generation {
            let moved = RedisError::from((redis::ErrorKind::Io, "the master moved"));
            self.lost("a master switch", &moved);
            self.reconnect_at = Instant::now();
        }
    }

    /// Drops the connection after a wire failure.
    fn lost(&mut self, what: &str, e: &RedisError) {
        let redis = &self.redis;
        if self.con.take().is_some() {
            redis.link.connections.fetch_sub(1, Ordering::Relaxed);
            redis.link.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        redis.link.command_up.store(false, Ordering::Release);
        let wait = self.backoff.next_wait();
        log::warn!("Redis command connection lost during {what}: {e}; reconnecting in {wait:?}");
        self.reconnect_at = Instant::now() + wait;
    }

    /// Publishes `first` and whatever else is queued, in one round trip.
    fn publish_queued(&mut self, first: Command, rx: &Receiver<Command>) {
        let mut publishes = Vec::new();
        let more = std::iter::once(first).chain(rx.try_iter().take(PUBLISH_BATCH - 1));
        for cmd in more {
            match cmd {
                Command::Publish { publish, reply } => publishes.push(Pending { publish, reply }),
                load => self.handle(load),
            }
        }
        self.publish(publishes);
    }

    /// Moves `first` and the loads queued behind it to the waiting list;
    /// they run a pipeline per turn.
    fn take_loads(&mut self, first: Command, loads: &Receiver<Command>) {
        let more = std::iter::once(first).chain(loads.try_iter().take(PUBLISH_BATCH - 1));
        for cmd in more {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { publish, reply } => self.publish(vec![Pending { publish, reply }]),
            Command::Load {
                channel,
                token,
                after,
            } => {
                if self.waiting_loads.len() < MAX_WAITING_LOADS {
                    self.waiting_loads.push_back((channel, token, after));
                }
            }
        }
    }

    fn publish(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        // A switch heard while this batch waited: not on the old master.
        self.follow_master();
        let redis = self.redis.clone();
        let Some(con) = self.con.as_mut() else {
            for p in &batch {
                self.answer(p, PublishReply::Failed("Redis is unreachable".into()));
            }
            return;
        };
        let args = PublishArgs {
            names: &redis.names,
            retention: self.retention,
        };
        let publishes = batch.iter().map(|p| &p.publish);
        let started = Instant::now();
        let sent = publish_pipelined(&mut **con, &args, publishes);
        if redis.names.is_cluster() && sent.is_ok() {
            let slots: Vec<u16> = batch.iter().map(|p| slot_of(&p.publish.channel)).collect();
            redis.shards.publish_batch(&slots, started.elapsed());
        }
        let results = match sent {
            Ok(results) => results,
            Err(e) => {
                redis
                    .link
                    .publish_errors
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for p in &batch {
                    self.answer(p, PublishReply::Failed(format!("Redis: {e}")));
                }
                if link_failed(&e) {
                    self.lost("a publish", &e);
                } else {
                    log::warn!("publish pipeline failed: {e}");
                }
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut demoted = None;
        for (p, result) in batch.iter().zip(results) {
            let (outcome, readonly) = self.outcome(&args, &p.publish, result);
            demoted = demoted.or(readonly);
            outcomes.push(outcome);
        }
        self.confirm(&batch, &mut outcomes);
        for (p, outcome) in batch.iter().zip(outcomes) {
            self.answer(p, outcome);
        }
        if let Some(e) = demoted {
            // We are talking to a replica (a master demoted under us).
            self.lost("a publish", &e);
        }
    }

    /// One publish's answer (retrying once if the script cache was
    /// flushed), and the error that ends the connection (`READONLY`: the
    /// server is a replica now; Redis Cluster: a node is unreachable).
    fn outcome(
        &mut self,
        args: &PublishArgs<'_>,
        publish: &Publish,
        result: super::wire::PublishResult,
    ) -> (PublishReply, Option<RedisError>) {
        let result = match result {
            Err(e) if e.code() == Some("NOSCRIPT") => match self.con.as_mut() {
                Some(con) => publish_once(&mut **con, args, publish),
                None => Err(e),
            },
            other => other,
        };
        let link = &self.redis.link;
        match result {
            Ok((id, duplicate)) => {
                link.publishes.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    self.hub.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                (PublishReply::Done { id, duplicate }, None)
            }
            Err(e) => {
                link.publish_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("publish to {} failed: {e}", publish.channel);
                // `READONLY`: a demoted master. A wire failure here (Redis
                // Cluster: one master's pipeline failed, the others'
                // answers stand) is a node gone: the new connection reads
                // the slot map again, so a promoted replica is found.
                let lost = link_failed(&e).then(|| e.clone());
                (PublishReply::Failed(format!("Redis: {e}")), lost)
            }
        }
    }

    /// With `redis.min_replicas_ack`: the batch's publishes stand only if
    /// that many replicas have them (`WAIT` covers every write this
    /// connection made on that server: one `WAIT`, or with Redis Cluster
    /// one on each channel's slot master); else they answer 503 and the
    /// publisher retries with its publish id. What was written stays
    /// written (and was announced): the retry finds the publish id and
    /// answers with the same event, so nothing is delivered twice.
    fn confirm(&mut self, batch: &[Pending], outcomes: &mut [PublishReply]) {
        let needed = self.redis.config.min_replicas_ack;
        let done = |o: &PublishReply| matches!(o, PublishReply::Done { .. });
        if needed == 0 {
            return;
        }
        let redis = self.redis.clone();
        let key_of = |p: &Pending| match redis.names.is_cluster() {
            true => redis.names.stream(&p.publish.channel),
            false => String::new(),
        };
        let mut keys: Vec<String> = batch
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| done(o))
            .map(|(p, _)| key_of(p))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(why) = self.unconfirmed(&key, needed) else {
                continue;
            };
            for (p, outcome) in batch.iter().zip(outcomes.iter_mut()) {
                if done(outcome) && key_of(p) == key {
                    redis.link.unacked.fetch_add(1, Ordering::Relaxed);
                    *outcome = PublishReply::Failed(why.clone());
                }
            }
        }
    }

    /// `WAIT` on the server holding `key`: `None` when enough replicas
    /// confirmed, else why not.
    fn unconfirmed(&mut self, key: &str, needed: u32) -> Option<String> {
        let timeout_ms = self.redis.config.ack_timeout_ms;
        let Some(con) = self.con.as_mut() else {
            return Some("Redis: the connection was lost before WAIT".into());
        };
        match con.wait_for(key, needed, timeout_ms) {
            Ok(acked) if acked >= u64::from(needed) => None,
            Ok(acked) => Some(format!(
                "Redis: {acked} of {needed} replicas confirmed the publish within {timeout_ms} ms; retry with the same id"
            )),
            Err(e) => {
                let why = format!("Redis: WAIT failed: {e}");
                if link_failed(&e) {
                    self.lost("WAIT", &e);
                }
                Some(why)
            }
        }
    }

    fn answer(&self, p: &Pending, reply: PublishReply) {
        let Some(mailbox) = self.mailboxes.get(p.reply.reactor) else {
            return;
        };
        let msg = Msg::PublishReply {
            conn: p.reply,
            reply,
        };
        if !mailbox.send(msg) {
            // The reactor's inbox is full: its request times out with 503.
            self.redis.link.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs one pipeline of waiting loads, up to [`LOAD_BATCH`] (after a
    /// reconnect every channel reloads at once; the loop runs the rest a
    /// pipeline per turn, publishes between them).
    fn run_waiting_loads(&mut self) {
        let redis = self.redis.clone();
        // A job's channel loads its whole stream (`jobs.max_events`).
        let hub = self.hub.clone();
        let max = |channel: &str| hub.limits_for(channel).max_events;
        if !self.waiting_loads.is_empty() {
            let Some(con) = self.con.as_mut() else {
                return;
            };
            let n = self.waiting_loads.len().min(LOAD_BATCH);
            let batch: Vec<_> = self.waiting_loads.drain(..n).collect();
            let cmds: Vec<redis::Cmd> = batch
                .iter()
                .map(|(channel, _, after)| load_cmd(&redis.names, channel, max(channel), *after))
                .collect();
            let replies = match load_pipelined(&mut **con, &cmds) {
                Ok(replies) => replies,
                Err(e) => {
                    for item in batch.into_iter().rev() {
                        self.waiting_loads.push_front(item);
                    }
                    if link_failed(&e) {
                        return self.lost("history loads", &e);
                    }
                    log::warn!("history loads failed: {e}; retrying");
                    return;
                }
            };
            for ((channel, token, after), reply) in batch.into_iter().zip(replies) {
                let loaded = match reply {
                    Err(e) if e.code() == Some("NOSCRIPT") => match self.con.as_mut() {
                        Some(con) => {
                            load_once(&mut **con, &redis.names, &channel, max(&channel), after)
                        }
                        None => Err(e),
                    },
                    Err(e) => Err(e),
                    Ok(v) => parse_load(&channel, v, max(&channel), after),
                };
                let now = self.clock.now_ms();
                match loaded {
                    Ok((events, floor)) => {
                        let n = events.len();
                        if self.hub.finish_sync(&channel, token, events, floor, now) {
                            log::debug!("loaded {channel}: {n} events from its stream");
                        }
                    }
                    Err(e) => {
                        // Redis refused (say, the key holds something
                        // else): the channel starts with no history rather
                        // than never.
                        log::warn!("loading {channel} from Redis: {e}; starting it empty");
                        self.hub.finish_sync(&channel, token, Vec::new(), 0, now);
                    }
                }
            }
        }
    }

    /// Publishes the time on this node's canary channel; the pub/sub
    /// thread reads it back.
    fn canary(&mut self) {
        let redis = &self.redis;
        let interval = Duration::from_millis(redis.config.canary_ms);
        let channel = redis.names.canary(&redis.node);
        let sent = self.clock.now_ms().to_string();
        self.next_canary = Instant::now() + interval;
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let result: Result<i64, RedisError> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&sent)
            .query(&mut **con);
        if let Err(e) = result {
            if link_failed(&e) {
                self.lost("the canary", &e);
            } else {
                log::warn!("canary publish: {e}");
            }
        }
    }
}
