//! One connection's thread: route the head, then either answer plain HTTP
//! or run a Finnhub WebSocket session until the peer, a control or the
//! simulator's stop ends it.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::frames::{self, ClientMsg, Feed};
use super::http::{self, Control, Route};
use super::{Shared, TICK};

/// How long a peer has to send its request head and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one blocked write may take before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unsent bytes a session may hold for a peer that does not read.
const MAX_UNSENT: usize = 4 * 1024 * 1024;
/// Largest client message; a subscribe is a few dozen bytes.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Distinct symbols counted in [`super::Stats`]; later new ones are not.
const MAX_COUNTED_SYMBOLS: usize = 10_000;
/// A stalled or slow session does not catch up on trades older than this.
const MAX_LAG: Duration = Duration::from_secs(1);

pub(super) fn serve(stream: TcpStream, shared: &Shared, id: u64) {
    let ok = stream.set_nonblocking(false).is_ok()
        && stream.set_read_timeout(Some(TICK)).is_ok()
        && stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok();
    if !ok {
        return;
    }
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let Some(head) = http::peek_head(&stream, deadline, || shared.stop.load(Ordering::SeqCst))
    else {
        return;
    };
    if let Some(route) = http::route(&head) {
        let (status, body) = answer(route, shared);
        http::respond(stream, &head, status, &body, deadline);
        return;
    }
    if shared.refusing.load(Ordering::SeqCst) {
        let body = r#"{"error":"refusing connections"}"#;
        http::respond(stream, &head, "503 Service Unavailable", body, deadline);
        return;
    }
    let generation = shared.drop_generation.load(Ordering::SeqCst);
    let want = shared.config.token.as_deref();
    let Some((ws, token)) = handshake(stream, want, deadline) else {
        return;
    };
    let kill = Arc::new(AtomicBool::new(false));
    {
        let mut stats = shared.stats();
        stats.connections += 1;
        stats.peak_connections = stats.peak_connections.max(stats.connections);
        stats.accepted += 1;
    }
    if let Some(token) = &token {
        let mut tokens = shared.tokens();
        // Finnhub allows one connection per key: a second drops both.
        match tokens.remove(token) {
            Some(other) => {
                other.store(true, Ordering::SeqCst);
                kill.store(true, Ordering::SeqCst);
                shared.stats().same_token_drops += 1;
            }
            None => {
                tokens.insert(token.clone(), kill.clone());
            }
        }
    }
    let seed = id ^ wall_ms().rotate_left(17);
    let mut session = Session {
        ws,
        shared,
        kill: &kill,
        generation,
        subscribed: Vec::new(),
        feed: Feed::new(seed, shared.config.duplicates),
        resends: Vec::new(),
        next_trade: Instant::now(),
        next_ping: Instant::now() + Duration::from_millis(shared.config.ping_ms),
    };
    let end = session.run();
    log::debug!("finnhub-sim: connection {id} ends: {end:?}");
    if end != End::Peer {
        // Dropped, not closed: no close frame, as when an upstream fails.
        let _ = session.ws.get_mut().shutdown(Shutdown::Both);
    }
    if let Some(token) = &token {
        let mut tokens = shared.tokens();
        if tokens.get(token).is_some_and(|k| Arc::ptr_eq(k, &kill)) {
            tokens.remove(token);
        }
    }
    shared.stats().connections -= 1;
}

fn answer(route: Route, shared: &Shared) -> (&'static str, String) {
    let ok = || ("200 OK", r#"{"ok":true}"#.to_string());
    match route {
        Route::Stats => ("200 OK", shared.stats().to_json()),
        Route::Control(control) => {
            match control {
                Control::Drop => shared.drop_all(),
                Control::Stall => shared.stalled.store(true, Ordering::SeqCst),
                Control::Unstall => shared.stalled.store(false, Ordering::SeqCst),
                Control::Refuse => shared.refusing.store(true, Ordering::SeqCst),
                Control::Accept => shared.refusing.store(false, Ordering::SeqCst),
            }
            ok()
        }
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            r#"{"error":"method not allowed"}"#.into(),
        ),
        Route::NotFound => ("404 Not Found", r#"{"error":"no such control"}"#.into()),
    }
}

/// The `token` query parameter of `/?token=KEY`.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_string)
}

