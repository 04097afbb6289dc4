//! The engine's commands in Redis Cluster mode, where no function may
//! touch keys of two slots. What `redix_job_submit` and `redix_jobs_sweep`
//! do in one atomic step on a single server is done here as a sequence
//! of single-slot commands, each routed by its key through the cluster
//! connection:
//!
//! - submit: `GET` the URL's cache, `GET` its in-flight job and `HMGET`
//!   that job's state, `XLEN` the queue (`TOOMANY`), then
//!   `FCALL redix_job_create` (the job's hash, in its slot), `XADD` the
//!   queue entry (fields `id kind input key`, `key` being the exact hash
//!   the worker passes to `redix_job_event`), `SET` the in-flight marker;
//! - sweep: per queue `XINFO GROUPS`, `XPENDING`, and for each entry
//!   delivered and quiet, `FCALL redix_job_check` on its job (which fails
//!   it there if stalled or out of attempts), `XACK` of entries whose job
//!   ended, `XTRIM MINID`;
//! - a summary's end: the node that created the job `SET`s the cache and
//!   drops the in-flight marker (`remember`).
//!
//! Not atomic across the steps: two nodes submitting the same URL at the
//! same instant may both start a job (both complete; the last one's
//! marker wins). The job hash exists before its entry, so a worker never
//! sees an entry whose job is missing (but for one that expired).

use redis::{ConnectionLike, RedisError, Value};
use sha2::{Digest, Sha256};

use super::functions::{self, Settings, Submit, Swept, GROUP, KINDS, SWEEP_LIMIT};
use crate::config::JobsConfig;
use crate::jobs::Kind;
use crate::link::Names;

type Con<'a> = &'a mut dyn ConnectionLike;

/// Runs `op`; when a master answers "Function not found" (one promoted
/// or added since the library was loaded, or a `FUNCTION FLUSH`), loads
/// the library on every master again and runs `op` once more.
pub fn reloading<T>(
    con: Con<'_>,
    names: &Names,
    settings: &Settings,
    mut op: impl FnMut(&mut dyn ConnectionLike) -> Result<T, RedisError>,
) -> Result<T, RedisError> {
    match op(&mut *con) {
        Err(e) if e.to_string().contains("Function not found") => {
            log::warn!("jobs: a Redis master lacks the job functions ({e}); loading them again");
            functions::setup(&mut *con, names, settings)?;
            op(con)
        }
        done => done,
    }
}

/// The hex SHA-256 of a URL: its cache and in-flight keys' suffix.
pub fn url_hash(url: &str) -> String {
    Sha256::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A reply in the shape `redix_job_submit` gives, for `parse_submit`.
fn reply(how: &str, what: &str) -> Value {
    Value::Array(vec![
        Value::BulkString(how.as_bytes().to_vec()),
        Value::BulkString(what.as_bytes().to_vec()),
    ])
}

/// The cached summary, the job in flight for the URL, or a new job.
pub fn submit(
    con: Con<'_>,
    names: &Names,
    s: &Submit<'_>,
    settings: &Settings,
    max_jobs: usize,
) -> Result<Value, RedisError> {
    let url = (s.kind == Kind::Summarize).then(|| url_hash(s.input));
    if let Some(h) = &url {
        if let Some(found) = known(con, names, h)? {
            return Ok(found);
        }
    }
    if !s.may_create {
        return Ok(reply("capped", ""));
    }
    let queue = names.jobs_queue(s.kind.name());
    let queued: usize = redis::cmd("XLEN").arg(&queue).query(con)?;
    if queued >= max_jobs {
        // The error `redix_job_submit` gives, as Redis would send it.
        let line = format!("-TOOMANY {max_jobs} {} jobs are queued\r\n", s.kind.name());
        return redis::parse_redis_value(line.as_bytes())?
            .extract_error()
            .and_then(|_| Err(unexpected()));
    }
    let job = names.job(s.id);
    redis::cmd("FCALL")
        .arg("redix_job_create")
        .arg(1)
        .arg(&job)
        .arg(s.kind.name())
        .arg(s.input)
        .arg(settings.ttl_ms)
        .arg(settings.max_events)
        .arg(settings.max_attempts)
        .arg(settings.max_event_bytes)
        .arg(settings.visibility_ms)
        .query::<Value>(con)?;
    let entry: String = redis::cmd("XADD")
        .arg(&queue)
        .arg("*")
        .arg(&[("id", s.id), ("kind", s.kind.name()), ("input", s.input)][..])
        .arg("key")
        .arg(&job)
        .query(con)?;
    redis::cmd("HSET")
        .arg(&job)
        .arg("entry")
        .arg(&entry)
        .query::<()>(con)?;
    if let Some(h) = &url {
        redis::cmd("SET")
            .arg(names.jobs_inflight(h))
            .arg(s.id)
            .arg("PX")
            .arg(settings.ttl_ms)
            .query::<()>(con)?;
    }
    Ok(reply("created", s.id))
}

fn unexpected() -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected reply"))
}

