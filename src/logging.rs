//! Logging: `env_logger` on stderr. The level comes from `REDIX_LOG` when
//! set (a level, or `env_logger` filters such as `redix=debug,info`),
//! else from `log_level` in the configuration, which SIGHUP can change
//! while running: the logger is built to pass everything and the level is
//! the global maximum the `log` macros check first (so a disabled level
//! costs one comparison). Per-module filters from `REDIX_LOG` are fixed
//! until restart.

use std::sync::atomic::{AtomicBool, Ordering};

use log::LevelFilter;

/// The level can change at runtime (no module filters in force).
static ADJUSTABLE: AtomicBool = AtomicBool::new(false);

/// Starts the logger, before the configuration is read (its warnings must
/// show): `REDIX_LOG` if set, else `info` until [`apply`] sets the
/// configured level.
pub fn init() {
    let from_env = std::env::var("REDIX_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let spec = from_env.clone().unwrap_or_else(|| "info".to_string());
    let mut builder = env_logger::Builder::new();
    match spec.trim().parse::<LevelFilter>() {
        Ok(level) => {
            builder.filter_level(LevelFilter::Trace).init();
            log::set_max_level(level);
            ADJUSTABLE.store(from_env.is_none(), Ordering::Relaxed);
        }
        Err(_) => builder.parse_filters(&spec).init(),
    }
}

/// The configuration's `log_level` applies (at start, and at SIGHUP),
/// unless `REDIX_LOG` set the logging (then it stays; says so).
pub fn apply(level: &str) {
    let Ok(new) = level.trim().parse::<LevelFilter>() else {
        return;
    };
    if !ADJUSTABLE.load(Ordering::Relaxed) {
        log::debug!("log_level {new}: not applied, REDIX_LOG set the logging");
        return;
    }
    if log::max_level() != new {
        log::set_max_level(new);
        log::warn!("log level now {new}");
    }
}

/// A `log_level` value redix accepts.
pub fn valid_level(level: &str) -> bool {
    level.trim().parse::<LevelFilter>().is_ok()
}
