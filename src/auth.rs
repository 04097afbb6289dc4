//! API keys, and the local-only fallback when no key is configured.
//!
//! Keys are kept as SHA-256 digests and a presented key is compared by
//! digest, every stored key in turn, each comparison over the fixed 32
//! bytes: how long a check takes says nothing about a key's length or
//! where it differs.

use sha2::{Digest, Sha256};

use crate::config::{Config, Scope};

type KeyDigest = [u8; 32];

fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// Keys per scope, copied out of the configuration at start.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    publish: Vec<KeyDigest>,
    admin: Vec<KeyDigest>,
    any_configured: bool,
}

/// Why a request may not use a scoped endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or unknown credential: 401.
    Unauthenticated,
    /// A known key without the scope, or a client that is not local when
    /// no keys are configured: 403.
    Forbidden,
}

impl Keys {
    pub fn from_config(config: &Config) -> Keys {
        let bytes = |v: Vec<String>| v.iter().map(|k| digest(k.as_bytes())).collect::<Vec<_>>();
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

    /// A number naming the configured key `credential` is (any scope), to
    /// count that key's requests; `None` for no or an unknown credential.
    /// It is the first 8 bytes of the key's SHA-256, so it stays the same
    /// across a reload and the key itself is kept nowhere.
    pub fn identify(&self, credential: Option<&str>) -> Option<u64> {
        if !self.any_configured {
            return None;
        }
        let cred = digest(credential.filter(|c| !c.is_empty())?.as_bytes());
        let known = contains(&self.publish, &cred) | contains(&self.admin, &cred);
        let mut id = [0u8; 8];
        id.copy_from_slice(&cred[..8]);
        known.then_some(u64::from_be_bytes(id))
    }

    /// May a request presenting `credential` use `scope`? Without any key
    /// configured, only a `local` client may (see `api::is_local`).
    pub fn check(&self, scope: Scope, credential: Option<&str>, local: bool) -> Result<(), Denied> {
        if !self.any_configured {
            return match local {
                true => Ok(()),
                false => Err(Denied::Forbidden),
            };
        }
        let Some(cred) = credential.filter(|c| !c.is_empty()) else {
            return Err(Denied::Unauthenticated);
        };
        let cred = digest(cred.as_bytes());
        let (wanted, other) = match scope {
            Scope::Publish => (&self.publish, &self.admin),
            Scope::Admin => (&self.admin, &self.publish),
        };
        if contains(wanted, &cred) {
            Ok(())
        } else if contains(other, &cred) {
            Err(Denied::Forbidden)
        } else {
            Err(Denied::Unauthenticated)
        }
    }
}

/// Compares against every key without stopping early, each comparison
/// over the whole digest.
fn contains(keys: &[KeyDigest], candidate: &KeyDigest) -> bool {
    keys.iter()
        .fold(false, |found, key| found | ct_eq(key, candidate))
}

fn ct_eq(a: &KeyDigest, b: &KeyDigest) -> bool {
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
    fn without_keys_only_local_clients() {
        let k = keys(&[], &[]);
        assert_eq!(k.check(Scope::Publish, None, true), Ok(()));
        assert_eq!(k.check(Scope::Admin, None, true), Ok(()));
        assert_eq!(
            k.check(Scope::Publish, Some("x"), false),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn only_configured_keys_are_identified_and_each_as_itself() {
        let k = keys(&["root"], &["pub"]);
        let (root, publ) = (k.identify(Some("root")), k.identify(Some("pub")));
        assert!(root.is_some() && publ.is_some() && root != publ);
        assert_eq!(k.identify(Some("root")), root, "stable");
        assert_eq!(
            keys(&["root"], &[]).identify(Some("root")),
            root,
            "across a reload"
        );
        assert_eq!(k.identify(Some("other")), None);
        assert_eq!(k.identify(Some("")), None);
        assert_eq!(k.identify(None), None);
        assert_eq!(keys(&[], &[]).identify(Some("root")), None);
    }

    #[test]
    fn scopes_are_enforced() {
        let k = keys(&["root"], &["pub"]);
        assert_eq!(k.check(Scope::Publish, Some("root"), false), Ok(()));
        assert_eq!(k.check(Scope::Admin, Some("root"), false), Ok(()));
        assert_eq!(k.check(Scope::Publish, Some("pub"), false), Ok(()));
        assert_eq!(
            k.check(Scope::Admin, Some("pub"), false),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            k.check(Scope::Publish, Some("nope"), false),
            Err(Denied::Unauthenticated)
        );
        // With keys configured, being local is no credential.
        assert_eq!(
            k.check(Scope::Publish, None, true),
            Err(Denied::Unauthenticated)
        );
        // An empty credential never matches, even a (refused) empty key.
        assert_eq!(
            k.check(Scope::Publish, Some(""), false),
            Err(Denied::Unauthenticated)
        );
    }
}
