//! The Redis side of the worker protocol as the engine uses it: the
//! function library (`scripts/jobs.lua` after `publish.lua` wrapped in a
//! Lua function, so job events take the one publish path), what a node
//! writes at start, and the commands it sends with their replies read.
//! No thread, no state (see `super`).

use std::sync::OnceLock;

use redis::{ConnectionLike, RedisError, Value};

use crate::config::JobsConfig;
use crate::hub::ids;
use crate::jobs::Kind;
use crate::link::Names;

/// The consumer group every worker reads the queues with.
pub const GROUP: &str = "workers";
/// Every kind of job, each with its own queue stream.
pub const KINDS: [Kind; 2] = [Kind::Summarize, Kind::Ask];
/// Pending entries one sweep looks at, per queue, at most.
pub const SWEEP_LIMIT: usize = 256;
/// The smallest event a worker may always send, bytes.
const MIN_EVENT_BYTES: usize = 4096;

/// The library `FUNCTION LOAD REPLACE` installs: `publish.lua` (the
/// channel publish every node runs) as the Lua function `publish`, then
/// the job functions that call it. Written once, never by hand twice.
pub fn library() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "#!lua name=redix_jobs\n\n\
             -- bridge/scripts/publish.lua, unchanged, as a function.\n\
             local function publish(KEYS, ARGV)\n{}\nend\n\n{}",
            include_str!("../../bridge/scripts/publish.lua"),
            include_str!("../scripts/jobs.lua"),
        )
    })
}

/// What the job functions and the workers read from `<prefix>jobs:config`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub ttl_ms: u64,
    pub cache_ttl_ms: u64,
    pub max_events: usize,
    pub max_attempts: u32,
    pub visibility_ms: u64,
    pub max_event_bytes: usize,
}

impl Settings {
    pub fn of(config: &JobsConfig, max_event_bytes: usize) -> Settings {
        Settings {
            ttl_ms: config.ttl_ms,
            cache_ttl_ms: config.cache_ttl_ms,
            max_events: config.max_events,
            max_attempts: config.max_attempts,
            visibility_ms: config.visibility_ms,
            // A node that takes no publishes (`limits.max_body_bytes = 0`)
            // still takes job events.
            max_event_bytes: max_event_bytes.max(MIN_EVENT_BYTES),
        }
    }
}

/// Loads the functions, writes the settings and makes sure each queue and
/// its group exist (an existing group is kept: `BUSYGROUP` is fine). Run
/// on every (re)connect: a Redis that restarted empty gets them again.
/// Redis Cluster: the cluster connection sends `FUNCTION LOAD` to every
/// master of its slot map (replicas copy it), so each shard can run the
/// job functions; run again after a failover or "Function not found".
pub fn setup(con: &mut dyn ConnectionLike, names: &Names, s: &Settings) -> Result<(), RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(library())
        .query::<String>(con)?;
    redis::cmd("HSET")
        .arg(names.jobs_config())
        .arg("ttl_ms")
        .arg(s.ttl_ms)
        .arg("cache_ttl_ms")
        .arg(s.cache_ttl_ms)
        .arg("max_events")
        .arg(s.max_events)
        .arg("max_attempts")
        .arg(s.max_attempts)
        .arg("visibility_ms")
        .arg(s.visibility_ms)
        .arg("max_event_bytes")
        .arg(s.max_event_bytes)
        // The queues' names, so a worker computes none (Redis Cluster's
        // differ).
        .arg("queue_summarize")
        .arg(names.jobs_queue("summarize"))
        .arg("queue_ask")
        .arg(names.jobs_queue("ask"))
        .query::<()>(con)?;
    for kind in KINDS {
        // From 0, not $: entries already in a stream without the group
        // are jobs too.
        let made = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(names.jobs_queue(kind.name()))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(con);
        match made {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What one submission is: its kind and input, the id a new job gets, and
/// whether the client may start one (under its cap of jobs in flight).
pub struct Submit<'a> {
    pub kind: Kind,
    pub input: &'a str,
    pub id: &'a str,
    pub may_create: bool,
}

/// `FCALL redix_job_submit`: the cached summary, the job in flight for
/// the same URL, or a new job `id` (if it may be created).
pub fn submit_cmd(names: &Names, s: &Submit<'_>, max_jobs: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("redix_job_submit")
        .arg(0)
        .arg(names.prefix())
        .arg(s.kind.name())
        .arg(s.input)
        .arg(s.id)
        .arg(max_jobs)
        .arg(if s.may_create { "1" } else { "0" });
    cmd
}

/// What a submission found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Cached(String),
    Joined(String),
    Created(String),
    /// A new job was needed, and the client may not start one.
    Capped,
}

