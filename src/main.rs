//! `redix`: parse configuration, start the reactors, exit when drained.
//! Exit codes: 0 after a drained shutdown, 1 on a start-up or runtime
//! failure, 2 on a configuration error.

use clap::Parser;
use redix::config::{Cli, Config};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("REDIX_LOG", "info")).init();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redix: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = redix::server::run(config, move || Config::load(&cli)) {
        log::error!("{e}");
        std::process::exit(1);
    }
}