/// The server handshake; a wrong token gets HTTP 401. Returns the socket
/// and the token the client gave.
fn handshake(
    stream: TcpStream,
    want: Option<&str>,
    deadline: Instant,
) -> Option<(WebSocket<TcpStream>, Option<String>)> {
    let mut given = None;
    // The Err type is tungstenite's, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        given = query_token(req.uri().query());
        match want {
            Some(want) if given.as_deref() != Some(want) => {
                let mut refusal = ErrorResponse::new(Some("Invalid API key".into()));
                *refusal.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
            _ => Ok(resp),
        }
    };
    let config = WebSocketConfig::default()
        .max_write_buffer_size(MAX_UNSENT)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let mut attempt = tungstenite::accept_hdr_with_config(stream, callback, Some(config));
    let ws = loop {
        match attempt {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                attempt = mid.handshake();
            }
            Err(_) => return None,
        }
    };
    Some((ws, given))
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer closed or the socket failed.
    Peer,
    /// The simulator stopped, `drop_all`, or a second connection with the token.
    Dropped,
}

struct Session<'a> {
    ws: WebSocket<TcpStream>,
    shared: &'a Shared,
    kill: &'a AtomicBool,
    generation: u64,
    /// In subscription order, so frames list symbols stably.
    subscribed: Vec<String>,
    feed: Feed,
    /// Identical frames to send again, and when.
    resends: Vec<(Instant, String)>,
    next_trade: Instant,
    next_ping: Instant,
}