pub fn parse_submit(reply: Value) -> Result<Submitted, RedisError> {
    let (how, what): (String, String) = redis::from_redis_value(reply)?;
    match how.as_str() {
        "cached" => Ok(Submitted::Cached(what)),
        "joined" => Ok(Submitted::Joined(what)),
        "created" => Ok(Submitted::Created(what)),
        "capped" => Ok(Submitted::Capped),
        _ => Err(unexpected("submit")),
    }
}

/// `HMGET <prefix>job:<id> state end`.
pub fn find_cmd(names: &Names, id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(names.job(id)).arg("state").arg("end");
    cmd
}

/// None: no such job; else the id of its last event once it ended.
pub fn parse_find(reply: Value) -> Result<Option<Option<u64>>, RedisError> {
    let (state, end): (Option<String>, Option<String>) = redis::from_redis_value(reply)?;
    Ok(state.map(|_| end.as_deref().and_then(ids::parse_stream)))
}

/// How a job ended, as a parked summarize learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Done { input: String, result: String },
    Failed { code: String, message: String },
}

/// `HMGET <prefix>job:<id> state input result code message`.
pub fn ending_cmd(names: &Names, id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(names.job(id))
        .arg(&["state", "input", "result", "code", "message"][..]);
    cmd
}

/// None while the job runs (or when it is gone).
pub fn parse_ending(reply: Value) -> Result<Option<Ending>, RedisError> {
    type Fields = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (state, input, result, code, message): Fields = redis::from_redis_value(reply)?;
    Ok(match state.as_deref() {
        Some("done") => Some(Ending::Done {
            input: input.unwrap_or_default(),
            result: result.unwrap_or_default(),
        }),
        Some("failed") => Some(Ending::Failed {
            code: code.unwrap_or_else(|| "worker_error".into()),
            message: message.unwrap_or_default(),
        }),
        _ => None,
    })
}

/// `FCALL redix_jobs_sweep`: stalled and exhausted jobs fail; the queues'
/// figures come back.
pub fn sweep_cmd(names: &Names, config: &JobsConfig) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("redix_jobs_sweep")
        .arg(0)
        .arg(names.prefix())
        .arg(config.stall_ms)
        .arg(config.visibility_ms)
        .arg(config.max_attempts)
        .arg(SWEEP_LIMIT);
    cmd
}

/// What one sweep did and saw, over every queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Jobs this sweep failed `worker_stalled`.
    pub stalled: Vec<String>,
    /// Jobs this sweep failed `attempts_exhausted`.
    pub exhausted: Vec<String>,
    /// Entries no worker has read yet (the groups' lag).
    pub waiting: u64,
    /// Entries delivered to a worker and not yet acknowledged.
    pub delivered: u64,
    /// Entries the groups have read, ever: moves when a worker takes one.
    pub read: u64,
    /// Worker calls of `redix_job_event`, ever.
    pub progress: u64,
}

