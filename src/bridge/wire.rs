//! The command connection's vocabulary: the Lua scripts, the publish and
//! history-load commands (alone and pipelined), their replies read into
//! events, opening the command connection, and the check that Redis
//! still holds the data this node saw.
//! No thread and no queue here (see `command`).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use redis::{Connection, ConnectionLike, RedisError, Script, Value};

pub(super) use super::cluster_pipe::ClusterLink;
use super::{Endpoint, Master, Retention};
use crate::hub::{ids, Hub, RemoteEvent};
use crate::link::{Names, Publish, Redis};

pub(super) fn publish_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/publish.lua")))
}

pub(super) fn load_script() -> &'static Script {
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

/// Opens a Redis Cluster connection from the seed nodes: it keeps the
/// slot map and follows `MOVED`, `ASK` and `TRYAGAIN` (bounded retries).
/// `reply_within` bounds each answer (a publish's includes its `WAIT`).
pub fn connect_cluster(
    seeds: &[Endpoint],
    timeout: Duration,
    reply_within: Duration,
) -> Result<redis::cluster::ClusterConnection, RedisError> {
    let infos = seeds
        .iter()
        .map(Endpoint::connection_info)
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
        .connection_timeout(timeout)
        .response_timeout(reply_within)
        .retries(6);
    if let Some(first) = seeds.first() {
        if let Some(user) = &first.username {
            builder = builder.username(user);
        }
        if let Some(pass) = &first.password {
            builder = builder.password(pass);
        }
    }
    builder.build()?.get_connection()
}

/// Opens a command connection to wherever the master is now.
pub fn connect_master(master: &Master, timeout: Duration) -> Result<Connection, RedisError> {
    let endpoint = master
        .endpoint()
        .map_err(|e| RedisError::from((redis::ErrorKind::Io, "no master", e)))?;
    connect(&endpoint, timeout)
}

/// What one publish needs besides the connection.
pub struct PublishArgs<'a> {
    pub names: &'a Names,
    pub retention: Retention,
}

/// A publish's stream id and whether its publisher id had been seen.
pub(super) type PublishResult = Result<(String, bool), RedisError>;

/// Publishes (or history loads) sent in one pipeline, at most.
pub(super) const PUBLISH_BATCH: usize = 256;

/// The `EVALSHA` of one publish (the script must be loaded).
pub(super) fn publish_cmd(args: &PublishArgs<'_>, p: &Publish) -> redis::Cmd {
    publish_cmd_fenced(args, p, None)
}

/// The `EVALSHA` of one publish, with the market lease's fencing value
/// when `fence` is given (then a publisher id is not used).
fn publish_cmd_fenced(args: &PublishArgs<'_>, p: &Publish, fence: Option<&str>) -> redis::Cmd {
    let (names, keep) = (args.names, args.retention);
    let channel = &p.channel;
    let publish_id = p.publish_id.as_deref().filter(|_| fence.is_none());
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(publish_script().get_hash())
        .arg(if publish_id.is_some() || fence.is_some() {
            3
        } else {
            2
        })
        .arg(names.stream(channel))
        .arg(names.last_id_of(channel));
    if let Some(pid) = publish_id {
        cmd.arg(names.seen(channel, pid));
    }
    if fence.is_some() {
        cmd.arg(names.market_lease());
    }
    cmd.arg(names.notify(channel))
        .arg(&p.data)
        .arg(keep.max_events.max(1))
        .arg(keep.max_age_ms)
        .arg(keep.dedupe_ttl_ms);
    if let Some(value) = fence {
        cmd.arg(value);
    }
    cmd
}

/// Publishes market trades in one pipeline, each only while the market
/// lease still holds `fence` (the holder's "<node> <token>"): a node that
/// lost the lease cannot publish once another took it. `Err` when the
/// wire failed or a publish was refused (a refusal's text starts with
/// `FENCED`).
pub fn publish_fenced(
    con: &mut dyn ConnectionLike,
    args: &PublishArgs<'_>,
    batch: &[Publish],
    fence: &str,
) -> Result<(), RedisError> {
    publish_script().load(con)?;
    let mut pipe = redis::pipe();
    for p in batch {
        pipe.add_command(publish_cmd_fenced(args, p, Some(fence)))
            .ignore();
    }
    pipe.query::<()>(con)
}

/// Runs the publish script once (loading it first): returns the stream id
/// and whether the publisher id had been seen (then nothing was published).
pub fn publish_once(
    con: &mut dyn ConnectionLike,
    args: &PublishArgs<'_>,
    p: &Publish,
) -> Result<(String, bool), RedisError> {
    publish_script().load(con)?;
    let (id, seen): (String, i64) = publish_cmd(args, p).query(con)?;
    Ok((id, seen == 1))
}

/// Runs publishes in one pipeline (Redis Cluster: one per master), one
/// answer each. `Err` when the wire failed (then nothing is known about
/// any of them).
pub(super) fn publish_pipelined<'a>(
    con: &mut dyn Link,
    args: &PublishArgs<'a>,
    batch: impl Iterator<Item = &'a Publish>,
) -> Result<Vec<PublishResult>, RedisError> {
    let cmds: Vec<redis::Cmd> = batch.map(|p| publish_cmd(args, p)).collect();
    let replies = con.pipeline(&cmds)?;
    Ok(replies
        .into_iter()
        .map(|r| {
            let (id, seen): (String, i64) = redis::from_redis_value(r?)?;
            Ok((id, seen == 1))
        })
        .collect())
}

