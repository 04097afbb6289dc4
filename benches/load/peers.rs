//! The peers redix is measured beside or with: nchan (nginx + the nchan module, one worker,
//! ours or one already running) and the redis-server behind redix nodes in Redis mode.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, NchanStart};
use crate::server::{Kind, Server};
use crate::support::http::parse_response;
use crate::support::proc::{children_of, cmdline, listening_pids};
use crate::support::spawn::{interrupted, spawn_tied, tail_file};
use crate::Res;

impl Server {
    fn nchan_conf_template(a: &Args) -> Res<PathBuf> {
        if let Some(p) = &a.nchan_conf {
            return Ok(p.clone());
        }
        for c in [
            "../shared/peers/nchan.conf",
            "shared/peers/nchan.conf",
            "/work/shared/peers/nchan.conf",
        ] {
            if Path::new(c).exists() {
                return Ok(PathBuf::from(c));
            }
        }
        Err("nchan.conf template not found; pass --nchan-conf".into())
    }
    pub fn start_nchan(a: &Args) -> Res<Server> {
        let addr = a.nchan_addr;
        let up = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok();
        if up && a.nchan_start != NchanStart::Always {
            return Self::running_nchan(addr);
        }
        if up {
            return Err(format!("--nchan-start always but {addr} is already taken"));
        }
        if a.nchan_start == NchanStart::Never {
            return Err(format!("nothing listens on {addr} and --nchan-start never"));
        }
        let dir = Self::nchan_prefix(a)?;
        let errf = fs::File::create(dir.join("nginx.stderr")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&a.nginx_bin);
        cmd.arg("-p")
            .arg(&dir)
            .args(["-e", "error.log", "-c", "nginx.conf", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        let hint = " (apt-get install -y nginx-light libnginx-mod-nchan)";
        let child = spawn_tied(&mut cmd, &a.nginx_bin, hint)?;
        let master = child.id() as i32;
        let srv = Server {
            kind: Kind::Nchan,
            addr: addr.into(),
            pid: master,
            child: Some(child),
            extra_pids: vec![],
            dir: Some(dir.clone()),
            log: Some(dir.join("error.log")),
            note: String::new(),
            stopped: false,
        };
        srv.wait_nchan_worker(addr, master, &dir)
    }

    /// The nchan already listening on `addr`; it must have exactly one worker to measure.
    fn running_nchan(addr: SocketAddrV4) -> Res<Server> {
        let pids = listening_pids(addr);
        let workers: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| cmdline(p).contains("worker process"))
            .collect();
        if workers.len() != 1 {
            return Err(format!(
                "{addr} is up but I need exactly one nginx worker to measure; found processes {pids:?} \
                 (workers {workers:?}); run nchan with worker_processes 1 or use --nchan-start always on another --nchan-addr"
            ));
        }
        Ok(Server {
            kind: Kind::Nchan,
            addr: addr.into(),
            pid: workers[0],
            child: None,
            extra_pids: vec![],
            dir: None,
            log: None,
            note: format!(
                "using the nchan already on {addr} (worker pid {}; not started or stopped by me)",
                workers[0]
            ),
            stopped: false,
        })
    }

    /// A temporary nginx prefix holding nchan.conf (1 worker, 19,000 files) for `addr`.
    fn nchan_prefix(a: &Args) -> Res<PathBuf> {
        let addr = a.nchan_addr;
        let tpl = Self::nchan_conf_template(a)?;
        let text = fs::read_to_string(&tpl).map_err(|e| format!("read {}: {e}", tpl.display()))?;
        let conf = text
            .replace("@WORKERS@", "1")
            .replace("@NOFILE@", "19000")
            .replace("127.0.0.1:8801", &addr.to_string());
        let dir = std::env::temp_dir().join(format!("redix-load-nchan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tmp")).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        std::os::unix::fs::symlink("/usr/lib/nginx/modules", dir.join("modules"))
            .map_err(|e| format!("symlink modules: {e}"))?;
        fs::write(dir.join("nginx.conf"), conf).map_err(|e| format!("write nginx.conf: {e}"))?;
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        Ok(dir)
    }

    /// Waits (15 s) for the nginx master to have one worker and `addr` to accept.
    fn wait_nchan_worker(mut self, addr: SocketAddrV4, master: i32, dir: &Path) -> Res<Server> {
        let log = dir.join("error.log");
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            self.check_alive().map_err(|e| {
                format!(
                    "{e}\nnginx stderr: {}",
                    tail_file(&dir.join("nginx.stderr"), 10)
                )
            })?;
            let workers = nginx_worker_of(master);
            if workers.len() == 1
                && TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
            {
                self.pid = workers[0];
                self.extra_pids = workers.clone();
                self.note = format!(
                    "started nginx+nchan master {master}, worker {} in {}",
                    workers[0],
                    dir.display()
                );
                return Ok(self);
            }
            if Instant::now() > until || interrupted() {
                return Err(format!(
                    "nginx did not come up on {addr} within 15 s; error.log:\n{}",
                    tail_file(&log, 10)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Our own redis-server for Redis mode: a free loopback port (bind :0, read it, close;
    /// another port if the server does not come up on it), no persistence, ready when it
    /// answers PING.
    pub fn start_redis(a: &Args) -> Res<Server> {
        let dir = std::env::temp_dir().join(format!("redix-load-redis-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let log = dir.join("redis-server.log");
        let mut why = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("pick a free port: {e}"))?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let out =
                fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&a.redis_server_bin);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let hint = " (apt-get install -y redis-server)";
            let child = spawn_tied(&mut cmd, &a.redis_server_bin, hint)?;
            let pid = child.id() as i32;
            let mut srv = Server {
                kind: Kind::Redis,
                addr,
                pid,
                child: Some(child),
                extra_pids: vec![],
                dir: None,
                log: Some(log.clone()),
                note: format!(
                    "started {} (pid {pid}) on {addr}",
                    a.redis_server_bin.display()
                ),
                stopped: false,
            };
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if redis_ping(addr) {
                    srv.dir = Some(dir);
                    return Ok(srv);
                }
                if let Err(e) = srv.check_alive() {
                    why = e;
                    break;
                }
                if Instant::now() > until || interrupted() {
                    why = format!("no PONG from {addr} within 10 s");
                    srv.stop();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(format!(
            "redis-server did not come up (5 ports tried): {why}"
        ))
    }
}

fn nginx_worker_of(master: i32) -> Vec<i32> {
    children_of(master)
        .into_iter()
        .filter(|&p| cmdline(p).contains("worker process"))
        .collect()
}

/// Does a Redis server on `addr` answer PING (raw RESP) within half a second?
fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Status of a `GET path` (one request, `Connection: close`, at most 2 s).
pub fn http_status(addr: SocketAddr, path: &str) -> Res<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// Status and body (as text, as framed on the wire) of a `GET path` (one request,
/// `Connection: close`, at most 2 s per read).
pub fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("GET {path}: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, n == 0) {
            Some(r) => {
                return r.map(|r| {
                    let body = String::from_utf8_lossy(&buf[r.body..r.len]).into_owned();
                    (r.status, body)
                })
            }
            None if n == 0 => return Err(format!("GET {path}: closed before a response")),
            None => {}
        }
    }
}
