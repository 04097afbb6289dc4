//! Where the Redis master is now: one shared answer every thread that
//! talks to Redis reads when it (re)connects.
//!
//! With `redis.url` alone the master never moves. With `redis.sentinels`
//! the Sentinel watcher ([`super::sentinel`]) sets it from
//! `SENTINEL get-master-addr-by-name` and each `+switch-master`, and bumps
//! a generation. Threads remember the generation they connected under: a
//! change means their connection may point at a demoted master (which
//! answers writes with `READONLY` and, worse, would keep a pub/sub
//! connection alive and silent), so they drop it and connect again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Endpoint;
use crate::config::RedisConfig;

/// The current master, shared by the bridge, the job engine and the
/// market lease.
#[derive(Debug)]
pub struct Master {
    /// User, password and database for the master (from `redis.url`);
    /// with sentinels its host and port are replaced by theirs.
    template: Endpoint,
    /// `None` until a sentinel has named the master.
    current: Mutex<Option<(String, u16)>>,
    generation: AtomicU64,
    /// Sentinels to ask (empty: `redis.url` is the master).
    pub sentinels: Vec<(String, u16)>,
    pub name: String,
    /// Times the master moved (after the first answer).
    pub switches: AtomicU64,
    /// Connections the Sentinel watcher holds open (for `/debug/fds`).
    pub sentinel_fds: AtomicU64,
    /// Redis Cluster: the seed nodes (empty otherwise), where the command
    /// connection and the sharded pub/sub thread first read the slot map.
    pub seeds: Vec<Endpoint>,
}

impl Master {
    /// From the configuration: the URL's endpoint, or (with sentinels) an
    /// unknown master until the watcher hears from one.
    pub fn from_config(config: &RedisConfig) -> Result<Master, String> {
        let seeds = config
            .cluster
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let url = seeds
            .first()
            .map_or(config.url.as_str(), |_| &config.cluster[0]);
        let template = match url.is_empty() {
            true => Endpoint {
                host: String::new(),
                port: 0,
                username: None,
                password: None,
                db: 0,
            },
            false => Endpoint::parse(url)?,
        };
        let sentinels = config
            .sentinels
            .iter()
            .map(|s| super::sentinel::parse_addr(s))
            .collect::<Result<Vec<_>, _>>()?;
        let current = match sentinels.is_empty() {
            true => Some((template.host.clone(), template.port)),
            false => None,
        };
        Ok(Master {
            template,
            current: Mutex::new(current),
            generation: AtomicU64::new(0),
            sentinels,
            name: config.master_name.clone(),
            switches: AtomicU64::new(0),
            sentinel_fds: AtomicU64::new(0),
            seeds,
        })
    }

    /// The master to connect to now; `Err` while no sentinel named one.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let current = self.lock().clone();
        let (host, port) = current
            .ok_or_else(|| format!("no sentinel has named the master {:?} yet", self.name))?;
        Ok(Endpoint {
            host,
            port,
            ..self.template.clone()
        })
    }

    /// The master's port, when known (the fd census tells Redis sockets
    /// by it).
    pub fn port(&self) -> Option<u16> {
        self.lock().as_ref().map(|(_, port)| *port)
    }

    /// Bumped each time the master moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sentinel names `host:port` as the master; true when that moved it.
    pub fn set(&self, host: &str, port: u16) -> bool {
        let mut current = self.lock();
        if current
            .as_ref()
            .is_some_and(|(h, p)| h == host && *p == port)
        {
            return false;
        }
        match current.replace((host.to_string(), port)) {
            Some((old_host, old_port)) => {
                self.switches.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "Redis master {:?} moved from {old_host}:{old_port} to {host}:{port}; reconnecting",
                    self.name
                );
            }
            None => log::info!("Redis master {:?} is {host}:{port}", self.name),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, u16)>> {
        // The guarded value is a plain pair: a panic elsewhere cannot
        // leave it half-written.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_a_fixed_master() {
        let config = RedisConfig {
            url: "redis://:pw@10.0.0.1:6380/2".into(),
            ..RedisConfig::default()
        };
        let m = Master::from_config(&config).unwrap();
        let e = m.endpoint().unwrap();
        assert_eq!((e.host.as_str(), e.port, e.db), ("10.0.0.1", 6380, 2));
        assert_eq!(m.generation(), 0);
    }

    #[test]
    fn sentinels_name_the_master_and_moves_bump_the_generation() {
        let config = RedisConfig {
            url: "redis://:pw@ignored:1/3".into(),
            sentinels: vec!["127.0.0.1:26379".into()],
            ..RedisConfig::default()
        };
        let m = Master::from_config(&config).unwrap();
        assert!(m.endpoint().is_err());
        assert!(m.set("10.0.0.2", 7000));
        assert!(!m.set("10.0.0.2", 7000));
        let e = m.endpoint().unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.db, e.password.as_deref()),
            ("10.0.0.2", 7000, 3, Some("pw"))
        );
        assert!(m.set("10.0.0.3", 7001));
        assert_eq!((m.generation(), m.switches.load(Ordering::Relaxed)), (2, 1));
    }
}
