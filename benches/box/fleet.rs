//! The generator processes (this bench binary again, with `--gen`): started with their
//! share of the connections and source addresses, asked over stdin, answering one JSON line
//! on stdout per command (see `gen`). `Drop` says `quit` and waits, so their sockets close
//! with RST before the servers stop.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;

use crate::support::proc::rss_kib;
use crate::support::spawn::spawn_tied;

pub struct Spec {
    pub target: SocketAddr,
    pub conns: usize,
    pub per_gen: usize,
    pub per_source: usize,
    /// index of the fleet's first connection (fresh source addresses for every fleet)
    pub first: usize,
    pub channel: String,
    pub ws: bool,
    pub concurrency: usize,
    pub connect_timeout: u64,
}

struct Gen {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<Value>,
}

pub struct Fleet {
    gens: Vec<Gen>,
}

impl Fleet {
    /// ceil(conns / per_gen) processes, the connections split evenly.
    pub fn start(s: &Spec) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let n = s.conns.div_ceil(s.per_gen.max(1)).max(1);
        let mut gens = Vec::with_capacity(n);
        let mut first = s.first;
        for i in 0..n {
            let conns = s.conns / n + usize::from(i < s.conns % n);
            let mut cmd = Command::new(&exe);
            cmd.args(["--gen", "--target", &s.target.to_string()])
                .args(["--conns", &conns.to_string(), "--first", &first.to_string()])
                .args(["--per-source", &s.per_source.to_string()])
                .args(["--channel", &s.channel])
                .args(["--concurrency", &s.concurrency.to_string()])
                .args(["--transport", if s.ws { "ws" } else { "sse" }])
                .args(["--connect-timeout", &s.connect_timeout.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // Leave room for the stalled connections a run may add later.
            first += conns + conns / 10 + 1;
            let mut child = spawn_tied(&mut cmd, &exe, "")?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let (tx, out) = crossbeam_channel::unbounded();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(v);
                    }
                }
            });
            gens.push(Gen { child, stdin, out });
        }
        Ok(Fleet { gens })
    }

    pub fn len(&self) -> usize {
        self.gens.len()
    }

    /// The next line of every generator, each within `timeout`.
    pub fn collect(&self, timeout: Duration) -> Result<Vec<Value>, String> {
        let one = |(i, g): (usize, &Gen)| {
            g.out
                .recv_timeout(timeout)
                .map_err(|_| format!("generator {i} did not answer within {timeout:?}"))
        };
        self.gens.iter().enumerate().map(one).collect()
    }

    /// Sends `cmd` to every generator and collects their answers.
    pub fn ask(&mut self, cmd: &str, timeout: Duration) -> Result<Vec<Value>, String> {
        self.send(cmd)?;
        self.collect(timeout)
    }

    pub fn send(&mut self, cmd: &str) -> Result<(), String> {
        for g in &mut self.gens {
            writeln!(g.stdin, "{cmd}").map_err(|e| format!("generator stdin: {e}"))?;
        }
        Ok(())
    }

    /// Sends a different command to each generator (`cmds[i]` to generator i).
    pub fn send_each(&mut self, cmds: &[String]) -> Result<(), String> {
        for (g, c) in self.gens.iter_mut().zip(cmds) {
            writeln!(g.stdin, "{c}").map_err(|e| format!("generator stdin: {e}"))?;
        }
        Ok(())
    }

    /// VmRSS of the generators summed, KiB.
    pub fn rss_kib(&self) -> u64 {
        let pids = self.gens.iter().map(|g| g.child.id() as i32);
        pids.map(|p| rss_kib(p).unwrap_or(0)).sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.send("quit");
        for g in &mut self.gens {
            let _ = g.child.wait();
        }
    }
}

/// The sum of a numeric field over the generators' answers.
pub fn sum(vals: &[Value], key: &str) -> u64 {
    vals.iter().map(|v| v[key].as_u64().unwrap_or(0)).sum()
}
