//! The kernel's TCP tables (`/proc/self/net/tcp` and `tcp6`): each
//! socket's state and addresses, by socket inode.

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const TCP_STATES: [&str; 12] = [
    "ERROR",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// One TCP socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Every TCP socket of the network namespace, by inode (the sockets of
/// this process are those whose inode one of its fds names).
pub fn table() -> HashMap<u64, TcpSocket> {
    let mut out = HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        out.extend(text.lines().skip(1).filter_map(parse_line));
    }
    out
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`
fn parse_line(line: &str) -> Option<(u64, TcpSocket)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    let state = usize::from_str_radix(cols.get(3)?, 16).ok()?;
    let inode = cols.get(9)?.parse().ok()?;
    let socket = TcpSocket {
        state: TCP_STATES.get(state).copied().unwrap_or("UNKNOWN"),
        local: parse_addr(cols.get(1)?)?,
        remote: parse_addr(cols.get(2)?)?,
    };
    Some((inode, socket))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6). The kernel
/// prints each 32-bit word of the address as a native-endian number, so
/// its native bytes are the address's bytes in network order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listener_and_a_connection_of_its_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let from = c.local_addr().unwrap();
        let t = table();
        let listening = t.values().any(|s| s.state == "LISTEN" && s.local == addr);
        let connected = t
            .values()
            .any(|s| s.state == "ESTABLISHED" && s.local == from && s.remote == addr);
        assert!(listening && connected, "{addr} {from}: {t:?}");
    }

    #[test]
    fn parses_both_families() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1";
        let (inode, s) = parse_line(v4).unwrap();
        assert_eq!((inode, s.state), (4242, "LISTEN"));
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 01 0:0 0:0 0 0 0 77 1";
        let (_, s) = parse_line(v6).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(s.local, "[::1]:80".parse().unwrap());
        }
        assert_eq!(parse_line("garbage"), None);
    }
}
