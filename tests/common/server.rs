//! The process harness: the real `redix` binary on port 0, what it prints,
//! signals, exit, and the one way tests wait for server state
//! ([`wait_until`] with [`DEADLINE`]).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{get, metric};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Output kept per stream; a chatty server cannot fill the test's memory.
const KEEP_BYTES: usize = 1 << 20;

/// A running redix process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything redix printed on stdout (the `listening` line, answers).
    pub stdout: Arc<Mutex<String>>,
    /// Its log (stderr).
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts redix with two reactors on a free port plus `args`, and waits
    /// for its `redix listening on` line.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(args, env, None)
    }

    /// [`Server::start`] under an open-file limit of `nofile` (soft and
    /// hard), set in the child before it runs.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Server {
        Self::spawn(args, &[], Some(nofile))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        // Two reactors unless the test says otherwise.
        let workers: &[&str] = match args.contains(&"--workers") {
            true => &[],
            false => &["--workers", "2"],
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_redix"));
        child
            .args(["--listen", "127.0.0.1:0"])
            .args(workers)
            .args(args)
            .env("REDIX_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit(2) is async-signal-safe; it runs in the
            // forked child before exec and touches nothing else.
            unsafe {
                child.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let mut child = child.spawn().expect("spawn redix");
        let stderr = Arc::new(Mutex::new(String::new()));
        keep_lines(child.stderr.take().expect("stderr"), stderr.clone(), |_| {});
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        keep_lines(child.stdout.take().expect("stdout"), stdout.clone(), {
            move |line| {
                if let Some(addr) = line.strip_prefix("redix listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("redix did not start: {}", stderr.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time the server process used so far (user + system), ms.
    pub fn cpu_ms(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        ticks * 1000 / hz
    }

    /// Resident memory of the server process (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit, failing the test after the deadline.
    /// Blocks in `poll(2)` on a pidfd, which turns readable at exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        // SAFETY: pidfd_open on our own child's pid; the fd is closed below.
        let pidfd =
            unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid() as libc::pid_t, 0) } as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then closing the fd we opened.
        let ready = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as i32) };
        unsafe { libc::close(pidfd) };
        assert_eq!(ready, 1, "redix did not exit within {within:?}");
        self.child.wait().expect("wait")
    }

    /// The value of one metric line (name with labels, as printed).
    #[track_caller]
    pub fn metric(&self, name: &str) -> f64 {
        metric(self.addr, name)
    }

    /// What redix has logged so far (stderr).
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What redix has printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test shows what the server said.
            eprintln!("--- redix {} stderr ---\n{}", self.addr, self.logs());
        }
    }
}

/// Reads `from` line by line on a thread, appending each line to `into`
/// (up to [`KEEP_BYTES`]) before handing it to `each`: whoever `each`
/// tells about a line finds it already kept.
fn keep_lines(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    mut each: impl FnMut(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            {
                let mut s = into.lock().unwrap();
                if s.len() < KEEP_BYTES {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
            each(&line);
        }
    });
}

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`].
/// The conditions are server state read over HTTP or /proc (metrics, fd
/// counts) with no event to block on, so this re-checks every 10 ms.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `/debug/fds` report once it accounts for every fd. One report can
/// catch a connection another reactor is closing at that moment (counted,
/// its fd already gone), so this asks again until the books balance.
pub fn fds_accounted(server: &Server) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until("/debug/fds to balance", || {
        let (status, body) = get(server.addr, "/debug/fds");
        assert_eq!(status, 200, "{body}");
        last = serde_json::from_str(&body).expect("json");
        last["unaccounted"] == 0
    });
    last
}

/// The `/debug/fds` report once it shows exactly `open` fds, every one
/// accounted for: the baseline a test expects, asserted (a connection still
/// closing from an earlier request may show for a moment, so this asks
/// again until the deadline).
pub fn fds_at(server: &Server, open: usize) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(
        &format!("/debug/fds to show {open} fds, all accounted for"),
        || {
            let (status, body) = get(server.addr, "/debug/fds");
            assert_eq!(status, 200, "{body}");
            last = serde_json::from_str(&body).expect("json");
            last["open"] == open && last["unaccounted"] == 0
        },
    );
    last
}
