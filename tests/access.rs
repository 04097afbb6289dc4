//! Who may do what, and how much of the server one address may hold:
//! requests forwarded by a proxy are not local, API keys are never empty,
//! plain HTTP connections are capped per IP and idle keep-alives end.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BODY: &str = r#"{"channel":"c","data":1}"#;

/// Finding 3: with no API key configured, a request from loopback that a
/// proxy forwarded (X-Forwarded-For, Forwarded, X-Real-IP) from a peer
/// that is not a trusted proxy is the internet, not this machine.
#[test]
fn without_keys_a_request_forwarded_by_an_unknown_proxy_is_not_local() {
    let server = Server::start(&[]);
    let forwarded = [
        "X-Forwarded-For: 203.0.113.9",
        "Forwarded: for=203.0.113.9",
        "X-Real-IP: 203.0.113.9",
    ];
    for header in forwarded {
        let (status, body) = request(server.addr, "POST", "/api/publish", &[header], BODY);
        assert_eq!(status, 403, "{header}: {body}");
        assert!(body.contains("auth.keys"), "{body}");
        let (status, _) = request(server.addr, "GET", "/debug/fds", &[header], "");
        assert_eq!(status, 403, "{header}");
    }
    // This machine itself still may.
    assert_eq!(
        request(server.addr, "POST", "/api/publish", &[], BODY).0,
        200
    );
    assert_eq!(get(server.addr, "/debug/fds").0, 200);
    assert!(server.logs().contains("not requests a proxy forwards"));
}

/// The same proxy, once trusted, forwards its clients' addresses: local
/// clients stay local, remote ones are remote, and remote ones are rate
/// limited (they were exempt as "loopback" before).
#[test]
fn a_trusted_proxy_forwards_who_its_clients_are() {
    let server = Server::start(&[
        "--set",
        "limits.trusted_proxies=[\"127.0.0.1\"]",
        "--set",
        "limits.requests_per_sec=1",
        "--set",
        "limits.request_burst=1",
    ]);
    let remote = ["X-Forwarded-For: 203.0.113.9"];
    let local = ["X-Forwarded-For: 127.0.0.1"];
    assert_eq!(
        request(server.addr, "POST", "/api/publish", &local, BODY).0,
        200
    );
    let statuses: Vec<u16> = (0..3)
        .map(|_| request(server.addr, "POST", "/api/publish", &remote, BODY).0)
        .collect();
    assert_eq!(statuses[0], 403, "{statuses:?}");
    assert!(statuses[1..].contains(&429), "{statuses:?}");
}

/// Finding 4: an empty API key would match an empty `X-API-Key:` header;
/// it is refused at start, naming the key.
#[test]
fn an_empty_api_key_stops_the_server_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_redix"))
        .args(["--listen", "127.0.0.1:0", "--api-key", ""])
        .stdout(Stdio::null())
        .output()
        .expect("run redix");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.keys[0] is empty"), "{stderr}");
    // With a real key, an empty header is no credential.
    let server = Server::start(&["--api-key", "k1"]);
    let (status, _) = request(server.addr, "POST", "/api/publish", &["X-API-Key:"], BODY);
    assert_eq!(status, 401);
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/publish",
        &["X-API-Key: k1"],
        BODY,
    );
    assert_eq!(status, 200);
}

/// Finding 5: one address cannot hold the server with idle keep-alives:
/// past `limits.http_per_ip` plain connections it gets 429 at once, and
/// an idle keep-alive ends after `limits.keepalive_timeout_ms`.
#[test]
fn plain_http_connections_are_capped_per_ip_and_idle_ones_end() {
    let server = Server::start(&[
        "--set",
        "limits.http_per_ip=3",
        "--set",
        "limits.keepalive_timeout_ms=300",
    ]);
    let baseline = server.fd_count();
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    wait_until("the three accepted", || server.fd_count() == baseline + 3);
    let refused = raw_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status_of(&refused), 429, "{refused}");
    assert!(refused.contains("Retry-After: "), "{refused}");
    drop(held);
    wait_until("the slots to come back", || {
        status_of(&raw_exchange(
            server.addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )) == 200
    });
    // One request answered, then idle: the server closes it.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let end = idle.read_to_end(&mut all);
    assert!(end.is_ok(), "the idle keep-alive was not closed: {end:?}");
    assert_eq!(status_of(&String::from_utf8_lossy(&all)), 200);
}

/// Every scope of API key does what it may and no more: a publish key
/// publishes but cannot read `/debug`, an admin key reads `/debug` but
/// cannot publish, a key of `auth.keys` does both; an unknown key is 401,
/// a known key without the scope 403.
#[test]
fn each_scope_of_key_may_do_what_it_names_and_no_more() {
    let server = Server::start(&[
        "--set",
        r#"auth.keys=["all-key"]"#,
        "--set",
        r#"auth.publish_keys=["pub-key"]"#,
        "--set",
        r#"auth.admin_keys=["adm-key"]"#,
    ]);
    let publish = |key: &str| request(server.addr, "POST", "/api/publish", &[key], BODY).0;
    let debug = |key: &str| request(server.addr, "GET", "/debug/fds", &[key], "").0;
    let table = [
        ("X-API-Key: pub-key", 200, 403),
        ("Authorization: Bearer pub-key", 200, 403),
        ("X-API-Key: adm-key", 403, 200),
        ("Authorization: Bearer adm-key", 403, 200),
        ("X-API-Key: all-key", 200, 200),
        ("Authorization: Bearer all-key", 200, 200),
        ("X-API-Key: nobody", 401, 401),
        // Being on this machine is no key once keys are configured.
        ("X-Nothing: 1", 401, 401),
    ];
    for (key, may_publish, may_debug) in table {
        assert_eq!(
            (publish(key), debug(key)),
            (may_publish, may_debug),
            "{key}"
        );
    }
}
