//! One subscriber connection to one master of the cluster: `SSUBSCRIBE`
//! and `SUNSUBSCRIBE` out, what Redis says back classified for the
//! sharded pub/sub thread ([`super`]). No routing decisions here.
//!
//! Redis answers commands in the order they were sent, and pushes
//! (`smessage`, a `sunsubscribe` of its own) may come between answers,
//! never inside one. So the commands sent and not yet answered are kept
//! in order ([`ShardLink::asked`]): an error answers the oldest, and a
//! `sunsubscribe` that answers none was pushed by the server (the
//! channel's slot moved away).

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::super::pubsub::{Reader, MAX_MESSAGE, READ_CHUNK};
use super::super::Endpoint;
use super::slots::Addr;
use crate::link::Names;
use crate::proto::resp::{self, Value};

/// A command sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Auth,
    /// The classic SUBSCRIBE of the canary.
    Subscribe,
    Ssubscribe(Arc<str>),
    Sunsubscribe(Arc<str>),
}

/// What one link heard, for the thread to act on.
#[derive(Debug)]
pub enum Heard {
    /// `smessage` (a channel's event) or `message` (the canary): the
    /// pub/sub channel's name and the payload.
    Message(String, Vec<u8>),
    /// Redis confirmed the SSUBSCRIBE of a channel: its load may start.
    Subscribed(Arc<str>),
    /// Redis dropped a channel we did not ask to leave: its slot moved.
    Dropped(Arc<str>),
    /// SSUBSCRIBE answered `MOVED`/`ASK` (the new owner, when given).
    Redirected(Arc<str>, Option<Addr>),
}

pub struct ShardLink {
    stream: Arc<TcpStream>,
    pub reader: Reader,
    buf: Vec<u8>,
    asked: VecDeque<Asked>,
    /// Channels SSUBSCRIBEd here (sent, no SUNSUBSCRIBE since).
    pub subscribed: HashSet<Arc<str>>,
    /// When the canary last came back on this link (hub clock, ms).
    pub canary_seen_ms: u64,
    /// The canary came back in time on this link, recently.
    pub canary_ok: bool,
    /// A canary came back on this connection: the link worked.
    pub worked: bool,
}

impl ShardLink {
    /// Connects, authenticates and subscribes the canary (classic pub/sub
    /// reaches every node, so each link hears it). At most `backlog`
    /// bytes wait read and not handled.
    pub fn open(
        ep: &Endpoint,
        timeout: Duration,
        canary: &str,
        now_ms: u64,
        backlog: usize,
    ) -> Result<ShardLink, String> {
        let sock = std::net::ToSocketAddrs::to_socket_addrs(&(ep.host.as_str(), ep.port))
            .map_err(|e| format!("resolve {}: {e}", ep.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", ep.host))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("connect {sock}: {e}"))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)
        };
        setup(&stream).map_err(|e| format!("socket options: {e}"))?;
        let stream = Arc::new(stream);
        let reader = Reader::start_with(stream.clone(), backlog / READ_CHUNK)?;
        let mut link = ShardLink {
            stream,
            reader,
            buf: Vec::with_capacity(READ_CHUNK),
            asked: VecDeque::new(),
            subscribed: HashSet::new(),
            canary_seen_ms: now_ms,
            canary_ok: false,
            worked: false,
        };
        if let Some(pass) = &ep.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &ep.username {
                args.push(user.as_bytes());
            }
            args.push(pass.as_bytes());
            link.send(&resp::command(&args), Asked::Auth)?;
        }
        link.send(
            &resp::command(&[b"SUBSCRIBE", canary.as_bytes()]),
            Asked::Subscribe,
        )?;
        Ok(link)
    }

