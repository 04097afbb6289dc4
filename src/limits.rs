//! Connection limits: per client IP, and the process-wide cap that comes
//! from `RLIMIT_NOFILE`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The unit a per-IP limit counts: an IPv4 address, or an IPv6 /64 (one
/// subscriber's prefix; counting single v6 addresses would be no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    IpKey::V6Prefix(prefix)
                }
            },
        }
    }
}

/// Whether `ip` is one of the trusted proxies, comparing canonical forms
/// (`::ffff:10.0.0.1` on a dual-stack listener is `10.0.0.1`).
pub fn is_trusted(ip: IpAddr, trusted: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|t| t.to_canonical() == ip)
}

/// One `X-Forwarded-For` entry: an address, or an address with a port
/// (`1.2.3.4:5678`, `[::1]:5678`) as some proxies write it.
fn forwarded_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client IP of a request: the peer, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` entry that is not one. The walk
/// stops at an entry that does not parse: what lies left of it was written
/// by nobody we trust, so the last trusted hop is the client we know.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !is_trusted(client, trusted) {
        return client;
    }
    let Some(list) = forwarded_for else {
        return client;
    };
    for entry in list.rsplit(',') {
        let Some(ip) = forwarded_entry(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

/// Concurrent connections per [`IpKey`]. An entry exists only while its
/// count is above zero, so the map is bounded by the open connections.
pub struct IpLimiter {
    max: AtomicU32,
    counts: Mutex<HashMap<IpKey, u32>>,
}

impl IpLimiter {
    pub fn new(max: u32) -> IpLimiter {
        IpLimiter {
            max: AtomicU32::new(max),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `key`; false when it already holds `max`.
    pub fn acquire(&self, key: IpKey) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max() {
            return false;
        }
        *n += 1;
        true
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// A new limit (SIGHUP); holders above it keep their slots.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn release(&self, key: IpKey) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Client keys holding at least one slot.
    pub fn tracked(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One token bucket, for a rate on something a single connection does
/// (its own commands). Starts full; time is passed in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    /// Tokens spent below the burst (so a new bucket is full at zero).
    spent: f32,
    at_ms: u64,
}

impl Bucket {
    /// Takes a token at `per_min` per minute up to `burst`; false when
    /// none is left. A rate of 0 never limits.
    pub fn take(&mut self, now_ms: u64, per_min: u32, burst: u32) -> bool {
        if per_min == 0 {
            return true;
        }
        let refill = now_ms.saturating_sub(self.at_ms) as f32 * per_min as f32 / 60_000.0;
        self.spent = (self.spent - refill).max(0.0);
        self.at_ms = now_ms;
        if self.spent + 1.0 > burst as f32 {
            return false;
        }
        self.spent += 1.0;
        true
    }
}

/// Client keys a [`RateLimiter`] tracks at most; past it, full buckets are
/// swept, and a client that still finds no room is let through untracked
/// (failing open: the connection caps still hold).
pub const RATE_LIMITER_MAX_CLIENTS: usize = 100_000;

/// Per-client token buckets for HTTP requests. Time is passed in.
pub struct RateLimiter {
    /// Tokens per second; 0 disables the limiter.
    rate: f64,
    burst: u32,
    /// Client → (tokens, last refill in ms).
    buckets: Mutex<HashMap<IpKey, (f64, u64)>>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter::with_rate(f64::from(per_sec), burst)
    }

    pub fn per_minute(per_min: u32, burst: u32) -> RateLimiter {
        RateLimiter::with_rate(f64::from(per_min) / 60.0, burst)
    }

    fn with_rate(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` says when one will be there.
    pub fn check(&self, key: IpKey, now_ms: u64) -> Result<(), u64> {
        self.take(key, 1, now_ms)
    }

    /// Takes `n` tokens for `key` at once, or none; `Err(seconds)` says
    /// when enough will be there.
    pub fn take(&self, key: IpKey, n: u32, now_ms: u64) -> Result<(), u64> {
        if self.rate <= 0.0 || n == 0 {
            return Ok(());
        }
        let n = f64::from(n);
        let (rate, burst) = (self.rate, f64::from(self.burst));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= RATE_LIMITER_MAX_CLIENTS && !buckets.contains_key(&key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + (now_ms.saturating_sub(*at) as f64) * rate / 1000.0 < burst
            });
            if buckets.len() >= RATE_LIMITER_MAX_CLIENTS {
                return Ok(());
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now_ms));
        *tokens = (*tokens + (now_ms.saturating_sub(*at) as f64) * rate / 1000.0).min(burst);
        *at = now_ms;
        if *tokens >= n {
            *tokens -= n;
            return Ok(());
        }
        Err(((n - *tokens) / rate).ceil().max(1.0) as u64)
    }

    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// File descriptors redix keeps for itself (listeners, polls, wakers,
