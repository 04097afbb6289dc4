//! The listener: one pub/sub connection SUBSCRIBEd to `<prefix>jobs:done`,
//! turning each `"<id> done|failed"` into a [`Note`] for the engine, so the
//! summarize requests parked on a job get its result when it ends,
//! whichever node or worker ended it.
//!
//! It waits in its read as long as it takes (the channel may stay quiet
//! for hours, and a paused Redis is not a lost one), waking every
//! [`FOLLOW`] only to see whether Sentinel moved the master; a closed or failed
//! connection is re-made with backoff, and every new subscription sends
//! [`Note::Resync`], since jobs may have ended while nobody listened.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use redis::RedisError;

use super::functions::parse_done;
use crate::bridge::{Backoff, Quiet};
use crate::jobs::Jobs;

/// How often a quiet subscription looks whether the master moved.
const FOLLOW: Duration = Duration::from_secs(1);

/// What the listener tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Job `id` ended (`failed`: with an error).
    Ended { id: String, failed: bool },
    /// The listener (re)subscribed: endings may have been missed.
    Resync,
}

/// The listener's inputs.
pub struct Listener {
    /// Where the master is now (read at each connect). Redis Cluster:
    /// its seeds, tried in turn (a classic PUBLISH reaches every node of
    /// the cluster, so any one will do).
    pub master: Arc<crate::bridge::Master>,
    /// `<prefix>jobs:done`.
    pub channel: String,
    /// Connect and subscribe within this.
    pub timeout: Duration,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    pub notes: Sender<Note>,
    /// Counts the connection in `Jobs::fds`.
    pub jobs: Arc<Jobs>,
}

/// Counts one open connection while it lives.
struct Counted<'a>(&'a Jobs);

impl<'a> Counted<'a> {
    fn new(jobs: &'a Jobs) -> Counted<'a> {
        jobs.fds.fetch_add(1, Ordering::Relaxed);
        Counted(jobs)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fds.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Listener {
    /// Listens for ever, reconnecting with backoff.
    pub fn run(self) {
        let mut backoff = Backoff::new(self.backoff_min_ms, self.backoff_max_ms);
        let mut quiet = Quiet::default();
        for attempt in 0usize.. {
            let e = self.session(attempt, &mut backoff, &mut quiet);
            quiet.warn(format_args!(
                "jobs: the {} subscription failed: {e}; reconnecting",
                self.channel
            ));
            std::thread::sleep(backoff.next_wait());
        }
    }

    /// One connection, until it fails.
    fn session(&self, attempt: usize, backoff: &mut Backoff, quiet: &mut Quiet) -> RedisError {
        let seeds = &self.master.seeds;
        let endpoint = match seeds.get(attempt % seeds.len().max(1)) {
            Some(seed) => Ok(seed.clone()),
            None => self.master.endpoint(),
        };
        let endpoint = match endpoint {
            Ok(e) => e,
            Err(e) => return RedisError::from((redis::ErrorKind::Io, "no master", e)),
        };
        let client = match endpoint.connection_info().and_then(redis::Client::open) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut con = match client.get_connection_with_timeout(self.timeout) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let _counted = Counted::new(&self.jobs);
        let timeouts = con
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| con.set_write_timeout(Some(self.timeout)));
        if let Err(e) = timeouts {
            return e;
        }
        let mut sub = con.as_pubsub();
        if let Err(e) = sub.subscribe(&self.channel) {
            return e;
        }
        // Timed reads, so a master switch is noticed while all is quiet
        // (a demoted master would keep this connection silent).
        let generation = self.master.generation();
        if let Err(e) = sub.set_read_timeout(Some(FOLLOW)) {
            return e;
        }
        backoff.reset();
        quiet.reset();
        let _ = self.notes.try_send(Note::Resync);
        loop {
            let payload = sub.get_message().and_then(|m| m.get_payload::<String>());
            let payload = match payload {
                Ok(p) => p,
                Err(e) if e.is_timeout() && self.master.generation() == generation => continue,
                Err(e) => {
                    // Dropping the subscription unsubscribes, which reads
                    // a reply: not for ever.
                    let _ = sub.set_read_timeout(Some(self.timeout));
                    return e;
                }
            };
            let Some((id, failed)) = parse_done(&payload) else {
                log::debug!("jobs: ignoring {:?} on {}", payload, self.channel);
                continue;
            };
            if self.notes.try_send(Note::Ended { id, failed }).is_err() {
                // The engine is far behind: the requests parked on that
                // job get their 202 when their window ends.
                log::debug!("jobs: the engine's notes are full; an ending is dropped");
            }
        }
    }
}
