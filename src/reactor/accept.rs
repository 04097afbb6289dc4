//! Admission: accepting connections in bounded batches, the global
//! connection cap with hysteresis (stop at the cap, resume at or below
//! 90 % of it), and backing off when accept(2) runs out of descriptors
//! instead of spinning.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{release_slot, Worker};
use crate::conn::{Conn, SlotKind};
use crate::limits::{is_trusted, IpKey};
use crate::metrics::WorkerStats;
use crate::proto::http::{self, HttpError};

/// Connections accepted per turn before other work gets a go.
const ACCEPT_BATCH: usize = 256;
/// Backoff while accept fails for lack of file descriptors.
const EMFILE_BACKOFF_MIN_MS: u64 = 10;
const EMFILE_BACKOFF_MAX_MS: u64 = 1_000;
/// Re-check interval while the global connection cap holds accepts.
const CAP_RECHECK_MS: u64 = 50;

/// Accepting: ready (the listener may have more), or paused until a time.
#[derive(Debug)]
pub struct AcceptState {
    pub ready: bool,
    pub paused_until: Option<u64>,
    /// Paused because the global connection cap was reached (else: EMFILE).
    at_cap: bool,
    backoff_ms: u64,
}

impl AcceptState {
    pub fn new() -> AcceptState {
        AcceptState {
            ready: true,
            paused_until: None,
            at_cap: false,
            backoff_ms: EMFILE_BACKOFF_MIN_MS,
        }
    }
}

/// Whether accepting may resume after a pause at the cap: at or below
/// 90 % of it (hysteresis, so a full server does not flap at the edge).
pub fn may_resume(open: usize, max: usize) -> bool {
    open <= max.saturating_mul(9) / 10
}

impl Worker {
    pub(super) fn accept_batch(&mut self, now: u64) {
        if let Some(until) = self.accept.paused_until {
            if now < until {
                return;
            }
            if self.accept.at_cap && self.at_cap() {
                self.accept.paused_until = Some(now + CAP_RECHECK_MS);
                return;
            }
            self.accept.paused_until = None;
            self.accept.ready = true;
        }
        if !self.accept.ready {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            if self.at_cap() {
                return self.pause_accept(now, true);
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    self.accept.backoff_ms = EMFILE_BACKOFF_MIN_MS;
                    self.admit(stream, addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept.ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    WorkerStats::add(&self.stats().accept_errors, 1);
                    log::warn!(
                        "reactor {}: accept: {e}; pausing accepts for {} ms (open connections {})",
                        self.id,
                        self.accept.backoff_ms,
                        self.shared.fds.open()
                    );
                    return self.pause_accept(now, false);
                }
                Err(e) => {
                    WorkerStats::add(&self.stats().accept_errors, 1);
                    log::debug!("reactor {}: accept: {e}", self.id);
                }
            }
        }
    }

    /// Whether the connection cap holds accepts, for every reactor alike:
    /// from the moment one reactor finds the cap reached until the open
    /// connections are down to 90 % of it (a reactor that never hit the cap
    /// itself must not accept in between).
    fn at_cap(&self) -> bool {
        let fds = &self.shared.fds;
        let (open, max) = (fds.open(), fds.max_conns);
        if open >= max {
            fds.capped.store(true, Ordering::Relaxed);
            return true;
        }
        if !fds.capped.load(Ordering::Relaxed) {
            return false;
        }
        if may_resume(open, max) {
            fds.capped.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn pause_accept(&mut self, now: u64, at_cap: bool) {
        let wait = if at_cap {
            WorkerStats::add(&self.stats().accept_pauses_cap, 1);
            if !self.accept.at_cap || self.accept.paused_until.is_none() {
                log::warn!(
                    "reactor {}: connection cap {} reached; accepts resume at 90%",
                    self.id,
                    self.shared.fds.max_conns
                );
            }
            CAP_RECHECK_MS
        } else {
            WorkerStats::add(&self.stats().accept_pauses_fds, 1);
            let wait = self.accept.backoff_ms;
            self.accept.backoff_ms = (wait * 2).min(EMFILE_BACKOFF_MAX_MS);
            wait
        };
        self.accept.at_cap = at_cap;
        self.accept.paused_until = Some(now + wait);
    }

    /// Registers an accepted socket and gives it a slot and a request deadline.
    fn admit(&mut self, mut stream: TcpStream, addr: SocketAddr, now: u64) {
        let tcp = &self.shared.config.tcp;
        if tcp.nodelay {
            let _ = stream.set_nodelay(true);
        }
        if tcp.send_buffer > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(tcp.send_buffer);
        }
        let slot = self.http_slot(addr.ip());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("reactor {}: register {addr}: {e}", self.id);
            let slot = slot.ok().flatten().map(|ip| (SlotKind::Http, ip));
            return release_slot(&self.shared.access, slot);
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let deadline = now + self.shared.config.limits.header_timeout_ms;
        let mut conn = Conn::new(stream, gen, addr.ip(), now, deadline);
        conn.ip_slot = slot.ok().flatten().map(|ip| (SlotKind::Http, ip));
        entry.insert(conn);
        self.shared.fds.open_conns.fetch_add(1, Ordering::Relaxed);
        let stats = self.stats();
        WorkerStats::add(&stats.accepted, 1);
        WorkerStats::add(&stats.conns_http, 1);
        self.arm_request(key);
        if slot.is_err() {
            self.refuse_ip_limit(key, now);
        }
    }

    /// A plain HTTP slot for `peer` (none needed for a trusted proxy); Err
    /// when the peer holds `limits.http_per_ip` already.
    fn http_slot(&self, peer: IpAddr) -> Result<Option<IpKey>, ()> {
        if is_trusted(peer, &self.shared.config.limits.trusted_proxies) {
            return Ok(None);
        }
        let key = IpKey::of(peer);
        match self.shared.access.http.acquire(key) {
            true => Ok(Some(key)),
            false => Err(()),
        }
    }

    /// 429 to a connection over the per-IP cap of plain HTTP connections.
    fn refuse_ip_limit(&mut self, key: usize, now: u64) {
        WorkerStats::add(&self.stats().rejected_ip_limit, 1);
        let max = self.shared.access.http.max();
        let err = HttpError::new(
            429,
            "too_many_connections",
            format!("at most {max} HTTP connections per client IP"),
        );
        let bytes = http::error_response(&err, false, &["Retry-After: 5".to_string()]);
        self.close_gracefully(key, Some(Bytes::from(bytes)), false, now);
    }
}

#[cfg(test)]
mod tests {
    use super::may_resume;

    #[test]
    fn accepting_resumes_at_ninety_percent_of_the_cap() {
        // (open, cap, may resume)
        let table = [
            (20, 20, false),
            (19, 20, false),
            (18, 20, true),
            (0, 20, true),
            (10, 10, false),
            (9, 10, true),
            (14, 15, false),
            (13, 15, true),
            (900_001, 1_000_000, false),
            (900_000, 1_000_000, true),
        ];
        for (open, max, want) in table {
            assert_eq!(may_resume(open, max), want, "{open} of {max}");
        }
    }
}
