//! A `wss://` market upstream: redix against the Finnhub simulator behind
//! a TLS-terminating proxy run by the test, with a certificate from a CA
//! made here (`market.ca_file`) — trusted, it works like `ws://`; not
//! trusted, it is refused and retried, and redix stays up.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use redix::market::sim::Sim;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use common::*;

const TOKEN: &str = "tls-test-token";
/// How long a proxy read waits before it looks at the other side and at
/// its stop flag.
const POLL: Duration = Duration::from_millis(10);

/// A CA made for one test, its PEM in a file, and a server certificate it
/// signed for `localhost` and 127.0.0.1.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    server: Arc<ServerConfig>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "redix test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let dir = std::env::temp_dir().join(format!("redix-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA");

        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server TLS config");
        Pki {
            dir,
            ca_file,
            server: Arc::new(server),
        }
    }

    fn ca_file(&self) -> String {
        self.ca_file.to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the proxy saw.
#[derive(Default)]
struct ProxyStats {
    /// TLS handshakes completed, with the server name (SNI) each asked for.
    names: Mutex<Vec<Option<String>>>,
    /// TLS handshakes that failed (the client refused the certificate).
    refused: AtomicUsize,
}

/// A TLS-terminating proxy on 127.0.0.1:0 in front of a plain upstream:
/// a thread per connection copies bytes both ways. It stops, and every
/// thread ends, when dropped.
struct Proxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn start(tls: Arc<ServerConfig>, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let relays = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stats, stop, relays) = (stats.clone(), stop.clone(), relays.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (tls, stats, stop) = (tls.clone(), stats.clone(), stop.clone());
                    let relay =
                        std::thread::spawn(move || relay(client, tls, upstream, &stats, &stop));
                    relays.lock().unwrap().push(relay);
                }
            })
        };
        Proxy {
            addr,
            stats,
            stop,
            acceptor: Some(acceptor),
            relays,
        }
    }

    fn names(&self) -> Vec<Option<String>> {
        self.stats.names.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the acceptor's blocking accept so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for relay in self.relays.lock().unwrap().drain(..) {
            let _ = relay.join();
        }
    }
}

/// One proxied connection: the TLS handshake, then the plain upstream,
/// then bytes both ways until either side closes or the proxy stops.
fn relay(
    client: TcpStream,
    tls: Arc<ServerConfig>,
    upstream: SocketAddr,
    stats: &ProxyStats,
    stop: &AtomicBool,
) {
    let _ = client.set_read_timeout(Some(POLL));
    let Ok(conn) = ServerConnection::new(tls) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, client);
    while tls.conn.is_handshaking() {
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if would_block(&e) && !stop.load(Ordering::Acquire) => {}
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let name = tls.conn.server_name().map(str::to_string);
    stats.names.lock().unwrap().push(name);
    let Ok(mut plain) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = plain.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Acquire) {
        let open = pump(&mut tls, &mut plain, &mut buf).and_then(|open| match open {
            true => pump(&mut plain, &mut tls, &mut buf),
            false => Ok(false),
        });
        if !matches!(open, Ok(true)) {
            return;
        }
    }
}

