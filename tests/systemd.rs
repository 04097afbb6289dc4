//! redix under systemd's protocols, with real sockets: the notify socket
//! (READY, WATCHDOG while every reactor turns and not while one is wedged,
//! STOPPING at SIGTERM, in that order) and socket activation (an inherited
//! listening fd served without binding).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Datagrams received on a notify socket, with when they came.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen_notify(dir: &std::path::Path) -> (std::path::PathBuf, Seen) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    let seen: Seen = Arc::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            for line in text.lines() {
                if let Ok(mut v) = out.lock() {
                    v.push((Instant::now(), line.to_string()));
                }
            }
        }
    });
    (path, seen)
}

fn states(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect()
}

#[test]
fn notify_says_ready_pings_while_reactors_turn_and_stopping_last() {
    let dir = tempdir("notify");
    let (path, seen) = listen_notify(&dir);
    let notify = path.to_string_lossy().to_string();
    let mut server = Server::start_with_env(
        &["--workers", "1", "--set", "debug.wedge=true"],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")],
    );
    wait_until("READY and pings", || {
        states(&seen).iter().filter(|s| *s == "WATCHDOG=1").count() >= 3
    });
    let first = states(&seen);
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1"),
        "{first:?}"
    );
    // Wedge the only reactor: the pings stop (after the stuck time) and
    // come back when it turns again.
    let mut wedge = TcpStream::connect(server.addr).expect("connect");
    wedge
        .write_all(b"POST /debug/wedge?ms=8000 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .expect("ask for the wedge");
    wait_until("the ping withheld", || {
        server.logs().contains("withholding the watchdog ping")
    });
    let mut answer = [0u8; 64];
    let n = wedge.read(&mut answer).unwrap_or(0);
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "the wedge ends");
    let resumed_from = seen.lock().unwrap().len();
    wait_until("pings again", || {
        states(&seen)[resumed_from..]
            .iter()
            .any(|s| s == "WATCHDOG=1")
    });
    let pings: Vec<Instant> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let usual = gaps.iter().min().copied().unwrap_or_default();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    println!("watchdog pings every {usual:?}; the wedge made a gap of {longest:?}");
    assert!(longest > usual * 4, "a gap while wedged: {gaps:?}");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let all = states(&seen);
    let stopping = all.iter().position(|s| s == "STOPPING=1");
    assert!(stopping.is_some(), "{all:?}");
    assert!(
        all[stopping.unwrap_or(0) + 1..]
            .iter()
            .all(|s| s != "READY=1"),
        "nothing says READY after STOPPING: {all:?}"
    );
}

#[test]
fn an_inherited_listening_socket_is_served_without_binding() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    // `sh` sets LISTEN_PID to its own pid, which `exec` hands to redix.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=redix exec "$0" --listen 127.0.0.1:1 --workers 2"#,
        env!("CARGO_BIN_EXE_redix"),
    ])
    .env_remove("LISTEN_PID")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; fd 3 is where systemd puts the
    // first socket, without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it then.
            let rc = match fd == 3 {
                true => libc::fcntl(3, libc::F_SETFD, 0),
                false => libc::dup2(fd, 3),
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn redix");
    let mut child = Guard(child);
    drop(listener);
    // Port 1 was never bound (it would need root and fail): the
    // inherited socket serves.
    wait_until("an answer on the inherited socket", || {
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("redix exited ({status}): {err}");
        }
        let Ok(mut s) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    });
    let mut head = [0u8; 4096];
    let n = child
        .0
        .stdout
        .as_mut()
        .map(|o| o.read(&mut head).unwrap_or(0))
        .unwrap_or(0);
    let said = String::from_utf8_lossy(&head[..n]);
    assert!(
        said.contains(&format!("redix listening on {addr}")),
        "{said}"
    );
    child.0.kill().ok();
}

/// Kills the child when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redix-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn doctor_names_the_fd_hard_limit_and_what_it_caps() {
    let hard = {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        lim.rlim_max
    };
    let run = |n: u64| {
        Command::new(env!("CARGO_BIN_EXE_redix"))
            .args(["doctor", "--connections", &n.to_string()])
            .output()
            .expect("run redix doctor")
    };
    let over = run(hard * 10);
    let text = String::from_utf8_lossy(&over.stdout);
    assert_eq!(over.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("hard {hard}")), "{text}");
    let cap = hard - 128;
    assert!(
        text.contains(&format!("at most {cap} connections")),
        "{text}"
    );
    assert!(text.contains("FAIL open files"), "{text}");
    let under = run(100);
    let text = String::from_utf8_lossy(&under.stdout);
    assert_eq!(under.status.code(), Some(0), "{text}");
    assert!(text.contains("nothing here caps 100 connections"), "{text}");
}
