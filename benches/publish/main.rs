//! Publish throughput through Redis: one redis-server against a Redis Cluster of 3 masters,
//! in one run, with the same publisher load. See BENCHMARKS.md, "Publish throughput: one
//! redis-server against a 3-shard Redis Cluster".
//!
//! `cargo bench --bench publish -- [--mode both|single|cluster] [--nodes 2] [--conns 8]
//!  [--depth 1] [--channels 64] [--duration 10] [--warmup 2] [--replicas 0] …`
//!
//! For each mode (`run`): its Redis (`redis`: one redis-server, or 3 masters with
//! `--replicas` replicas each joined by `redis-cli --cluster create`), `--nodes` redix nodes
//! on it (`nodes`; `--redis URL` or `redis.cluster = […]`), then `--conns` keep-alive
//! publishers per node, each keeping `--depth` `POST /api/publish` in flight on its own
//! channels (`load`), closed loop. Over the measured window: acknowledged publishes/s,
//! publish latency, CPU of every redis-server, of every node (and its reactor and Redis
//! command threads) and of the bench (`cpu`). After it, every channel's newest stream entry
//! in Redis is checked against the last publish acknowledged on it (`check`). Output: a
//! block per mode, a comparison with the ratio cluster / single, one JSON line per mode
//! (`report`).
//!
//! Exit status: 0 when every mode ran, every publish was answered 2xx and every stream
//! matched; 1 when a check failed; 2 when a mode could not run or the run was interrupted.
//! Load only to 127.0.0.1; every process started gets `PR_SET_PDEATHSIG`.

mod check;
mod cli;
mod cpu;
mod load;
mod nodes;
mod redis;
mod report;
mod run;
#[path = "../support/mod.rs"]
mod support;

use clap::Parser;

use cli::{validate, Args, Mode, ModeSel};
use support::spawn::install_signal_handlers;

fn main() {
    let a = Args::parse();
    install_signal_handlers();
    if let Err(e) = validate(&a) {
        eprintln!("publish bench: {e}");
        std::process::exit(2);
    }
    let modes: &[Mode] = match a.mode {
        ModeSel::Single => &[Mode::Single],
        ModeSel::Cluster => &[Mode::Cluster],
        ModeSel::Both => &[Mode::Single, Mode::Cluster],
    };
    report::preamble(&a);
    let mut results = Vec::new();
    let mut code = 0;
    for &m in modes {
        match run::run_mode(&a, m) {
            Ok(r) => {
                report::print_mode(&a, &r);
                if !report::passed(&r) {
                    code = code.max(1);
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("publish bench [{}]: {e}", m.tag());
                code = 2;
            }
        }
    }
    report::compare(&results);
    for r in &results {
        println!("{}", report::json(&a, r));
    }
    if code != 0 {
        eprintln!("publish bench: exit status {code} (see above)");
    }
    std::process::exit(code);
}
