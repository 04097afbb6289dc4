//! Connection limits: per client IP, and the process-wide cap that comes
//! from `RLIMIT_NOFILE`.

use std::collections::HashMap;
use std::hash::Hash;
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

/// Concurrent connections per [`IpKey`] (or per any other key: token
/// subjects, see `tokens::SubjectKey`). An entry exists only while its
/// count is above zero, so the map is bounded by the open connections.
pub struct IpLimiter<K = IpKey> {
    max: AtomicU32,
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Copy + Eq + Hash> IpLimiter<K> {
    pub fn new(max: u32) -> IpLimiter<K> {
        IpLimiter {
            max: AtomicU32::new(max),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `key`; false when it already holds `max`.
    pub fn acquire(&self, key: K) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max() {
            if *n == 0 {
                counts.remove(&key);
            }
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

    pub fn release(&self, key: K) {
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

/// Who a per-client budget counts: a client IP, or an API key wherever
/// its requests come from (so a key shared by many hosts gets one budget,
/// and one host with several keys one per key). A key is named by a
/// digest (see `auth::Keys::identify`), never kept itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Ip(IpKey),
    ApiKey(u64),
}

impl ClientKey {
    /// A non-zero number naming this client, for counts kept where the
    /// enum is not (the job engine's jobs in flight per client); 0 is left
    /// to mean "nobody: do not count". `DefaultHasher::new` is the same
    /// hasher in every call, so the number is stable for the process.
    pub fn owner_id(self) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish().max(1)
    }
}

/// Client keys a [`RateLimiter`] tracks at most; past it, full buckets are
/// swept, and a client that still finds no room is let through untracked
/// (failing open: the connection caps still hold).
pub const RATE_LIMITER_MAX_CLIENTS: usize = 100_000;

/// Per-client token buckets (by client IP unless told otherwise). Time is
/// passed in. The rate can change while running (SIGHUP): buckets keep
/// their tokens, capped at the new burst, and refill at the new rate.
pub struct RateLimiter<K = IpKey> {
    inner: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    /// Tokens per second; 0 disables the limiter.
    rate: f64,
    burst: f64,
    /// Client → (tokens, last refill in ms).
    map: HashMap<K, (f64, u64)>,
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter::with_rate(f64::from(per_sec), burst)
    }

    pub fn per_minute(per_min: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter::with_rate(f64::from(per_min) / 60.0, burst)
    }

    fn with_rate(rate: f64, burst: u32) -> RateLimiter<K> {
        let inner = Buckets {
            rate,
            burst: f64::from(burst.max(1)),
            map: HashMap::new(),
        };
        RateLimiter {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new rate per second and burst (SIGHUP); 0 turns the limiter off
    /// and forgets every bucket.
    pub fn set_per_sec(&self, per_sec: u32, burst: u32) {
        self.set_rate(f64::from(per_sec), burst);
    }

    /// [`RateLimiter::set_per_sec`] with a rate per minute.
    pub fn set_per_minute(&self, per_min: u32, burst: u32) {
        self.set_rate(f64::from(per_min) / 60.0, burst);
    }

    fn set_rate(&self, rate: f64, burst: u32) {
        let mut b = self.lock();
        b.rate = rate;
        b.burst = f64::from(burst.max(1));
        if rate <= 0.0 {
            b.map = HashMap::new();
        }
    }

    /// Takes a token for `key`; `Err(seconds)` says when one will be there.
    pub fn check(&self, key: K, now_ms: u64) -> Result<(), u64> {
        self.take(key, 1, now_ms)
    }

    /// Takes `n` tokens for `key` at once, or none; `Err(seconds)` says
    /// when enough will be there.
    pub fn take(&self, key: K, n: u32, now_ms: u64) -> Result<(), u64> {
        let mut b = self.lock();
        let (rate, burst) = (b.rate, b.burst);
        if rate <= 0.0 || n == 0 {
            return Ok(());
        }
        let n = f64::from(n);
        let refill =
            |tokens: f64, at: u64| tokens + (now_ms.saturating_sub(at) as f64) * rate / 1000.0;
        if b.map.len() >= RATE_LIMITER_MAX_CLIENTS && !b.map.contains_key(&key) {
            b.map.retain(|_, (tokens, at)| refill(*tokens, *at) < burst);
            if b.map.len() >= RATE_LIMITER_MAX_CLIENTS {
                return Ok(());
            }
        }
        let (tokens, at) = b.map.entry(key).or_insert((burst, now_ms));
        *tokens = refill(*tokens, *at).min(burst);
        *at = now_ms;
        if *tokens >= n {
            *tokens -= n;
            return Ok(());
        }
        Err(((n - *tokens) / rate).ceil().max(1.0) as u64)
    }

    pub fn tracked(&self) -> usize {
        self.lock().map.len()
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
    fn keyed_buckets_take_a_new_rate_and_stay_bounded() {
        let l: RateLimiter<ClientKey> = RateLimiter::per_minute(60, 2);
        let (key, ip) = (ClientKey::ApiKey(7), ClientKey::Ip(IpKey::V4([1, 2, 3, 4])));
        assert!(l.check(key, 0).is_ok() && l.check(key, 0).is_ok());
        assert_eq!(l.check(key, 0), Err(1), "one a second");
        assert!(l.check(ip, 0).is_ok(), "an IP is another client");
        l.set_per_minute(6, 1);
        // Time since a bucket's last use refills at the rate now in force.
        assert_eq!(l.check(key, 1000), Err(9), "0.1 of a token at 6/min");
        assert_eq!(l.check(key, 10_000), Ok(()));
        assert_eq!(l.check(key, 10_000), Err(10), "the new rate");
        l.set_per_minute(0, 1);
        assert_eq!(
            (l.check(key, 1000), l.tracked()),
            (Ok(()), 0),
            "off, forgotten"
        );
        // At the bound, a new client finds no room until buckets are full
        // again and swept; it is let through meanwhile.
        let l: RateLimiter<ClientKey> = RateLimiter::new(1, 1);
        for i in 0..RATE_LIMITER_MAX_CLIENTS as u64 {
            assert!(l.check(ClientKey::ApiKey(i), 0).is_ok());
        }
        let new = ClientKey::ApiKey(u64::MAX);
        assert!(
            l.check(new, 0).is_ok() && l.check(new, 0).is_ok(),
            "untracked"
        );
        assert_eq!(l.tracked(), RATE_LIMITER_MAX_CLIENTS);
        assert!(l.check(new, 1000).is_ok());
        assert_eq!(l.tracked(), 1, "full buckets swept");
    }

    #[test]
    fn owner_ids_are_stable_and_never_zero() {
        let a = ClientKey::Ip(IpKey::V4([10, 0, 0, 1]));
        assert_eq!(a.owner_id(), a.owner_id());
        assert_ne!(a.owner_id(), 0);
        assert_ne!(
            a.owner_id(),
            ClientKey::Ip(IpKey::V4([10, 0, 0, 2])).owner_id()
        );
        assert_ne!(ClientKey::ApiKey(5).owner_id(), a.owner_id());
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
