//! A minimal Redis client for the benches' own checks: one command per call over a blocking
//! socket, RESP2 replies parsed into [`Reply`]. Not for load (redix does the publishing).
//! Leaf module (std only).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …` (the text after `-`)
    Error(String),
    Int(i64),
    /// `$-1` is `Bulk(None)`
    Bulk(Option<Vec<u8>>),
    /// `*-1` is `Array(None)`
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A status, bulk string or integer as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

/// A command as RESP: an array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply (arrays recursively).
pub fn read_reply(r: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad reply line {line:?}"))
    };
    match kind {
        "+" => Ok(Reply::Status(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Int(num()?)),
        "$" => match num()? {
            n if n < 0 => Ok(Reply::Bulk(None)),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
        },
        "*" => match num()? {
            n if n < 0 => Ok(Reply::Array(None)),
            n => (0..n)
                .map(|_| read_reply(r))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Reply::Array(Some(v))),
        },
        _ => Err(format!("bad reply line {line:?}")),
    }
}

/// A connection to one redis-server.
pub struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Result<Conn, String> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            r: BufReader::new(s),
        })
    }

    /// One command, its reply (an `Error` reply is `Ok`).
    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.r
            .get_mut()
            .write_all(&encode(args))
            .map_err(|e| e.to_string())?;
        read_reply(&mut self.r)
    }
}

/// One command on a fresh connection to `port`.
pub fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    Conn::open(port)?.cmd(args)
}

/// One command on a Redis Cluster node, following one `MOVED` to the slot's owner.
pub fn cluster_command(port: u16, args: &[&str]) -> Result<Reply, String> {
    match command(port, args)? {
        Reply::Error(e) if e.starts_with("MOVED ") => {
            let owner = e
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("bad redirect {e:?}"))?;
            command(owner, args)
        }
        r => Ok(r),
    }
}