pub fn parse_sweep(reply: Value) -> Result<Swept, RedisError> {
    type Parts = (Vec<String>, Vec<String>, i64, i64, i64, i64);
    let (stalled, exhausted, waiting, delivered, read, progress): Parts =
        redis::from_redis_value(reply)?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Swept {
        stalled,
        exhausted,
        waiting: n(waiting),
        delivered: n(delivered),
        read: n(read),
        progress: n(progress),
    })
}

/// A `<prefix>jobs:done` message: the job and whether it failed.
pub fn parse_done(payload: &str) -> Option<(String, bool)> {
    let (id, state) = payload.split_once(' ')?;
    let failed = match state {
        "done" => false,
        "failed" => true,
        _ => return None,
    };
    crate::jobs::valid_id(id).then(|| (id.to_string(), failed))
}

/// Redis answered, but not in the shape the functions return.
fn unexpected(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        what.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_library_wraps_publish_once() {
        let lib = library();
        assert!(lib.starts_with("#!lua name=redix_jobs\n"));
        assert_eq!(lib.matches("local function publish(KEYS, ARGV)").count(), 1);
        assert!(lib.contains("redis.call('XADD', stream, id, 'd', data)"));
        for f in ["redix_job_event", "redix_job_submit", "redix_jobs_sweep"] {
            assert!(
                lib.contains(&format!("redis.register_function('{f}'")),
                "{f}"
            );
        }
    }

    #[test]
    fn replies_read_back() {
        let pair = |a: &str, b: &str| Value::Array(vec![bulk(a), bulk(b)]);
        let table = [
            (pair("cached", "text"), Submitted::Cached("text".into())),
            (pair("joined", "ab"), Submitted::Joined("ab".into())),
            (pair("created", "cd"), Submitted::Created("cd".into())),
            (pair("capped", ""), Submitted::Capped),
        ];
        for (reply, want) in table {
            assert_eq!(parse_submit(reply).unwrap(), want);
        }
        assert!(parse_submit(pair("other", "x")).is_err());
        assert!(parse_submit(Value::Int(1)).is_err());
        let found = Value::Array(vec![bulk("done"), bulk("1700000000000-3")]);
        let end = ids::parse_stream("1700000000000-3");
        assert_eq!(parse_find(found).unwrap(), Some(end));
        let running = Value::Array(vec![bulk("running"), Value::Nil]);
        assert_eq!(parse_find(running).unwrap(), Some(None));
        assert_eq!(
            parse_find(Value::Array(vec![Value::Nil, Value::Nil])).unwrap(),
            None
        );
    }

    #[test]
    fn sweeps_and_endings_read_back() {
        let ids = |v: &[&str]| Value::Array(v.iter().map(|s| bulk(s)).collect());
        let reply = Value::Array(vec![
            ids(&["a"]),
            ids(&[]),
            Value::Int(3),
            Value::Int(1),
            Value::Int(9),
            Value::Int(40),
        ]);
        let swept = parse_sweep(reply).unwrap();
        assert_eq!(swept.stalled, vec!["a".to_string()]);
        assert_eq!(
            (swept.waiting, swept.delivered, swept.read, swept.progress),
            (3, 1, 9, 40)
        );
        let failed = Value::Array(vec![
            bulk("failed"),
            bulk("https://x"),
            Value::Nil,
            bulk("worker_stalled"),
            bulk("quiet"),
        ]);
        assert_eq!(
            parse_ending(failed).unwrap(),
            Some(Ending::Failed {
                code: "worker_stalled".into(),
                message: "quiet".into()
            })
        );
        let running = Value::Array(vec![
            bulk("running"),
            bulk("q"),
            Value::Nil,
            Value::Nil,
            Value::Nil,
        ]);
        assert_eq!(parse_ending(running).unwrap(), None);
        assert_eq!(parse_done("ab12 done"), Some(("ab12".into(), false)));
        assert_eq!(parse_done("ab12 failed"), Some(("ab12".into(), true)));
        assert_eq!(parse_done("ab12 other"), None);
        assert_eq!(parse_done("a b done"), None);
    }
}
