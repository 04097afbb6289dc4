//! RESP2, the Redis protocol, for the pub/sub connection: command
//! encoding and an incremental reply parser over a byte buffer.
//!
//! The pub/sub reader keeps its own socket and buffer instead of the
//! `redis` crate's `PubSub`, whose `subscribe` waits for Redis to confirm:
//! here (UN)SUBSCRIBEs for many channels go out in one write while
//! messages keep being read, each confirmation is seen where it falls in
//! the stream (a channel's history load must start after it), the bytes
//! waiting in the socket can be reported (`FIONREAD`), and a message is
//! bounded in size. The command connection uses the `redis` crate.

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// A bulk string; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the nil array.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// The stream is not RESP, or a reply passed the size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespError(pub String);

/// Elements of one array, at most.
const MAX_ARRAY: usize = 1 << 20;
/// Nesting of arrays, at most (pub/sub replies nest none).
const MAX_DEPTH: usize = 4;
/// Length of a line (type byte, number, CR), at most.
const MAX_LINE: usize = 32;
/// Length of an error or simple-string line (with its CR), at most.
const MAX_STATUS_LINE: usize = 64 * 1024;

/// Encodes a command as an array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is
/// incomplete, else the reply and the bytes it took. Bulk strings longer
/// than `max_bulk` are an error.
pub fn parse(buf: &[u8], max_bulk: usize) -> Result<Option<(Value, usize)>, RespError> {
    let mut pos = 0;
    match value(buf, &mut pos, max_bulk, 0)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

fn value(
    buf: &[u8],
    pos: &mut usize,
    max_bulk: usize,
    depth: usize,
) -> Result<Option<Value>, RespError> {
    let Some(line) = line(buf, *pos)? else {
        return Ok(None);
    };
    let (kind, rest) = (line[0], &line[1..]);
    let text = || String::from_utf8_lossy(rest).into_owned();
    let after_line = *pos + line.len() + 2;
    let v = match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(rest)?),
        b'$' => {
            let n = number(rest)?;
            if n < 0 {
                Value::Bulk(None)
            } else {
                let n = n as usize;
                if n > max_bulk {
                    return Err(RespError(format!("bulk string of {n} bytes")));
                }
                let end = after_line + n;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RespError("bulk string without CRLF".into()));
                }
                *pos = end + 2;
                return Ok(Some(Value::Bulk(Some(buf[after_line..end].to_vec()))));
            }
        }
        b'*' => {
            let n = number(rest)?;
            if n < 0 {
                Value::Array(None)
            } else {
                let n = n as usize;
                if n > MAX_ARRAY || depth >= MAX_DEPTH {
                    return Err(RespError(format!("array of {n} at depth {depth}")));
                }
                let mut at = after_line;
                let mut items = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    match value(buf, &mut at, max_bulk, depth + 1)? {
                        Some(v) => items.push(v),
                        None => return Ok(None),
                    }
                }
                *pos = at;
                return Ok(Some(Value::Array(Some(items))));
            }
        }
        other => return Err(RespError(format!("unknown reply type {:?}", other as char))),
    };
    *pos = after_line;
    Ok(Some(v))
}

/// The line at `pos` without its CRLF; `None` while incomplete.
///
/// A line is refused for its length the same way whether it arrived whole
/// or in pieces: too long once it (with its CR, if that came) passes the
/// limit, so how reads split a stream never changes the outcome.
fn line(buf: &[u8], pos: usize) -> Result<Option<&[u8]>, RespError> {
    let rest = &buf[pos.min(buf.len())..];
    // Errors and simple strings may be longer than a length line.
    let (max, what) = match rest.first() {
        Some(b'+' | b'-') => (MAX_STATUS_LINE, "status line too long"),
        _ => (MAX_LINE, "length line too long"),
    };
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(0) => Err(RespError("empty line".into())),
        Some(end) if end + 1 > max => Err(RespError(what.into())),
        Some(end) => Ok(Some(&rest[..end])),
        None if rest.len() > max => Err(RespError(what.into())),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RespError(format!("bad number {:?}", String::from_utf8_lossy(digits))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"SUBSCRIBE", b"a:b"]),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na:b\r\n"
        );
    }

    #[test]
    fn a_message_parses_whole_and_only_when_complete() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhe\r\nl\r\n:1\r\n";
        let whole = msg.len() - 4;
        for cut in 0..whole {
            assert_eq!(parse(&msg[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let (v, used) = parse(msg, 1024).unwrap().unwrap();
        assert_eq!(used, whole);
        assert_eq!(
            v,
            Value::Array(Some(vec![bulk("message"), bulk("c"), bulk("he\r\nl")]))
        );
        assert_eq!(parse(&msg[used..], 1024), Ok(Some((Value::Int(1), 4))));
    }

    #[test]
    fn other_reply_types() {
        assert_eq!(
            parse(b"+OK\r\n", 8),
            Ok(Some((Value::Simple("OK".into()), 5)))
        );
        assert_eq!(
            parse(b"-ERR no\r\n", 8),
            Ok(Some((Value::Error("ERR no".into()), 9)))
        );
        assert_eq!(parse(b"$-1\r\n", 8), Ok(Some((Value::Bulk(None), 5))));
        assert_eq!(parse(b"*-1\r\n", 8), Ok(Some((Value::Array(None), 5))));
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        assert!(parse(b"?x\r\n", 8).is_err());
        assert!(parse(b"$9\r\n", 8).is_err(), "bulk over the limit");
        assert!(parse(b"$2\r\nabcd\r\n", 8).is_err(), "no CRLF after bulk");
        assert!(parse(b":12x\r\n", 8).is_err());
        assert!(parse(&[b'$'; 40], 8).is_err(), "endless length line");
        assert!(parse(b"\r\n", 8).is_err());
    }

    /// Found by the `resp` fuzz target: a long length line was accepted
    /// whole but refused when it arrived in pieces.
    #[test]
    fn a_long_line_is_refused_however_it_arrives() {
        let mut long = b"$".to_vec();
        long.extend_from_slice(&[b'0'; 40]);
        long.extend_from_slice(b"1\r\nx\r\n");
        for cut in 1..=long.len() {
            let got = parse(&long[..cut], 8);
            assert!(got.is_err() || got == Ok(None), "{cut}: {got:?}");
        }
        assert!(parse(&long, 8).is_err());
        // At the limit it still parses; one more byte and it is refused.
        let at_limit = format!("${}1\r\nx\r\n", "0".repeat(MAX_LINE - 3));
        assert!(parse(at_limit.as_bytes(), 8).is_ok());
        let over = format!("${}1\r\nx\r\n", "0".repeat(MAX_LINE - 2));
        assert!(parse(over.as_bytes(), 8).is_err());
        let status = format!("+{}\r\n", "s".repeat(MAX_STATUS_LINE));
        assert!(parse(status.as_bytes(), 8).is_err());
    }
}
