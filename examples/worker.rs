//! A job worker for redix in Redis mode, speaking only the documented
//! worker protocol (README, "Worker protocol (Redis mode)"): nothing here
//! talks to redix, only to Redis, so a worker in any language does the
//! same with its own Redis client.
//!
//! ```text
//! cargo run --example worker -- --redis redis://127.0.0.1:6379 --prefix redix: --name w1 --token-ms 30
//! cargo run --example worker -- --cluster --redis redis://127.0.0.1:7000 --prefix redix: --name w1
//! ```
//!
//! The queues' names come from `<prefix>jobs:config` (`queue_summarize`,
//! `queue_ask`) and the key `redix_job_event` takes from each entry's
//! field `key`, so with Redis Cluster (`--cluster`, where both differ:
//! `<prefix>{jobs}:<kind>`, `<prefix>{job:<id>}:job`) the worker computes
//! nothing new: its cluster connection routes each command by its key.
//!
//! Per job: take one (`XAUTOCLAIM` a job whose worker went quiet for
//! `visibility_ms`, else `XREADGROUP … >`), `FCALL redix_job_event …
//! heartbeat` (the job is running), one `token` call per token, then
//! `done` (or `error`), then `XACK`. The text is the built-in demo
//! worker's (`redix::jobs::demo`), so tests know every token.
//!
//! SIGTERM or SIGINT: the job in hand is finished, then the worker exits
//! (within a second when idle); SIGKILL stops it at once, and another
//! worker takes its job over after `visibility_ms`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use redis::{ConnectionLike, RedisError, RedisResult, Value};
use redix::jobs::{demo, Kind};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Parser, Debug)]
#[command(about = "A redix job worker (Redis mode)")]
struct Args {
    /// The Redis redix uses.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// `--redis` is a seed node of a Redis Cluster.
    #[arg(long)]
    cluster: bool,
    /// redix's key prefix (`redis.prefix`).
    #[arg(long, default_value = "redix:")]
    prefix: String,
    /// This worker's consumer name in the group (unique per worker).
    #[arg(long)]
    name: Option<String>,
    /// Pause between two tokens, ms.
    #[arg(long, default_value_t = 30)]
    token_ms: u64,
}

/// The consumer group redix creates on each queue.
const GROUP: &str = "workers";
const KINDS: [Kind; 2] = [Kind::Summarize, Kind::Ask];

/// One job as its queue entry carries it.
#[derive(Debug)]
struct Job {
    entry: String,
    id: String,
    /// The job's hash, as the entry names it: `redix_job_event`'s key.
    key: String,
    kind: Kind,
    input: String,
}

struct Worker {
    con: Box<dyn ConnectionLike>,
    prefix: String,
    /// The queue of each kind (summarize, ask), as redix named them.
    queues: [String; 2],
    name: String,
    token_ms: u64,
    /// A job whose worker said nothing for this long may be taken over
    /// (`<prefix>jobs:config` field `visibility_ms`).
    visibility_ms: u64,
}

fn main() {
    let args = Args::parse();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker {name}: cannot handle signals: {e}");
            std::process::exit(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let work = {
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || {
            // Signals go to the main thread: a Redis read here is never
            // cut short by one (reads with a timeout are not restarted).
            block_stop_signals();
            work(&args, &name, &stop);
        })
    };
    if let Some(sig) = signals.forever().next() {
        eprintln!("worker {name}: signal {sig}: stopping after the job in hand");
        stop.store(true, Ordering::Relaxed);
    }
    let _ = work.join();
    eprintln!("worker {name}: stopped");
}

/// A connection to Redis, or (`--cluster`) to the cluster the seed is
/// part of. Reads block at most a second (see `next_job`), plus slack.
fn open(args: &Args) -> RedisResult<Box<dyn ConnectionLike>> {
    let (connect, reply) = (Duration::from_secs(2), Duration::from_secs(5));
    if args.cluster {
        let con = redis::cluster::ClusterClientBuilder::new(vec![args.redis.as_str()])
            .connection_timeout(connect)
            .response_timeout(reply)
            .build()?
            .get_connection()?;
        return Ok(Box::new(con));
    }
    let client = redis::Client::open(args.redis.as_str())?;
    let con = client.get_connection_with_timeout(connect)?;
    con.set_read_timeout(Some(reply))?;
    Ok(Box::new(con))
}

