//! A raw SSE client over a real socket: the request, the response head,
//! and events parsed as a browser's `EventSource` would see them.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::http::status_of;
use super::server::DEADLINE;

/// One SSE event as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// A raw SSE client.
pub struct SseClient {
    pub reader: BufReader<TcpStream>,
    pub status: u16,
    pub head: String,
}

impl SseClient {
    pub fn connect(addr: SocketAddr, channels: &str) -> SseClient {
        Self::connect_with(addr, channels, None)
    }

    /// Connects from a socket prepared by the caller (buffer sizes, source address).
    pub fn connect_with(
        addr: SocketAddr,
        channels: &str,
        socket: Option<socket2::Socket>,
    ) -> SseClient {
        let stream = match socket {
            Some(sock) => {
                sock.connect(&addr.into()).expect("connect");
                TcpStream::from(sock)
            }
            None => TcpStream::connect(addr).expect("connect"),
        };
        let path = format!("/api/stream?channels={channels}");
        Self::request(stream, &path, &[])
    }

    /// An SSE request for any path, with extra header lines.
    pub fn open(addr: SocketAddr, path: &str, headers: &[&str]) -> SseClient {
        let stream = TcpStream::connect(addr).expect("connect");
        Self::request(stream, path, headers)
    }

    fn request(stream: TcpStream, path: &str, headers: &[&str]) -> SseClient {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut w = stream.try_clone().unwrap();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        write!(
            w,
            "GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{extra}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = if head.is_empty() { 0 } else { status_of(&head) };
        SseClient {
            reader,
            status,
            head,
        }
    }

    /// The next event (comments skipped); `None` at end of stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        let mut seen = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if seen {
                    return Some(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            seen = true;
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = Some(value.to_string()),
                "data" => ev.data.push_str(value),
                "retry" => ev.retry = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// The next event that carries data.
    pub fn next_message(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_event()?;
            if ev.event.is_some() {
                return Some(ev);
            }
        }
    }

    /// Resets the connection (RST instead of FIN) as it closes.
    pub fn abort(self) {
        let sock = socket2::Socket::from(self.reader.into_inner());
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
}
