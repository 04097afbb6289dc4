//! The command thread: one blocking Redis connection (the `redis` crate)
//! for publishes, history loads and the readiness canary.
//!
//! While the connection is down, publishes are answered with a failure at
//! once and loads wait (they are retried after the reconnect); a command
//! that fails on the wire drops the connection, which is then re-made with
//! backoff.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use redis::{Connection, RedisError, Script, Value};

use super::{Backoff, Endpoint, Parts, Retention};
use crate::clock::Clock;
use crate::hub::{ids, Hub, RemoteEvent};
use crate::link::{Command, Names, Publish, Redis};
use crate::mailbox::{ConnRef, Mailbox, Msg, PublishReply};

/// Loads waiting for the connection, at most (one per channel at a time).
const MAX_WAITING_LOADS: usize = 100_000;

fn publish_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/publish.lua")))
}

fn load_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/load.lua")))
}

/// Opens a command connection with timeouts on connect, read and write.
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Connection, RedisError> {
    let client = redis::Client::open(endpoint.connection_info()?)?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// What one publish needs besides the connection.
pub struct PublishArgs<'a> {
    pub names: &'a Names,
    pub retention: Retention,
}

/// A publish's stream id and whether its publisher id had been seen.
type PublishResult = Result<(String, bool), RedisError>;

/// Publishes (or history loads) sent in one pipeline, at most.
const PUBLISH_BATCH: usize = 256;

/// The `EVALSHA` of one publish (the script must be loaded).
fn publish_cmd(args: &PublishArgs<'_>, p: &Publish) -> redis::Cmd {
    let (names, keep) = (args.names, args.retention);
    let (channel, publish_id) = (&p.channel, p.publish_id.as_deref());
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(publish_script().get_hash())
        .arg(if publish_id.is_some() { 3 } else { 2 })
        .arg(names.stream(channel))
        .arg(names.last_id());
    if let Some(pid) = publish_id {
        cmd.arg(names.seen(pid));
    }
    cmd.arg(names.notify(channel))
        .arg(&p.data)
        .arg(keep.max_events.max(1))
        .arg(keep.max_age_ms)
        .arg(keep.dedupe_ttl_ms);
    cmd
}

/// Runs the publish script once (loading it first): returns the stream id
/// and whether the publisher id had been seen (then nothing was published).
pub fn publish_once(
    con: &mut Connection,
    args: &PublishArgs<'_>,
    p: &Publish,
) -> Result<(String, bool), RedisError> {
    publish_script().load(con)?;
    let (id, seen): (String, i64) = publish_cmd(args, p).query(con)?;
    Ok((id, seen == 1))
}

/// Runs publishes in one pipeline, one answer each. `Err` when the wire
/// failed (then nothing is known about any of them).
fn publish_pipelined(
    con: &mut Connection,
    args: &PublishArgs<'_>,
    batch: &[Pending],
) -> Result<Vec<PublishResult>, RedisError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for p in batch {
        pipe.add_command(publish_cmd(args, &p.publish));
    }
    let results: Vec<Result<(String, i64), RedisError>> = pipe.query(con)?;
    Ok(results
        .into_iter()
        .map(|r| r.map(|(id, seen)| (id, seen == 1)))
        .collect())
}

/// Reads a channel's history from its stream, oldest first: on a first
/// load the newest `max_events`, on a reload everything after `after`.
/// Also returns the highest id known to be gone from the stream.
pub fn load_once(
    con: &mut Connection,
    names: &Names,
    channel: &str,
    max_events: usize,
    after: Option<u64>,
) -> Result<(Vec<RemoteEvent>, u64), RedisError> {
    load_script().load(con)?;
    let reply: Value = load_cmd(names, channel, max_events, after).query(con)?;
    parse_load(channel, reply, max_events, after)
}

/// The `EVALSHA` of one load (the script must be loaded).
fn load_cmd(names: &Names, channel: &str, max_events: usize, after: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(load_script().get_hash())
        .arg(2)
        .arg(names.stream(channel))
        .arg(names.lost())
        .arg(max_events)
        .arg(after.map(ids::stream_id).unwrap_or_default());
    cmd
}

