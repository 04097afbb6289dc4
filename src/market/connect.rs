//! Connecting the market upstream: `ws://` on plain TCP, `wss://` through
//! rustls, then the WebSocket client handshake (tungstenite) on either.
//!
//! - TLS is built on an explicit `ring` provider: nothing depends on a
//!   process-wide default provider being installed, so a `wss://` connect
//!   cannot panic for the lack of one (and no aws-lc/cmake is needed).
//! - The name checked, as SNI and against the certificate, is the URL's
//!   host (a DNS name or an IP address), never a resolved address.
//! - Trusted roots: Mozilla's (`webpki-roots`, built in, so nothing depends
//!   on the host's CA bundle) plus the certificates of `market.ca_file`,
//!   for private upstreams and tests. The file is checked at start-up and
//!   read again at each connect, so a renewed file is picked up.
//! - The token goes into the request target only; every error text passes
//!   through [`scrub`] before anyone may log it.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, WebSocket};

use crate::config::MarketConfig;

/// The upstream's byte stream: plain TCP, or rustls over TCP. Both read
/// with the TCP socket's timeouts, so a read that times out surfaces as
/// `WouldBlock`/`TimedOut` either way (rustls keeps a partial record).
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a client connection is far larger than a socket.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath, for its options (the read timeout).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A `ws://` or `wss://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub tls: bool,
    /// The host as written; an IPv6 literal without its brackets.
    pub host: &'a str,
    /// As written, or 80 (`ws://`) / 443 (`wss://`).
    pub port: u16,
    /// `host[:port]` as written: the request's `Host`.
    authority: &'a str,
    /// Path and query as written, from the first `/` or `?` (may be empty).
    tail: &'a str,
}

impl<'a> Target<'a> {
    /// Parses `ws[s]://host[:port][/path][?query]`. Errors name the part
    /// that is wrong, never the query (a token may be written there).
    pub fn parse(url: &'a str) -> Result<Target<'a>, String> {
        let (tls, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err("the scheme must be ws:// or wss://".into()),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.contains('@') {
            return Err("user info (user@host) is not supported".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(digits) => digits
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{authority}: the port must be 1 to 65535"))?,
        };
        if host.is_empty() {
            return Err(format!("{authority:?}: no host"));
        }
        Ok(Target {
            tls,
            host,
            port,
            authority,
            tail,
        })
    }
}

/// `host[:port]` or `[v6]` / `[v6]:port` into the host and the port as
/// written.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    let Some(v6) = authority.strip_prefix('[') else {
        return Ok(match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        });
    };
    let bad = || format!("{authority}: not [IPv6 address]:port");
    let (host, after) = v6.split_once(']').ok_or_else(bad)?;
    match after {
        "" => Ok((host, None)),
        _ => after
            .strip_prefix(':')
            .map(|p| (host, Some(p)))
            .ok_or_else(bad),
    }
}

/// The URL to request: `ws[s]://host[:port]/path?…&token=KEY`, with a `/`
/// path when the configured URL has none (`wss://host?token=` as Finnhub
/// writes it is not a valid request target).
fn request_url(target: &Target, token: &str) -> String {
    let scheme = if target.tls { "wss" } else { "ws" };
    let tail = match target.tail.starts_with('/') {
        true => target.tail.to_string(),
        false => format!("/{}", target.tail),
    };
    let sep = if tail.contains('?') { '&' } else { '?' };
    format!("{scheme}://{}{tail}{sep}token={token}", target.authority)
}

/// The URL as it may be logged: no query (the token lives there).
pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// An error's text with the token taken out, should a library echo the URL.
pub fn scrub(text: &str, token: &str) -> String {
    match token.is_empty() {
        true => text.to_string(),
        false => text.replace(token, "<token>"),
    }
}

