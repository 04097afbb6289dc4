//! `redix`: parse configuration, start the reactors, exit when drained.
//! `redix publish CHANNEL DATA` publishes one event through Redis instead;
//! `redix finnhub-sim` runs the market simulator (no configuration read);
//! `redix doctor` checks the machine's limits against the configuration.
//! Exit codes: 0 after a drained shutdown (or a done publish, or a
//! simulator stopped by a signal), 1 on a start-up, runtime or publish
//! failure, 2 on a configuration error.

use clap::Parser;
use redix::config::{Cli, Config, Subcommand};

fn main() {
    let cli = Cli::parse();
    redix::logging::init();
    if let Some(Subcommand::FinnhubSim(args)) = &cli.command {
        if let Err(e) = redix::market::sim::run_until_signal(args.sim_config()) {
            eprintln!("redix finnhub-sim: {e}");
            std::process::exit(1);
        }
        return;
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redix: {e}");
            std::process::exit(2);
        }
    };
    redix::logging::apply(&config.log_level);
    if let Some(Subcommand::Doctor { connections }) = &cli.command {
        std::process::exit(redix::doctor::run(&config, *connections));
    }
    if let Some(Subcommand::Publish { channel, data, id }) = &cli.command {
        match redix::bridge::command::publish_cli(&config, channel, data, id.as_deref()) {
            Ok(answer) => println!("{answer}"),
            Err((code, e)) => {
                eprintln!("redix publish: {e}");
                std::process::exit(code);
            }
        }
        return;
    }
    if let Err(e) = redix::server::run(config, move || Config::load(&cli)) {
        log::error!("{e}");
        std::process::exit(1);
    }
}
