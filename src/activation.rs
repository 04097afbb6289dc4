//! systemd socket activation (`systemd/redix.socket`): systemd binds the
//! port and passes the listening socket as fd 3 with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`; redix serves it without binding.
//!
//! One inherited socket is shared by every reactor (each registers its own
//! `dup` of it in its own epoll). The alternative, one `SO_REUSEPORT`
//! socket per reactor, cannot be expressed in a socket unit: systemd binds
//! each `ListenStream=` once, so it would pass a single socket anyway. A
//! shared listener wakes every idle reactor for a new connection (at most
//! `workers` wake-ups, the losers see `EAGAIN`); at a few reactors per
//! process that costs less than it would to drop activation. Several
//! processes on one port (`redix@.service`) keep binding with
//! `SO_REUSEPORT` themselves.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first fd systemd passes.
const LISTEN_FDS_START: RawFd = 3;
/// More than this many passed fds is not a socket unit of ours.
const MAX_FDS: usize = 64;

/// The listening TCP socket systemd passed to this process, if any. The
/// variables are removed (children must not take them for theirs), and
/// passed fds that are not a listening TCP socket are closed.
pub fn inherited() -> Result<Option<TcpListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        log::warn!("LISTEN_PID={pid} is not this process: ignoring LISTEN_FDS");
        return Ok(None);
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if n > MAX_FDS {
        return Err(format!(
            "LISTEN_FDS={n}: more sockets than a redix socket unit passes"
        ));
    }
    let names: Vec<&str> = names.split(':').collect();
    let mut chosen = None;
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        let name = names.get(i).copied().unwrap_or("");
        if chosen.is_none() && is_listening_tcp(fd) {
            log::info!("socket activation: serving inherited fd {fd} (name {name:?})");
            // SAFETY: systemd passed this fd to us alone (LISTEN_PID is
            // this process); from here the listener owns and closes it.
            chosen = Some(unsafe { TcpListener::from_raw_fd(fd) });
            set_cloexec(fd);
        } else {
            log::warn!("socket activation: fd {fd} (name {name:?}) is not a listening TCP socket redix serves; closing it");
            // SAFETY: as above; nothing else refers to this fd.
            unsafe { libc::close(fd) };
        }
    }
    match chosen {
        Some(l) => Ok(Some(l)),
        None => Err(format!(
            "LISTEN_FDS={n}: none of the passed fds is a listening TCP socket"
        )),
    }
}

/// A socket of type SOCK_STREAM, in the IP families, accepting.
fn is_listening_tcp(fd: RawFd) -> bool {
    let int_opt = |level, name| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    let stream = int_opt(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
    let family = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ip = matches!(family, Some(libc::AF_INET) | Some(libc::AF_INET6));
    let accepting = int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1);
    stream && ip && accepting
}

/// Passed fds come without close-on-exec; redix execs nothing, but an fd
/// of ours must not leak into a child should one ever be started.
fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Every reactor's handle on the inherited listener: non-blocking dups.
pub fn share(listener: TcpListener, n: usize) -> Result<Vec<mio::net::TcpListener>, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("inherited listener: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        let dup = listener
            .try_clone()
            .map_err(|e| format!("inherited listener: dup: {e}"))?;
        out.push(mio::net::TcpListener::from_std(dup));
    }
    out.push(mio::net::TcpListener::from_std(listener));
    Ok(out)
}