/// Redis and upstream links, logs) beyond its client connections.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft, hard).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The global connection cap: the configured one, else what the fd limit allows.
pub fn connection_cap(configured: usize, fd_soft_limit: u64) -> usize {
    let from_fds = fd_soft_limit.saturating_sub(FD_RESERVE).max(16) as usize;
    match configured {
        0 => from_fds,
        n => n.min(from_fds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::V4([10, 0, 0, 1]));
    }

    #[test]
    fn limiter_counts_and_forgets() {
        let l = IpLimiter::new(2);
        let k = IpKey::V4([1, 2, 3, 4]);
        assert!(l.acquire(k) && l.acquire(k));
        assert!(!l.acquire(k));
        l.release(k);
        assert!(l.acquire(k));
        l.release(k);
        l.release(k);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let xff = Some("1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(client_ip(other, xff, &[proxy]), other);
        assert_eq!(client_ip(proxy, xff, &[proxy]).to_string(), "2.2.2.2");
        assert_eq!(client_ip(proxy, Some("junk"), &[proxy]), proxy);
    }

    #[test]
    fn trusted_proxies_match_on_dual_stack_and_junk_ends_the_walk() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let t = [proxy];
        // (peer, X-Forwarded-For, client)
        let table = [
            // A v4 proxy seen on a dual-stack listener is still trusted.
            (mapped, "2.2.2.2", "2.2.2.2"),
            // The walk ends at an entry that does not parse: a client's
            // own "127.0.0.1" further left never becomes the client IP.
            (proxy, "127.0.0.1, bogus, 10.0.0.1", "10.0.0.1"),
            (proxy, "127.0.0.1, bogus", "10.0.0.1"),
            // Ports some proxies append are understood.
            (proxy, "2.2.2.2:4321", "2.2.2.2"),
            (proxy, "[2001:db8::1]:443", "2001:db8::1"),
            // Only trusted hops are skipped.
            (proxy, "3.3.3.3, 10.0.0.1, 2.2.2.2", "2.2.2.2"),
            (mapped, "::ffff:4.4.4.4", "4.4.4.4"),
        ];
        for (peer, xff, want) in table {
            assert_eq!(client_ip(peer, Some(xff), &t).to_string(), want, "{xff}");
        }
        assert!(is_trusted(mapped, &t));
        assert!(!is_trusted("10.0.0.2".parse().unwrap(), &t));
    }

    #[test]
    fn token_buckets_refill_at_their_rate() {
        let l = RateLimiter::new(2, 3);
        let k = IpKey::V4([9, 9, 9, 9]);
        assert!((0..3).all(|_| l.check(k, 0).is_ok()), "the burst");
        assert_eq!(l.check(k, 0), Err(1));
        assert!(l.check(k, 499).is_err(), "0.998 tokens");
        assert!(l.check(k, 500).is_ok(), "one token per 500 ms");
        assert!(l.check(IpKey::V4([1, 1, 1, 1]), 500).is_ok(), "per client");
        assert!(RateLimiter::new(0, 0).check(k, 0).is_ok(), "0 disables");
    }

    #[test]
    fn cap_follows_the_fd_limit() {
        assert_eq!(connection_cap(0, 20_000), 20_000 - FD_RESERVE as usize);
        assert_eq!(connection_cap(500, 20_000), 500);
        assert_eq!(connection_cap(50_000, 20_000), 20_000 - FD_RESERVE as usize);
    }

    #[test]
    fn a_bucket_takes_its_burst_then_refills_per_minute() {
        let mut b = Bucket::default();
        assert!((0..3).all(|_| b.take(0, 60, 3)));
        assert!(!b.take(0, 60, 3), "burst spent");
        assert!(!b.take(999, 60, 3), "one a second: not yet");
        assert!(b.take(1000, 60, 3));
        assert!(!b.take(1000, 60, 3));
        assert!(
            (0..3).all(|_| b.take(1_000_000, 60, 3)),
            "refilled to the burst, no more"
        );
        assert!(!b.take(1_000_000, 60, 3));
        assert!((0..1000).all(|_| b.take(0, 0, 1)), "0 never limits");
    }
}