/// A load's reply as events (oldest first) and the floor.
fn parse_load(
    channel: &str,
    reply: Value,
    max_events: usize,
    after: Option<u64>,
) -> Result<(Vec<RemoteEvent>, u64), RedisError> {
    let bad = || RedisError::from((redis::ErrorKind::Parse, "unexpected load reply"));
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let [trimmed, Value::Array(entries), lost] = parts.as_slice() else {
        return Err(bad());
    };
    let mut floor = text(trimmed).and_then(ids::parse_stream).unwrap_or(0);
    // On a first load, ids up to a data-loss mark count as gone too: a
    // client resuming from before the loss gets a reset. (A reload keeps
    // what this node delivered; it was live when Redis went away.)
    if after.is_none() {
        floor = floor.max(text(lost).and_then(ids::parse_stream).unwrap_or(0));
    }
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else {
            return Err(bad());
        };
        let [id, Value::Array(fields)] = pair.as_slice() else {
            return Err(bad());
        };
        let Some(id_text) = text(id) else {
            return Err(bad());
        };
        let Some(id) = ids::parse_stream(id_text) else {
            log::warn!("stream {channel}: id {id_text:?} is not one redix can order; skipped");
            continue;
        };
        let data = fields
            .chunks(2)
            .find(|kv| kv.first().and_then(text) == Some("d"))
            .and_then(|kv| kv.get(1).and_then(text))
            .unwrap_or("null");
        events.push(RemoteEvent {
            id,
            id_text: id_text.to_string(),
            data: data.to_string(),
        });
    }
    // A first load reads one more than it keeps: that one marks what is
    // gone before the history.
    if after.is_none() && events.len() > max_events {
        let extra = events.len() - max_events;
        for gone in events.drain(..extra) {
            floor = floor.max(gone.id);
        }
    }
    Ok((events, floor))
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// After a reconnect: does Redis still know the newest id this node has
/// seen? If not, it restarted empty (or was flushed): the streams are gone,
/// and a client resuming from an older id on a node that reloads a channel
/// will not be told what it missed. Say so loudly, and count it.
fn check_data_kept(con: &mut Connection, hub: &Hub, redis: &Redis, keep: Retention) {
    let seen = hub.last_id();
    if seen == 0 {
        return;
    }
    let last: Result<Option<String>, RedisError> =
        redis::cmd("GET").arg(redis.names.last_id()).query(con);
    let Ok(last) = last else {
        return;
    };
    let known = last.as_deref().and_then(ids::parse_stream).unwrap_or(0);
    if known >= seen {
        return;
    }
    redis.link.data_losses.fetch_add(1, Ordering::Relaxed);
    log::error!(
        "Redis no longer knows the newest event id this node saw ({} < {}): it restarted without its data or was flushed; streams published before are gone (run Redis with persistence). Resumes from before that get a reset.",
        last.as_deref().unwrap_or("none"),
        ids::stream_id(seen)
    );
    // Every node's first loads read this mark as a floor: a client
    // resuming from an older id is told (reset) instead of silently
    // missing what was lost with Redis.
    let marked: Result<Value, RedisError> = lost_script()
        .key(redis.names.lost())
        .arg(ids::stream_id(seen))
        .arg(keep.max_age_ms)
        .invoke(con);
    if let Err(e) = marked {
        log::warn!("marking the loss in Redis: {e}");
    }
}

/// Raises the data-loss mark (a stream id) to ARGV[1] if that is newer;
/// it lasts as long as history does (ARGV[2] ms): later, what was lost
/// would have expired anyway.
fn lost_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(
            "local function key(id) \
               local ms, n = string.match(id, '^(%d+)-(%d+)$') \
               return tonumber(ms), tonumber(n) \
             end \
             local cur = redis.call('GET', KEYS[1]) \
             if cur then \
               local cm, cn = key(cur) \
               local am, an = key(ARGV[1]) \
               if am < cm or (am == cm and an <= cn) then return 0 end \
             end \
             redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
             return 1",
        )
    })
}

/// The wire failed (as opposed to Redis answering with an error).
fn link_failed(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

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
    endpoint: Endpoint,
    con: Option<Connection>,
    backoff: Backoff,
    quiet: super::Quiet,
    reconnect_at: Instant,
    next_canary: Instant,
    /// Loads that could not run yet (no connection).
    waiting_loads: VecDeque<(Arc<str>, u64, Option<u64>)>,
}

