//! API keys: constant-time comparison, and the loopback-only fallback when
//! no key is configured.

use std::net::IpAddr;

use crate::config::{Config, Scope};

/// Keys per scope, copied out of the configuration at start.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    publish: Vec<Vec<u8>>,
    admin: Vec<Vec<u8>>,
    any_configured: bool,
}

/// Why a request may not use a scoped endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or unknown credential: 401.
    Unauthenticated,
    /// A known key without the scope, or a non-loopback client when no keys
    /// are configured: 403.
    Forbidden,
}

impl Keys {
    pub fn from_config(config: &Config) -> Keys {
        let bytes = |v: Vec<String>| v.into_iter().map(String::into_bytes).collect::<Vec<_>>();
        let a = &config.auth;
        Keys {
            publish: bytes(config.keys_for(Scope::Publish)),
            admin: bytes(config.keys_for(Scope::Admin)),
            any_configured: !(a.keys.is_empty()
                && a.publish_keys.is_empty()
                && a.admin_keys.is_empty()),
        }
    }

    pub fn any_configured(&self) -> bool {
        self.any_configured
    }

    /// May a request from `peer` presenting `credential` use `scope`?
    pub fn check(
        &self,
        scope: Scope,
        credential: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), Denied> {
        if !self.any_configured {
            return if peer.is_loopback() || is_mapped_loopback(peer) {
                Ok(())
            } else {
                Err(Denied::Forbidden)
            };
        }
        let Some(cred) = credential else {
            return Err(Denied::Unauthenticated);
        };
        let (wanted, other) = match scope {
            Scope::Publish => (&self.publish, &self.admin),
            Scope::Admin => (&self.admin, &self.publish),
        };
        if contains(wanted, cred.as_bytes()) {
            Ok(())
        } else if contains(other, cred.as_bytes()) {
            Err(Denied::Forbidden)
        } else {
            Err(Denied::Unauthenticated)
        }
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// Compares against every key without stopping early, each comparison in
/// time independent of where the bytes differ.
fn contains(keys: &[Vec<u8>], candidate: &[u8]) -> bool {
    keys.iter()
        .fold(false, |found, key| found | ct_eq(key, candidate))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(all: &[&str], publish: &[&str]) -> Keys {
        let mut c = Config::default();
        c.auth.keys = all.iter().map(|s| s.to_string()).collect();
        c.auth.publish_keys = publish.iter().map(|s| s.to_string()).collect();
        Keys::from_config(&c)
    }

    #[test]
    fn without_keys_only_loopback() {
        let k = keys(&[], &[]);
        assert_eq!(
            k.check(Scope::Publish, None, "127.0.0.1".parse().unwrap()),
            Ok(())
        );
        assert_eq!(k.check(Scope::Admin, None, "::1".parse().unwrap()), Ok(()));
        assert_eq!(
            k.check(Scope::Publish, Some("x"), "10.1.1.1".parse().unwrap()),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn scopes_are_enforced() {
        let k = keys(&["root"], &["pub"]);
        let ip = "10.1.1.1".parse().unwrap();
        assert_eq!(k.check(Scope::Publish, Some("root"), ip), Ok(()));
        assert_eq!(k.check(Scope::Admin, Some("root"), ip), Ok(()));
        assert_eq!(k.check(Scope::Publish, Some("pub"), ip), Ok(()));
        assert_eq!(
            k.check(Scope::Admin, Some("pub"), ip),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            k.check(Scope::Publish, Some("nope"), ip),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            k.check(Scope::Publish, None, "127.0.0.1".parse().unwrap()),
            Err(Denied::Unauthenticated)
        );
    }
}
