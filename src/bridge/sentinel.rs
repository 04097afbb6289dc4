//! The Sentinel watcher: one thread that keeps [`Master`] pointing at the
//! master Sentinel names.
//!
//! It holds two connections to one sentinel at a time: one SUBSCRIBEd to
//! `+switch-master` (a failover is heard the moment Sentinel announces
//! it) and one that asks `SENTINEL get-master-addr-by-name` when it
//! starts and every [`POLL`] after, so an announcement missed while it
//! was switching sentinels costs at most one poll. A sentinel that fails
//! is left for the next in the list, with backoff once the list is
//! exhausted. Nothing else is asked of Sentinel: the bridge threads only
//! read [`Master`] when they (re)connect and drop their connections when
//! its generation moves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{Connection, RedisError};

use super::{Backoff, Master, Quiet};

/// How often the master's address is asked again while subscribed.
const POLL: Duration = Duration::from_millis(500);

/// Reads `host:port` (an IPv6 host in brackets).
pub fn parse_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?} is not host:port"));
    }
    Ok((host.to_string(), port))
}

fn connect(addr: &(String, u16), timeout: Duration) -> Result<Connection, RedisError> {
    use redis::IntoConnectionInfo;
    let info = redis::ConnectionAddr::Tcp(addr.0.clone(), addr.1).into_connection_info()?;
    let con = redis::Client::open(info)?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// What one sentinel says the master's address is (`None`: it does not
/// know the name).
pub fn ask(con: &mut Connection, name: &str) -> Result<Option<(String, u16)>, RedisError> {
    let reply: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query(con)?;
    Ok(reply.and_then(|(host, port)| Some((host, port.parse().ok()?))))
}

/// Asks each sentinel in turn until one names the master (`redix
/// publish`, which runs once and has no watcher).
pub fn resolve_once(master: &Master, timeout: Duration) -> Result<(), String> {
    let mut last = String::from("no sentinel configured");
    for addr in &master.sentinels {
        match connect(addr, timeout).and_then(|mut con| ask(&mut con, &master.name)) {
            Ok(Some((host, port))) => {
                master.set(&host, port);
                return Ok(());
            }
            Ok(None) => last = format!("{}:{} does not know {:?}", addr.0, addr.1, master.name),
            Err(e) => last = format!("{}:{}: {e}", addr.0, addr.1),
        }
    }
    Err(last)
}

/// Starts the watcher thread (only with sentinels configured).
pub fn start(master: Arc<Master>, timeout: Duration, backoff: (u64, u64)) -> Result<(), String> {
    std::thread::Builder::new()
        .name("redix-sentinel".into())
        .spawn(move || watch(&master, timeout, backoff))
        .map(|_| ())
        .map_err(|e| format!("spawn the Sentinel thread: {e}"))
}

fn watch(master: &Master, timeout: Duration, (min_ms, max_ms): (u64, u64)) {
    let mut backoff = Backoff::new(min_ms, max_ms);
    let mut quiet = Quiet::default();
    loop {
        for addr in &master.sentinels {
            let e = session(master, addr, timeout, &mut backoff, &mut quiet);
            quiet.warn(format_args!(
                "Sentinel {}:{}: {e}; trying the next one",
                addr.0, addr.1
            ));
        }
        std::thread::sleep(backoff.next_wait());
    }
}

/// One sentinel, until it fails: returns why.
fn session(
    master: &Master,
    addr: &(String, u16),
    timeout: Duration,
    backoff: &mut Backoff,
    quiet: &mut Quiet,
) -> String {
    let (mut query, mut sub) =
        match connect(addr, timeout).and_then(|q| Ok((q, connect(addr, timeout)?))) {
            Ok(pair) => pair,
            Err(e) => return e.to_string(),
        };
    let _counted = Counted::new(master);
    let mut pubsub = sub.as_pubsub();
    if let Err(e) = pubsub
        .subscribe("+switch-master")
        .and_then(|_| pubsub.set_read_timeout(Some(POLL)))
    {
        return e.to_string();
    }
    loop {
        match ask(&mut query, &master.name) {
            Ok(Some((host, port))) => {
                master.set(&host, port);
                backoff.reset();
                quiet.reset();
            }
            Ok(None) => return format!("it does not monitor {:?}", master.name),
            Err(e) => return e.to_string(),
        }
        // Announcements until the poll is due.
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some((host, port)) = switched_to(&payload, &master.name) {
                        master.set(&host, port);
                    }
                }
                Err(e) if e.is_timeout() => break,
                Err(e) => return e.to_string(),
            }
        }
    }
}

/// The watcher's two connections, counted while they are open.
struct Counted<'a>(&'a Master);

impl<'a> Counted<'a> {
    fn new(master: &'a Master) -> Counted<'a> {
        master.sentinel_fds.fetch_add(2, Ordering::Relaxed);
        Counted(master)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.sentinel_fds.fetch_sub(2, Ordering::Relaxed);
    }
}

/// Reads `+switch-master`'s "<name> <old ip> <old port> <new ip> <new
/// port>" for our master.
fn switched_to(payload: &str, name: &str) -> Option<(String, u16)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        [n, _, _, host, port] if *n == name => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:26379"),
            Ok(("127.0.0.1".into(), 26379))
        );
        assert_eq!(parse_addr("[::1]:5000"), Ok(("::1".into(), 5000)));
        for bad in ["", "h", "h:", ":1", "h:0", "h:x", "h:70000"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn switch_announcements() {
        let m = "mymaster 127.0.0.1 7000 127.0.0.1 7001";
        assert_eq!(switched_to(m, "mymaster"), Some(("127.0.0.1".into(), 7001)));
        assert_eq!(switched_to(m, "other"), None);
        assert_eq!(switched_to("mymaster 1 2 3", "mymaster"), None);
    }
}