/// Serves until `stop`, reconnecting after a Redis failure.
fn work(args: &Args, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let served = Worker::connect(args, name).and_then(|mut w| w.serve(stop));
        match served {
            Ok(()) => return,
            Err(e) => eprintln!("worker {name}: Redis: {e}; retrying in 500 ms"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn block_stop_signals() {
    // SAFETY: sigset_t is plain data set up by sigemptyset/sigaddset
    // before use; pthread_sigmask changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGTERM);
        libc::sigaddset(&mut set, SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

impl Worker {
    fn connect(args: &Args, name: &str) -> RedisResult<Worker> {
        let mut con = open(args)?;
        let (visibility, summarize, ask): (Option<u64>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(format!("{}jobs:config", args.prefix))
                .arg(&["visibility_ms", "queue_summarize", "queue_ask"][..])
                .query(con.as_mut())?;
        let queue = |kind: &str| format!("{}jobs:{kind}", args.prefix);
        let worker = Worker {
            con,
            prefix: args.prefix.clone(),
            queues: [
                summarize.unwrap_or_else(|| queue("summarize")),
                ask.unwrap_or_else(|| queue("ask")),
            ],
            name: name.to_string(),
            token_ms: args.token_ms,
            visibility_ms: visibility.unwrap_or(10_000).max(1),
        };
        eprintln!(
            "worker {name}: ready (visibility {} ms)",
            worker.visibility_ms
        );
        Ok(worker)
    }

    /// Runs jobs until `stop` is set (then Ok) or Redis fails (Err).
    fn serve(&mut self, stop: &AtomicBool) -> RedisResult<()> {
        while !stop.load(Ordering::Relaxed) {
            if let Some(job) = self.next_job()? {
                self.run(&job)?;
            }
        }
        Ok(())
    }

    fn queue(&self, kind: Kind) -> &str {
        match kind {
            Kind::Summarize => &self.queues[0],
            Kind::Ask => &self.queues[1],
        }
    }

    /// A job whose worker went quiet first (`XAUTOCLAIM`), else a new one
    /// (`XREADGROUP`, blocking up to a second so a signal is seen).
    fn next_job(&mut self) -> RedisResult<Option<Job>> {
        for kind in KINDS {
            let claimed: Value = redis::cmd("XAUTOCLAIM")
                .arg(self.queue(kind))
                .arg(GROUP)
                .arg(&self.name)
                .arg(self.visibility_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(self.con.as_mut())?;
            if let Value::Array(parts) = &claimed {
                if let Some(job) = parts.get(1).and_then(|e| entries(e, &self.prefix).pop()) {
                    eprintln!("worker {}: took over job {}", self.name, job.id);
                    return Ok(Some(job));
                }
            }
        }
        let block = (self.visibility_ms / 2).clamp(1, 1000);
        let read: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.name)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(self.queue(Kind::Summarize))
            .arg(self.queue(Kind::Ask))
            .arg(">")
            .arg(">")
            .query(self.con.as_mut())?;
        let Value::Array(streams) = read else {
            return Ok(None);
        };
        Ok(streams.iter().find_map(|s| match s {
            Value::Array(pair) => pair.get(1).and_then(|e| entries(e, &self.prefix).pop()),
            _ => None,
        }))
    }

    /// Streams the job's tokens, then its end; acknowledges the entry.
    fn run(&mut self, job: &Job) -> RedisResult<()> {
        if !self.event(job, "heartbeat", "{}")? {
            return Ok(());
        }
        if job.kind == Kind::Summarize && demo::unreachable(&job.input) {
            let message = format!("cannot fetch {}", job.input);
            let body = serde_json::json!({"code": "fetch_failed", "message": message});
            self.event(job, "error", &body.to_string())?;
            return self.ack(job);
        }
        let tokens = demo::tokens(job.kind, &job.input);
        for (i, text) in tokens.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(self.token_ms));
            }
            let body = serde_json::json!({ "text": text });
            if !self.event(job, "token", &body.to_string())? {
                return Ok(());
            }
        }
        let body = serde_json::json!({ "result": tokens.concat() });
        self.event(job, "done", &body.to_string())?;
        self.ack(job)
    }

    /// `FCALL redix_job_event`; false when the job is no longer this
    /// worker's to run (ended, gone, or taken over), after acknowledging
    /// it where the protocol says so.
    fn event(&mut self, job: &Job, kind: &str, body: &str) -> RedisResult<bool> {
        let sent: Result<Value, RedisError> = redis::cmd("FCALL")
            .arg("redix_job_event")
            .arg(1)
            .arg(&job.key)
            .arg(&self.name)
            .arg(kind)
            .arg(body)
            .query(self.con.as_mut());
        let e = match sent {
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        match e.code() {
            Some("NOJOB") | Some("ENDED") => {
                eprintln!("worker {}: job {}: {e}", self.name, job.id);
                self.ack(job)?;
                Ok(false)
            }
            // Another worker holds it now: its entry is not ours to ack.
            Some("NOTOWNER") => {
                eprintln!("worker {}: job {}: {e}", self.name, job.id);
                Ok(false)
            }
            _ if e.is_io_error() || e.is_timeout() => Err(e),
            // A refused event (BADEVENT) is a bug here: leave the job to
            // be retried elsewhere.
            _ => {
                eprintln!("worker {}: job {}: {e}", self.name, job.id);
                Ok(false)
            }
        }
    }

    fn ack(&mut self, job: &Job) -> RedisResult<()> {
        redis::cmd("XACK")
            .arg(self.queue(job.kind))
            .arg(GROUP)
            .arg(&job.entry)
            .query::<i64>(self.con.as_mut())
            .map(|_| ())
    }
}

/// Stream entries `[[id, [field, value, …]], …]` as jobs (others skipped).
fn entries(v: &Value, prefix: &str) -> Vec<Job> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter().filter_map(|e| job_of(e, prefix)).collect()
}

fn job_of(entry: &Value, prefix: &str) -> Option<Job> {
    let Value::Array(pair) = entry else {
        return None;
    };
    let (Some(id), Some(Value::Array(fields))) = (pair.first(), pair.get(1)) else {
        return None;
    };
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| text(&kv[0]) == Some(name))
            .and_then(|kv| kv.get(1).and_then(text))
    };
    let kind = match field("kind")? {
        "summarize" => Kind::Summarize,
        "ask" => Kind::Ask,
        _ => return None,
    };
    let job_id = field("id")?.to_string();
    Some(Job {
        entry: text(id)?.to_string(),
        key: field("key").map_or_else(|| format!("{prefix}job:{job_id}"), str::to_string),
        id: job_id,
        kind,
        input: field("input")?.to_string(),
    })
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