/// Copies what one read of `from` gives to `to`; `Ok(false)` once `from`
/// is closed. A read that times out copies nothing.
fn pump(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> io::Result<bool> {
    match from.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            to.write_all(&buf[..n])?;
            to.flush()?;
            Ok(true)
        }
        Err(e) if would_block(&e) => Ok(true),
        Err(e) => Err(e),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn simulator() -> Sim {
    simulator_with_token(TOKEN, 20)
}

/// redix fed by `url`, with `extra` settings; not waited on beyond its
/// listening line.
fn redix_on(url: &str, extra: &[&str]) -> Server {
    let url = format!("market.url=\"{url}\"");
    let token = format!("market.token=\"{TOKEN}\"");
    let mut args = vec!["--set", &url, "--set", &token];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The symbol of the next trade event on a WebSocket.
fn next_trade_symbol(ws: &mut RawWs) -> String {
    loop {
        let f = ws.read_non_ping().expect("a frame");
        let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
        if v["type"] == "message" {
            return v["data"][0]["s"].as_str().unwrap_or_default().to_string();
        }
    }
}

/// Trades for a subscriber through `wss://{host}:PORT`, with one upstream
/// connection and one subscribe, and the proxy asked for `sni`.
fn trades_flow_through_tls(host: &str, sni: Option<&str>) {
    let pki = Pki::new(host);
    let sim = simulator();
    let proxy = Proxy::start(pki.server.clone(), sim.addr());
    let url = format!("wss://{host}:{}", proxy.addr.port());
    let ca = format!("market.ca_file=\"{}\"", pki.ca_file());
    let server = redix_on(&url, &["--set", &ca]);
    wait_until("the wss upstream", || {
        metric(server.addr, "redix_market_up") == 1.0
    });
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    ws.send_text(r#"{"type":"subscribe","symbol":"AAPL"}"#);
    for _ in 0..3 {
        assert_eq!(next_trade_symbol(&mut ws), "AAPL");
    }
    let stats = sim.stats();
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.subscribes.get("AAPL"), Some(&1), "{stats:?}");
    assert_eq!(proxy.names(), vec![sni.map(str::to_string)]);
    assert_eq!(proxy.stats.refused.load(Ordering::Relaxed), 0);
    assert_eq!(metric(server.addr, "redix_market_reconnects_total"), 0.0);
    assert!(!server.logs().contains(TOKEN), "{}", server.logs());
}

#[test]
fn a_wss_upstream_with_a_trusted_ca_file_delivers_trades() {
    // The certificate is checked against the URL's host, sent as SNI.
    trades_flow_through_tls("localhost", Some("localhost"));
}

#[test]
fn an_ip_address_host_is_checked_against_the_certificates_ip_name() {
    // No SNI for an IP address (RFC 6066); the certificate's IP name counts.
    trades_flow_through_tls("127.0.0.1", None);
}

#[test]
fn an_untrusted_wss_upstream_is_refused_and_retried_while_redix_stays_up() {
    let pki = Pki::new("untrusted");
    let sim = simulator();
    let proxy = Proxy::start(pki.server.clone(), sim.addr());
    let url = format!("wss://localhost:{}", proxy.addr.port());
    // No market.ca_file: only the built-in roots, which know nothing of
    // this CA.
    let server = redix_on(
        &url,
        &[
            "--set",
            "market.backoff_min_ms=10",
            "--set",
            "market.backoff_max_ms=50",
        ],
    );
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    ws.send_text(r#"{"type":"subscribe","symbol":"AAPL"}"#);
    wait_until("refused connects counted", || {
        metric(server.addr, "redix_market_reconnects_total") >= 3.0
    });
    wait_until("the proxy saw the refusals", || {
        proxy.stats.refused.load(Ordering::Relaxed) >= 3
    });
    assert_eq!(metric(server.addr, "redix_market_up"), 0.0);
    assert!(proxy.names().is_empty(), "no TLS handshake completed");
    let stats = sim.stats();
    assert_eq!(stats.accepted, 0, "nothing reached the upstream: {stats:?}");
    let (status, _) = get(server.addr, "/healthz");
    assert_eq!(status, 200, "redix stays up");
    let logs = server.logs();
    assert!(logs.contains("invalid peer certificate"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is never logged: {logs}");
}

#[test]
fn an_unreadable_or_empty_ca_file_stops_redix_at_start_with_the_key_named() {
    let pki = Pki::new("badca");
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    let missing = pki.dir.join("missing.pem");
    for (path, want) in [(&empty, "no PEM certificate"), (&missing, "missing.pem")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_redix"))
            .args(["--listen", "127.0.0.1:0", "--set"])
            .arg("market.url=\"wss://localhost:1\"")
            .arg("--set")
            .arg(format!("market.ca_file=\"{}\"", path.display()))
            .output()
            .expect("run redix");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("market.ca_file"), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