/// A URL's cached summary, or the job in flight for it (a job that ended
/// done since counts as its summary).
fn known(con: Con<'_>, names: &Names, h: &str) -> Result<Option<Value>, RedisError> {
    let cached: Option<String> = redis::cmd("GET").arg(names.jobs_cache(h)).query(con)?;
    if let Some(summary) = cached {
        return Ok(Some(reply("cached", &summary)));
    }
    let running: Option<String> = redis::cmd("GET").arg(names.jobs_inflight(h)).query(con)?;
    let Some(id) = running.filter(|id| crate::jobs::valid_id(id)) else {
        return Ok(None);
    };
    let (state, result): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(names.job(&id))
        .arg("state")
        .arg("result")
        .query(con)?;
    Ok(match state.as_deref() {
        Some("queued" | "running") => Some(reply("joined", &id)),
        Some("done") => result.map(|r| reply("cached", &r)),
        _ => None,
    })
}

/// A summary's end, by the node that created its job: the cache, and the
/// in-flight marker gone (if it still names this job).
pub fn remember(
    con: Con<'_>,
    names: &Names,
    id: &str,
    url: &str,
    summary: Option<&str>,
    cache_ttl_ms: u64,
) -> Result<(), RedisError> {
    let h = url_hash(url);
    if let Some(text) = summary.filter(|_| cache_ttl_ms > 0) {
        redis::cmd("SET")
            .arg(names.jobs_cache(&h))
            .arg(text)
            .arg("PX")
            .arg(cache_ttl_ms)
            .query::<()>(con)?;
    }
    let inflight = names.jobs_inflight(&h);
    let marked: Option<String> = redis::cmd("GET").arg(&inflight).query(con)?;
    if marked.as_deref() == Some(id) {
        redis::cmd("DEL").arg(&inflight).query::<()>(con)?;
    }
    Ok(())
}

/// Every queue swept: jobs whose worker went quiet fail, acknowledged
/// entries are trimmed, the figures come back (`progress` counts the
/// entries acknowledged, ever: a worker finishing a job).
pub fn sweep(con: Con<'_>, names: &Names, config: &JobsConfig) -> Result<Swept, RedisError> {
    let mut swept = Swept::default();
    for kind in KINDS {
        sweep_queue(
            con,
            names,
            &names.jobs_queue(kind.name()),
            config,
            &mut swept,
        )?;
    }
    Ok(swept)
}

