//! A non-blocking TCP connect from a chosen loopback source address, the
//! way every bench's generator opens its clients (127.0.0.2, 127.0.0.3, …
//! so the ephemeral ports are per source). Leaf module (std, socket2,
//! mio, libc).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Starts a connect from `src` to `server` (no delay on the socket); the
/// stream is writable once connected.
pub fn connect_from(src: Ipv4Addr, server: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    match s.connect(&SockAddr::from(server)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}