/// Runs the command thread until every sender of the queue is gone.
pub fn run(parts: Parts, endpoint: Endpoint) {
    let Parts {
        redis,
        commands: rx,
        hub,
        clock,
        mailboxes,
        retention,
    } = parts;
    let backoff = Backoff::new(redis.config.backoff_min_ms, redis.config.backoff_max_ms);
    let mut t = CommandThread {
        redis,
        hub,
        clock,
        retention,
        mailboxes,
        endpoint,
        con: None,
        backoff,
        quiet: super::Quiet::default(),
        reconnect_at: Instant::now(),
        next_canary: Instant::now(),
        waiting_loads: VecDeque::new(),
    };
    loop {
        t.ensure_connected();
        if t.con.is_some() && Instant::now() >= t.next_canary {
            t.canary();
        }
        if t.con.is_some() {
            t.run_waiting_loads();
        }
        let wake = match t.con {
            Some(_) => t.next_canary,
            None => t.reconnect_at,
        };
        let wait = wake.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(cmd) => {
                // Whatever else is queued goes in the same round trip.
                let mut publishes = Vec::new();
                let more = std::iter::once(cmd).chain(rx.try_iter().take(PUBLISH_BATCH - 1));
                for cmd in more {
                    match cmd {
                        Command::Publish { publish, reply } => {
                            publishes.push(Pending { publish, reply })
                        }
                        load => t.handle(load),
                    }
                }
                t.publish(publishes);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
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
        match connect(&self.endpoint, timeout) {
            Ok(mut con) => {
                let loaded = publish_script()
                    .load(&mut con)
                    .and_then(|_| load_script().load(&mut con));
                if let Err(e) = loaded {
                    let wait = self.backoff.next_wait();
                    self.quiet.warn(format_args!(
                        "Redis: loading the publish script: {e}; retrying in {wait:?}"
                    ));
                    self.reconnect_at = Instant::now() + wait;
                    return;
                }
                redis.link.connections.fetch_add(1, Ordering::Relaxed);
                check_data_kept(&mut con, &self.hub, &redis, self.retention);
                redis.link.command_up.store(true, Ordering::Release);
                log::info!("Redis command connection up");
                self.con = Some(con);
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
                if self.con.is_some() {
                    self.run_waiting_loads();
                }
            }
        }
    }

    fn publish(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
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
        let results = match publish_pipelined(con, &args, &batch) {
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
        for (p, result) in batch.iter().zip(results) {
            // The script cache was flushed: load it again and retry once.
            let result = match result {
                Err(e) if e.code() == Some("NOSCRIPT") => match self.con.as_mut() {
                    Some(con) => publish_once(con, &args, &p.publish),
                    None => Err(e),
                },
                other => other,
            };
            let outcome = match result {
                Ok((id, duplicate)) => {
                    redis.link.publishes.fetch_add(1, Ordering::Relaxed);
                    if duplicate {
                        self.hub.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    PublishReply::Done { id, duplicate }
                }
                Err(e) => {
                    redis.link.publish_errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("publish to {} failed: {e}", p.publish.channel);
                    PublishReply::Failed(format!("Redis: {e}"))
                }
            };
            self.answer(p, outcome);
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

    /// Runs the waiting loads, up to [`PUBLISH_BATCH`] per pipeline (after
    /// a reconnect every channel reloads at once).
    fn run_waiting_loads(&mut self) {
        let redis = self.redis.clone();
        let max = self.retention.max_events;
        while !self.waiting_loads.is_empty() {
            let Some(con) = self.con.as_mut() else {
                return;
            };
            let n = self.waiting_loads.len().min(PUBLISH_BATCH);
            let batch: Vec<_> = self.waiting_loads.drain(..n).collect();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (channel, _, after) in &batch {
                pipe.add_command(load_cmd(&redis.names, channel, max, *after));
            }
            let replies: Vec<Result<Value, RedisError>> = match pipe.query(con) {
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
                        Some(con) => load_once(con, &redis.names, &channel, max, after),
                        None => Err(e),
                    },
                    Err(e) => Err(e),
                    Ok(v) => parse_load(&channel, v, max, after),
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
        let result: Result<i64, RedisError> =
            redis::cmd("PUBLISH").arg(&channel).arg(&sent).query(con);
        if let Err(e) = result {
            if link_failed(&e) {
                self.lost("the canary", &e);
            } else {
                log::warn!("canary publish: {e}");
            }
        }
    }
}

/// `redix publish CHANNEL DATA`: one publish with the node's script and
/// settings. Returns the answer as JSON, or the exit code and why.
pub fn publish_cli(
    config: &crate::config::Config,
    channel: &str,
    data: &str,
    publish_id: Option<&str>,
) -> Result<String, (i32, String)> {
    if !config.redis.enabled() {
        return Err((2, "give --redis redis://HOST:PORT (or redis.url)".into()));
    }
    crate::hub::check_channel(channel).map_err(|e| (2, e))?;
    if publish_id.is_some_and(|p| p.is_empty() || p.len() > 256) {
        return Err((2, "publisher ids are 1 to 256 bytes".into()));
    }
    let data = crate::hub::compact_json(data);
    let timeout = Duration::from_millis(config.redis.timeout_ms);
    let endpoint = Endpoint::parse(&config.redis.url).map_err(|e| (2, e))?;
    let mut con = connect(&endpoint, timeout)
        .map_err(|e| (1, format!("{}:{}: {e}", endpoint.host, endpoint.port)))?;
    let names = Names::new(&config.redis.prefix);
    let args = PublishArgs {
        names: &names,
        retention: Retention::of(config),
    };
    let publish = Publish {
        channel: channel.to_string(),
        data: data.into_owned(),
        publish_id: publish_id.map(str::to_string),
    };
    let (id, duplicate) =
        publish_once(&mut con, &args, &publish).map_err(|e| (1, e.to_string()))?;
    let answer = serde_json::json!({"id": id, "channel": channel, "duplicate": duplicate});
    Ok(answer.to_string())
}
