//! HTTP over raw sockets: one-shot requests, keep-alive connections,
//! publishing, and reading metrics from `GET /metrics/prom`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::server::DEADLINE;

/// Sends raw bytes, reads until the server closes; returns the text.
#[track_caller]
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text`.
#[track_caller]
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// One request with `Connection: close`; returns (status, body).
#[track_caller]
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let text = raw_exchange(addr, req.as_bytes());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status_of(&text), body)
}

#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], "")
}

/// The value of one line of `GET /metrics/prom` (name with labels, as
/// printed, e.g. `redix_connections{transport="sse"}`).
#[track_caller]
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, body) = get(addr, "/metrics/prom");
    assert_eq!(status, 200, "{body}");
    metric_in(&body, name)
}

/// One metric's value in an exposition text; fails when it is absent.
#[track_caller]
pub fn metric_in(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .expect("metric value")
}

/// Reads one response off a keep-alive connection: (status, body).
/// `Err` when the connection ended before a status line.
pub fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_of(&line);
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

/// Reads one `200` response off a keep-alive connection; returns its JSON body.
pub fn read_json_response(reader: &mut BufReader<TcpStream>) -> serde_json::Value {
    let (status, body) = read_response(reader).expect("response");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json body")
}

/// One keep-alive connection for many GETs (metrics, `/debug/fds`): a test
/// that counts the server's connections or fds opens no others while it
/// looks, so what it reads is exactly the server's own plus this one.
pub struct HttpConn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        HttpConn {
            addr,
            reader: BufReader::new(s),
        }
    }

    /// GET over the kept connection; (status, body). The server closes a
    /// keep-alive connection that idles past its header timeout: then this
    /// connects again once and repeats the request.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        for _ in 0..2 {
            let sent = self.reader.get_mut().write_all(req.as_bytes());
            match sent.and_then(|_| read_response(&mut self.reader)) {
                Ok((status, body)) => {
                    return (status, String::from_utf8(body).expect("utf-8 body"))
                }
                Err(e) if closed(&e) => *self = HttpConn::connect(self.addr),
                Err(e) => panic!("GET {path}: {e}"),
            }
        }
        panic!("GET {path}: the connection closed twice");
    }

    /// See [`metric`].
    #[track_caller]
    pub fn metric(&mut self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics/prom");
        assert_eq!(status, 200, "{body}");
        metric_in(&body, name)
    }

    /// The `/debug/fds` report.
    #[track_caller]
    pub fn fds(&mut self) -> serde_json::Value {
        let (status, body) = self.get("/debug/fds");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }
}

/// The errors of a connection the server closed (not of a slow one).
fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Publishes `data` (JSON) to `channel`; returns the event id.
pub fn publish(addr: SocketAddr, channel: &str, data: &str) -> u64 {
    let (status, body) = request(
        addr,
        "POST",
        "/api/publish",
        &["Content-Type: application/json"],
        &format!(r#"{{"channel":"{channel}","data":{data}}}"#),
    );
    assert_eq!(status, 200, "publish: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("publish answer");
    v["id"].as_str().expect("id").parse().expect("numeric id")
}

/// Publishes and returns (status, body as JSON or the raw text as a string).
#[track_caller]
pub fn try_publish(addr: SocketAddr, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = request(
        addr,
        "POST",
        "/api/publish",
        &["Content-Type: application/json"],
        body,
    );
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// Publishes in Redis mode; returns the stream id.
#[track_caller]
pub fn publish_stream_id(addr: SocketAddr, channel: &str, data: &str) -> String {
    let (status, v) = try_publish(addr, &format!(r#"{{"channel":"{channel}","data":{data}}}"#));
    assert_eq!(status, 200, "publish: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// Appends one publish request (keep-alive) to `out`, for pipelining.
pub fn push_publish(out: &mut Vec<u8>, channel: &str, data: &str) {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// A keep-alive publisher: one connection for many publishes.
pub struct Publisher {
    stream: BufReader<TcpStream>,
}

impl Publisher {
    pub fn connect(addr: SocketAddr) -> Publisher {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Publisher {
            stream: BufReader::new(s),
        }
    }

    pub fn publish(&mut self, channel: &str, data: &str) -> u64 {
        self.publish_id(channel, data).parse().expect("numeric id")
    }

    /// Publishes; returns the event id as given (a number, or a Redis
    /// stream id in Redis mode).
    pub fn publish_id(&mut self, channel: &str, data: &str) -> String {
        let mut req = Vec::new();
        push_publish(&mut req, channel, data);
        self.stream
            .get_mut()
            .write_all(&req)
            .expect("write publish");
        let (status, body) = read_response(&mut self.stream).expect("read response");
        assert_eq!(status, 200, "publish: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["id"].as_str().expect("id").to_string()
    }
}