/// Connects to `market.url` (TCP, TLS for `wss://`, the WebSocket
/// handshake) within `timeout` per step; the socket keeps `timeout` as
/// its read and write timeout, for the caller to change through
/// [`Stream::tcp`]. The error says which step failed, without the token.
pub fn connect(
    market: &MarketConfig,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<WebSocket<Stream>, String> {
    let shown = without_query(&market.url);
    let target = Target::parse(&market.url).map_err(|e| format!("{shown}: {e}"))?;
    let tcp = dial(&target, timeout).map_err(|e| format!("connect {shown}: {e}"))?;
    let stream = match target.tls {
        false => Stream::Plain(tcp),
        true => {
            let tls = tls_config(&market.ca_file).map_err(|e| format!("TLS for {shown}: {e}"))?;
            let name = ServerName::try_from(target.host.to_string())
                .map_err(|e| format!("TLS for {shown}: {e}"))?;
            let conn =
                ClientConnection::new(tls, name).map_err(|e| format!("TLS for {shown}: {e}"))?;
            Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    };
    let request = request_url(&target, &market.token);
    handshake(request, stream, config, timeout).map_err(|e| {
        let why = scrub(&e.to_string(), &market.token);
        format!("handshake with {shown}: {why}")
    })
}

/// TCP to the first of the host's addresses that answers (`localhost` may
/// resolve to `::1` first while the server listens on 127.0.0.1 only).
fn dial(target: &Target, timeout: Duration) -> io::Result<TcpStream> {
    let addrs = (target.host, target.port).to_socket_addrs()?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The client handshake, carried on while a read is merely interrupted
/// (until `timeout`). With TLS the TLS handshake runs inside it, on the
/// first write.
fn handshake(
    request: String,
    stream: Stream,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<WebSocket<Stream>, tungstenite::Error> {
    let deadline = Instant::now() + timeout;
    let mut attempt = tungstenite::client::client_with_config(request, stream, Some(config));
    loop {
        match attempt {
            Ok((socket, _)) => return Ok(socket),
            Err(HandshakeError::Failure(e)) => return Err(e),
            Err(HandshakeError::Interrupted(_)) if Instant::now() >= deadline => {
                return Err(tungstenite::Error::Io(io::ErrorKind::TimedOut.into()));
            }
            Err(HandshakeError::Interrupted(mid)) => attempt = mid.handshake(),
        }
    }
}

/// The TLS client configuration: the `ring` provider named explicitly,
/// its safe default protocol versions, the trusted roots, no client
/// certificate.
fn tls_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Mozilla's roots, plus every certificate of `ca_file` when set.
fn roots(ca_file: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if ca_file.is_empty() {
        return Ok(roots);
    }
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{ca_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{ca_file} holds no PEM certificate"));
    }
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("{ca_file}: certificate {}: {e}", i + 1))?;
    }
    Ok(roots)
}

/// Start-up check of `market.ca_file`: readable, at least one PEM
/// certificate, each usable as a trust anchor.
pub fn check_ca_file(ca_file: &str) -> Result<(), String> {
    tls_config(ca_file).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_get_a_path_and_the_token() {
        let table = [
            ("ws://h:1", "ws://h:1/?token=k"),
            ("ws://h:1?x=1", "ws://h:1/?x=1&token=k"),
            ("ws://h:1/feed", "ws://h:1/feed?token=k"),
            ("ws://h:1/feed?x=1", "ws://h:1/feed?x=1&token=k"),
            ("wss://ws.finnhub.io", "wss://ws.finnhub.io/?token=k"),
            (
                "wss://ws.finnhub.io?x=1",
                "wss://ws.finnhub.io/?x=1&token=k",
            ),
            ("wss://h:8443/feed", "wss://h:8443/feed?token=k"),
            ("wss://[::1]:8443", "wss://[::1]:8443/?token=k"),
        ];
        for (url, want) in table {
            let target = Target::parse(url).unwrap();
            assert_eq!(request_url(&target, "k"), want, "{url}");
        }
        assert_eq!(without_query("wss://h:1/?token=secret"), "wss://h:1/");
    }

    #[test]
    fn targets_take_the_scheme_host_and_default_port() {
        let table = [
            ("ws://h", false, "h", 80),
            ("ws://h:9000/x", false, "h", 9000),
            ("wss://ws.finnhub.io?token=x", true, "ws.finnhub.io", 443),
            ("wss://localhost:8443/", true, "localhost", 8443),
            ("wss://127.0.0.1", true, "127.0.0.1", 443),
            ("wss://[::1]", true, "::1", 443),
            ("ws://[::1]:81/p", false, "::1", 81),
        ];
        for (url, tls, host, port) in table {
            let t = Target::parse(url).unwrap();
            assert_eq!((t.tls, t.host, t.port), (tls, host, port), "{url}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_their_query() {
        let table = [
            "http://h:1",
            "ws://",
            "wss://:443",
            "ws://h:",
            "ws://h:0",
            "ws://h:70000",
            "ws://h:x",
            "ws://u@h:1",
            "ws://[::1",
            "ws://[::1]x",
            "ws://a:b:c",
        ];
        for url in table {
            assert!(Target::parse(url).is_err(), "{url}");
        }
        let e = Target::parse("ws://h:x?token=secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn the_token_is_scrubbed_from_errors() {
        assert_eq!(
            scrub("GET /?token=abc failed", "abc"),
            "GET /?token=<token> failed"
        );
        assert_eq!(scrub("no token here", ""), "no token here");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        assert!(check_ca_file("").is_ok(), "webpki roots only");
        let missing = check_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = std::env::temp_dir().join(format!("redix-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = check_ca_file(empty.to_str().unwrap()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let garbled = dir.join("garbled.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&garbled, pem).unwrap();
        assert!(check_ca_file(garbled.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