    fn send(&mut self, bytes: &[u8], asked: Asked) -> Result<(), String> {
        (&*self.stream)
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))?;
        self.asked.push_back(asked);
        Ok(())
    }

    /// SSUBSCRIBEs channels, one command each (one command's channels
    /// must share a slot, and an error must name one channel).
    pub fn subscribe(&mut self, names: &Names, channels: &[Arc<str>]) -> Result<(), String> {
        let mut bytes = Vec::new();
        for c in channels {
            let notify = names.notify(c);
            bytes.extend(resp::command(&[b"SSUBSCRIBE", notify.as_bytes()]));
        }
        (&*self.stream)
            .write_all(&bytes)
            .map_err(|e| format!("write: {e}"))?;
        for c in channels {
            self.asked.push_back(Asked::Ssubscribe(c.clone()));
            self.subscribed.insert(c.clone());
        }
        Ok(())
    }

    pub fn unsubscribe(&mut self, names: &Names, channel: &Arc<str>) -> Result<(), String> {
        self.subscribed.remove(channel);
        let notify = names.notify(channel);
        let cmd = resp::command(&[b"SUNSUBSCRIBE", notify.as_bytes()]);
        self.send(&cmd, Asked::Sunsubscribe(channel.clone()))
    }

    /// Takes a chunk read from the socket; what it completed.
    pub fn take(&mut self, names: &Names, chunk: &[u8]) -> Result<Vec<Heard>, String> {
        self.buf.extend_from_slice(chunk);
        let mut heard = Vec::new();
        let mut used = 0;
        loop {
            match resp::parse(&self.buf[used..], MAX_MESSAGE) {
                Ok(Some((value, n))) => {
                    used += n;
                    if let Some(h) = self.classify(names, value)? {
                        heard.push(h);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("protocol: {}", e.0)),
            }
        }
        self.buf.drain(..used);
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
        Ok(heard)
    }

    fn classify(&mut self, names: &Names, value: Value) -> Result<Option<Heard>, String> {
        let mut items = match value {
            Value::Array(Some(items)) => items,
            Value::Error(e) => return self.refused(e),
            // +OK of AUTH.
            _ => {
                self.answered(|a| *a == Asked::Auth);
                return Ok(None);
            }
        };
        let kind = items
            .first()
            .and_then(Value::bytes)
            .unwrap_or_default()
            .to_vec();
        let name = items
            .get(1)
            .and_then(Value::bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
            .to_string();
        let channel = names.channel_of(&name).map(Arc::<str>::from);
        let heard = match (kind.as_slice(), channel) {
            (b"smessage" | b"message", _) => {
                let payload = match items.get_mut(2) {
                    Some(Value::Bulk(Some(p))) => std::mem::take(p),
                    _ => Vec::new(),
                };
                Some(Heard::Message(name, payload))
            }
            (b"subscribe", _) => {
                self.answered(|a| *a == Asked::Subscribe);
                None
            }
            (b"ssubscribe", Some(c)) => {
                let ours = self.answered(|a| *a == Asked::Ssubscribe(c.clone()));
                (ours && self.subscribed.contains(&c)).then_some(Heard::Subscribed(c))
            }
            (b"sunsubscribe", Some(c)) => {
                let asked = self.answered(|a| *a == Asked::Sunsubscribe(c.clone()));
                let pushed = !asked && self.subscribed.remove(&c);
                pushed.then_some(Heard::Dropped(c))
            }
            _ => None,
        };
        Ok(heard)
    }

    /// Pops the oldest command sent when `matches` says this answers it.
    fn answered(&mut self, matches: impl Fn(&Asked) -> bool) -> bool {
        let ours = self.asked.front().is_some_and(matches);
        if ours {
            self.asked.pop_front();
        }
        ours
    }

    /// An error answers the oldest command: a redirected SSUBSCRIBE is
    /// followed; anything else ends the link.
    fn refused(&mut self, e: String) -> Result<Option<Heard>, String> {
        let oldest = self.asked.pop_front();
        let redirect = e.starts_with("MOVED ") || e.starts_with("ASK ");
        match oldest {
            Some(Asked::Ssubscribe(c)) if redirect => {
                self.subscribed.remove(&c);
                let target = e.split_whitespace().nth(2).map(str::to_string);
                Ok(Some(Heard::Redirected(c, target)))
            }
            // A channel that moved before we left it: nothing to leave.
            Some(Asked::Sunsubscribe(_)) if redirect => Ok(None),
            _ => Err(format!("Redis error: {e}")),
        }
    }

    /// Bytes waiting in the socket plus bytes read but not handled.
    pub fn backlog(&self) -> u64 {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer we pass.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut pending) };
        let in_socket = if rc == 0 { pending.max(0) as u64 } else { 0 };
        in_socket + self.reader.queued.load(Ordering::Relaxed) + self.buf.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A link to a listener played by the test: (link, the server side).
    fn pair() -> (ShardLink, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ep = Endpoint::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let link = ShardLink::open(&ep, Duration::from_secs(5), "rx:canary:n", 0, 1 << 20).unwrap();
        let (server, _) = listener.accept().unwrap();
        (link, server)
    }

    fn push(items: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = items.iter().map(|s| s.as_bytes()).collect();
        resp::command(&args)
    }

    #[test]
    fn answers_redirects_and_pushed_unsubscribes_are_told_apart() {
        let names = Names::clustered("rx:");
        let (mut link, mut server) = pair();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        link.subscribe(&names, &[a.clone(), b.clone(), c.clone()])
            .unwrap();
        link.unsubscribe(&names, &c).unwrap();
        let mut sent = vec![0u8; 4096];
        let n = server.read(&mut sent).unwrap();
        assert!(String::from_utf8_lossy(&sent[..n]).contains("SSUBSCRIBE"));
        let mut replies = push(&["subscribe", "rx:canary:n"]);
        replies.extend(push(&["ssubscribe", "rx:{a}:c"]));
        replies.extend(b"-MOVED 15495 127.0.0.1:7002\r\n");
        replies.extend(push(&["smessage", "rx:{a}:c", "1-0 {}"]));
        replies.extend(push(&["ssubscribe", "rx:{c}:c"]));
        replies.extend(push(&["sunsubscribe", "rx:{c}:c"]));
        // Pushed by the server: a's slot moved away.
        replies.extend(push(&["sunsubscribe", "rx:{a}:c"]));
        let heard = link.take(&names, &replies).unwrap();
        let summary: Vec<String> = heard.iter().map(|h| format!("{h:?}")).collect();
        assert_eq!(summary.len(), 4, "{summary:?}");
        assert!(matches!(&heard[0], Heard::Subscribed(x) if **x == *"a"));
        assert!(
            matches!(&heard[1], Heard::Redirected(x, Some(t)) if **x == *"b" && t == "127.0.0.1:7002")
        );
        assert!(matches!(&heard[2], Heard::Message(n, p) if n == "rx:{a}:c" && p == b"1-0 {}"));
        assert!(matches!(&heard[3], Heard::Dropped(x) if **x == *"a"));
        assert!(link.subscribed.is_empty());
        assert!(link.asked.is_empty());
        assert!(link.take(&names, b"-ERR nope\r\n").is_err());
    }
}