fn sweep_queue(
    con: Con<'_>,
    names: &Names,
    queue: &str,
    config: &JobsConfig,
    out: &mut Swept,
) -> Result<(), RedisError> {
    let quiet = config.stall_ms.min(config.visibility_ms);
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(queue)
        .arg(GROUP)
        .arg("IDLE")
        .arg(quiet)
        .arg("-")
        .arg("+")
        .arg(SWEEP_LIMIT)
        .query(con)?;
    for (entry, ..) in pending {
        check_entry(con, names, queue, &entry, config.stall_ms, out)?;
    }
    let group = group_of(con, queue)?;
    let (count, oldest): (u64, Option<String>) = match redis::cmd("XPENDING")
        .arg(queue)
        .arg(GROUP)
        .query::<Value>(con)?
    {
        Value::Array(v) => (
            v.first()
                .map_or(Ok(0), |c| redis::from_redis_value(c.clone()))?,
            v.get(1)
                .and_then(|o| redis::from_redis_value(o.clone()).ok()),
        ),
        _ => (0, None),
    };
    let keep = oldest.or(group.last_delivered);
    if let Some(keep) = keep.filter(|k| k != "0-0") {
        redis::cmd("XTRIM")
            .arg(queue)
            .arg("MINID")
            .arg(keep)
            .query::<()>(con)?;
    }
    let len: u64 = redis::cmd("XLEN").arg(queue).query(con)?;
    let waiting = group.lag.unwrap_or(len.saturating_sub(count));
    out.waiting += waiting;
    out.delivered += count;
    out.read += group.read;
    out.progress += group.read.saturating_sub(count);
    Ok(())
}

/// One delivered, quiet entry: its job checked in its slot; the entry is
/// acknowledged once the job is over (or gone).
fn check_entry(
    con: Con<'_>,
    names: &Names,
    queue: &str,
    entry: &str,
    stall_ms: u64,
    out: &mut Swept,
) -> Result<(), RedisError> {
    let found: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(queue)
        .arg(entry)
        .arg(entry)
        .query(con)?;
    let field = |name: &str| {
        found
            .first()
            .and_then(|(_, f)| f.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };
    let id = field("id").filter(|id| crate::jobs::valid_id(id));
    let verdict = match &id {
        Some(id) => redis::cmd("FCALL")
            .arg("redix_job_check")
            .arg(1)
            .arg(names.job(id))
            .arg(stall_ms)
            .query::<String>(con)?,
        None => "gone".to_string(),
    };
    match (verdict.as_str(), id) {
        ("running", _) => return Ok(()),
        ("stalled", Some(id)) => out.stalled.push(id),
        ("exhausted", Some(id)) => out.exhausted.push(id),
        _ => {}
    }
    redis::cmd("XACK")
        .arg(queue)
        .arg(GROUP)
        .arg(entry)
        .query::<()>(con)
}

/// What `XINFO GROUPS` says of the group `workers`.
struct Group {
    lag: Option<u64>,
    read: u64,
    last_delivered: Option<String>,
}

fn group_of(con: Con<'_>, queue: &str) -> Result<Group, RedisError> {
    let groups: Vec<Vec<Value>> = redis::cmd("XINFO").arg("GROUPS").arg(queue).query(con)?;
    for g in groups {
        let field = |name: &str| {
            g.chunks(2)
                .find(|kv| {
                    redis::from_redis_value::<String>(kv[0].clone())
                        .ok()
                        .as_deref()
                        == Some(name)
                })
                .and_then(|kv| kv.get(1).cloned())
        };
        let text = |name: &str| field(name).and_then(|v| redis::from_redis_value::<String>(v).ok());
        if text("name").as_deref() != Some(GROUP) {
            continue;
        }
        let num = |name: &str| field(name).and_then(|v| redis::from_redis_value::<u64>(v).ok());
        return Ok(Group {
            lag: num("lag"),
            read: num("entries-read").unwrap_or(0),
            last_delivered: text("last-delivered-id"),
        });
    }
    Err(RedisError::from((
        redis::ErrorKind::Extension,
        "NOGROUP",
        format!("{queue} has no group {GROUP}"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hashes_are_sha256_hex() {
        // FIPS 180-2 "abc".
        assert_eq!(
            url_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cluster_job_keys_share_the_channel_slot() {
        let names = Names::clustered("rx:");
        assert_eq!(names.job("ab12"), "rx:{job:ab12}:job");
        assert_eq!(names.stream("job:ab12"), "rx:{job:ab12}:s");
        assert_eq!(names.jobs_queue("ask"), "rx:{jobs}:ask");
        let single = Names::new("rx:");
        assert_eq!(single.job("ab12"), "rx:job:ab12");
        assert_eq!(single.jobs_queue("ask"), "rx:jobs:ask");
    }
}