impl Session<'_> {
    fn run(&mut self) -> End {
        loop {
            if self.shared.stop.load(Ordering::SeqCst)
                || self.kill.load(Ordering::SeqCst)
                || self.shared.drop_generation.load(Ordering::SeqCst) != self.generation
            {
                return End::Dropped;
            }
            if self.shared.stalled.load(Ordering::SeqCst) {
                std::thread::sleep(TICK);
                continue;
            }
            if self.read_one().is_err() || self.send_due(Instant::now()).is_err() {
                return End::Peer;
            }
        }
    }

    /// Reads at most one message, waiting until the next send is due (at
    /// most a tick).
    fn read_one(&mut self) -> Result<(), ()> {
        let wait = self
            .next_due()
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), TICK);
        let _ = self.ws.get_ref().set_read_timeout(Some(wait));
        match self.ws.read() {
            Ok(Message::Text(text)) => self.on_text(text.as_str()),
            Ok(_) => Ok(()),
            Err(tungstenite::Error::Io(e)) if http::is_timeout(&e) => Ok(()),
            Err(_) => Err(()),
        }
    }

    fn next_due(&self) -> Instant {
        let mut due = self.next_ping;
        if self.shared.config.trades_per_sec > 0 && self.has_trading_symbol() {
            due = due.min(self.next_trade);
        }
        self.resends.iter().map(|r| r.0).fold(due, Instant::min)
    }

    fn has_trading_symbol(&self) -> bool {
        self.subscribed
            .iter()
            .any(|s| !self.shared.config.is_silent(s))
    }

    fn on_text(&mut self, text: &str) -> Result<(), ()> {
        match frames::parse_client(text) {
            ClientMsg::Subscribe(symbol) => {
                count(&mut self.shared.stats().subscribes, &symbol);
                if self.subscribed.contains(&symbol) {
                    return Ok(());
                }
                if self.subscribed.len() >= self.shared.config.max_symbols {
                    return self.send(frames::error_frame(frames::TOO_MANY_SYMBOLS));
                }
                self.subscribed.push(symbol);
            }
            ClientMsg::Unsubscribe(symbol) => {
                count(&mut self.shared.stats().unsubscribes, &symbol);
                self.subscribed.retain(|s| *s != symbol);
            }
            ClientMsg::Other => {}
        }
        Ok(())
    }

    fn send_due(&mut self, now: Instant) -> Result<(), ()> {
        let mut due = Vec::new();
        self.resends.retain(|(at, text)| {
            let keep = *at > now;
            if !keep {
                due.push(text.clone());
            }
            keep
        });
        for text in due {
            self.send(text)?;
        }
        let rate = self.shared.config.trades_per_sec;
        if rate > 0 {
            let interval = Duration::from_secs(1) / rate;
            if now.saturating_duration_since(self.next_trade) > MAX_LAG {
                self.next_trade = now;
            }
            while self.next_trade <= now {
                self.next_trade += interval;
                self.trade_tick(now)?;
            }
        }
        let ping_ms = self.shared.config.ping_ms;
        if ping_ms > 0 && self.next_ping <= now {
            self.next_ping = now + Duration::from_millis(ping_ms);
            self.send(frames::ping_frame())?;
        }
        match self.ws.flush() {
            Err(tungstenite::Error::Io(e)) if http::is_timeout(&e) => Ok(()),
            Err(_) => Err(()),
            Ok(()) => Ok(()),
        }
    }

    fn trade_tick(&mut self, now: Instant) -> Result<(), ()> {
        let config = &self.shared.config;
        let symbols: Vec<&str> = self
            .subscribed
            .iter()
            .map(String::as_str)
            .filter(|s| !config.is_silent(s))
            .collect();
        if symbols.is_empty() {
            return Ok(());
        }
        for planned in self.feed.tick(&symbols, wall_ms()) {
            if let Some(ms) = planned.resend_after_ms {
                let at = now + Duration::from_millis(ms);
                self.resends.push((at, planned.text.clone()));
            }
            self.send(planned.text)?;
        }
        Ok(())
    }

    /// Queues a text frame; a full socket buffer is fine, a write buffer
    /// past [`MAX_UNSENT`] or a dead socket is not.
    fn send(&mut self, text: String) -> Result<(), ()> {
        match self.ws.write(Message::text(text)) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if http::is_timeout(&e) => Ok(()),
            Err(_) => Err(()),
        }
    }
}

/// Counts a message for `symbol`, up to [`MAX_COUNTED_SYMBOLS`] symbols:
/// a peer cannot grow the table without bound.
fn count(counts: &mut std::collections::BTreeMap<String, u64>, symbol: &str) {
    if let Some(n) = counts.get_mut(symbol) {
        *n += 1;
    } else if counts.len() < MAX_COUNTED_SYMBOLS {
        counts.insert(symbol.to_string(), 1);
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::{count, query_token, MAX_COUNTED_SYMBOLS};
    use std::collections::BTreeMap;

    #[test]
    fn counts_are_bounded() {
        let mut counts = BTreeMap::new();
        for i in 0..MAX_COUNTED_SYMBOLS + 5 {
            count(&mut counts, &format!("S{i}"));
        }
        count(&mut counts, "S0");
        assert_eq!(counts.len(), MAX_COUNTED_SYMBOLS);
        assert_eq!(counts.get("S0"), Some(&2));
        assert_eq!(counts.get(&format!("S{MAX_COUNTED_SYMBOLS}")), None);
    }

    #[test]
    fn token_from_query() {
        let cases = [
            (None, None),
            (Some(""), None),
            (Some("token=abc"), Some("abc")),
            (Some("x=1&token=abc&y=2"), Some("abc")),
            (Some("token="), Some("")),
            (Some("tokens=abc"), None),
        ];
        for (query, want) in cases {
            assert_eq!(query_token(query).as_deref(), want, "{query:?}");
        }
    }
}