/// Reads a channel's history from its stream, oldest first: on a first
/// load the newest `max_events`, on a reload everything after `after`.
/// Also returns the highest id known to be gone from the stream.
pub fn load_once(
    con: &mut dyn ConnectionLike,
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
pub(super) fn load_cmd(
    names: &Names,
    channel: &str,
    max_events: usize,
    after: Option<u64>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(load_script().get_hash())
        .arg(2)
        .arg(names.stream(channel))
        .arg(names.lost_of(channel))
        .arg(max_events)
        .arg(after.map(ids::stream_id).unwrap_or_default());
    cmd
}

/// A load's reply as events (oldest first) and the floor.
pub(super) fn parse_load(
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

pub fn text(v: &Value) -> Option<&str> {
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
pub(super) fn check_data_kept(
    con: &mut dyn ConnectionLike,
    hub: &Hub,
    redis: &Redis,
    keep: Retention,
) {
    let seen = hub.last_id();
    // Redis Cluster: no cluster-wide id to compare (ids are per channel).
    if seen == 0 || redis.names.is_cluster() {
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
pub(super) fn lost_script() -> &'static Script {
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

/// One command's answer (an error answer is an `Err`).
pub(super) type Reply = Result<Value, RedisError>;

/// A command connection: one server's, or a Redis Cluster's
/// ([`ClusterLink`]).
pub trait Link: ConnectionLike + Send {
    /// `WAIT needed timeout_ms` on the server that holds `key` (the only
    /// one, or the master of the key's slot): how many of its replicas
    /// have every write this connection made there.
    fn wait_for(&mut self, key: &str, needed: u32, timeout_ms: u64) -> Result<u64, RedisError>;

    /// Runs `cmds` pipelined, one answer each, in order. `Err` when the
    /// wire failed (then nothing is known about any of them).
    fn pipeline(&mut self, cmds: &[redis::Cmd]) -> Result<Vec<Reply>, RedisError>;
}

impl Link for Connection {
    fn wait_for(&mut self, _key: &str, needed: u32, timeout_ms: u64) -> Result<u64, RedisError> {
        wait_replicas(self, needed, timeout_ms)
    }

    fn pipeline(&mut self, cmds: &[redis::Cmd]) -> Result<Vec<Reply>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let replies = self.req_packed_commands(&packed(cmds.iter()), 0, cmds.len())?;
        Ok(replies.into_iter().map(Value::extract_error).collect())
    }
}

/// Commands written one after another, as a pipeline goes on the wire.
pub(super) fn packed<'a>(cmds: impl Iterator<Item = &'a redis::Cmd>) -> Vec<u8> {
    let mut out = Vec::new();
    for cmd in cmds {
        cmd.write_packed_command(&mut out);
    }
    out
}

/// `WAIT needed timeout_ms`: how many replicas have every write this
/// connection made (it returns early once `needed` have).
pub(super) fn wait_replicas(
    con: &mut dyn ConnectionLike,
    needed: u32,
    timeout_ms: u64,
) -> Result<u64, RedisError> {
    redis::cmd("WAIT").arg(needed).arg(timeout_ms).query(con)
}

/// The wire failed (as opposed to Redis answering with an error), or the
/// server is a replica now (`READONLY`: Sentinel demoted it; the master
/// is elsewhere and the connection must be made again).
pub fn link_failed(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code() == Some("READONLY")
}

/// The command connection: to the master, or (Redis Cluster) to the
/// cluster through its seed nodes.
pub(super) fn open(redis: &Redis, timeout: Duration) -> Result<Box<dyn Link>, RedisError> {
    if redis.names.is_cluster() {
        // A publish's reply may wait for its `WAIT`.
        let reply_within = timeout + ack_wait(redis);
        let link = ClusterLink::open(&redis.master.seeds, timeout, reply_within)?;
        return Ok(Box::new(link));
    }
    let con = connect_master(&redis.master, timeout)?;
    // A publish's reply comes after its `WAIT`.
    con.set_read_timeout(Some(timeout + ack_wait(redis)))?;
    Ok(Box::new(con))
}

/// Runs history loads pipelined (Redis Cluster: one pipeline per
/// master), one answer each; a wire failure of any of them is the
/// batch's (loads only read: they all run again after the reconnect).
pub(super) fn load_pipelined(
    con: &mut dyn Link,
    cmds: &[redis::Cmd],
) -> Result<Vec<Reply>, RedisError> {
    let replies = con.pipeline(cmds)?;
    let wire = replies.iter().filter_map(|r| r.as_ref().err());
    match wire.into_iter().find(|e| link_failed(e)) {
        Some(e) => Err(e.clone()),
        None => Ok(replies),
    }
}

/// How much longer than a plain command a publish may take: its `WAIT`.
pub(super) fn ack_wait(redis: &Redis) -> Duration {
    ack_wait_of(&redis.config)
}

pub(super) fn ack_wait_of(config: &crate::config::RedisConfig) -> Duration {
    match config.min_replicas_ack {
        0 => Duration::ZERO,
        _ => Duration::from_millis(config.ack_timeout_ms),
    }
}
