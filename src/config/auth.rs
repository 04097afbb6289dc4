//! The `[auth]` section: API keys for publishing and the admin endpoints,
//! and who may subscribe (open, or with a subscription token), the token
//! secrets, the per-subject connection cap and the `Origin`s streams may
//! come from.

use serde::{Deserialize, Serialize};

/// Connections (SSE streams and WebSockets together) one token subject
/// may hold at once.
pub const DEFAULT_MAX_CONNS_PER_SUBJECT: u32 = 10;
/// Clock skew forgiven on a token's `exp` and `nbf`: the minting server's
/// clock and this one's may differ by a few seconds, and a token minted
/// with `nbf = now` must not be refused by a node a moment behind.
pub const DEFAULT_TOKEN_LEEWAY_MS: u64 = 5_000;
/// The shortest token secret: HS256 is only as strong as its key, and 32
/// bytes is the hash's own size (RFC 7518 §3.2).
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

/// Who may open an SSE stream or a WebSocket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeMode {
    /// Anyone (the limits per IP still hold).
    #[default]
    Open,
    /// Only with a subscription token signed with one of
    /// `auth.token_secrets`, and only to the channels it lists.
    Token,
}

/// API keys (with none configured, publish and admin endpoints accept
/// loopback clients only), and subscription tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Keys with every scope.
    pub keys: Vec<String>,
    /// Keys that may only publish.
    pub publish_keys: Vec<String>,
    /// Keys that may only read the admin/debug endpoints.
    pub admin_keys: Vec<String>,
    /// `open` (the default) or `token`: channel streams need a token.
    pub subscribe: SubscribeMode,
    /// HS256 secrets tokens may be signed with; the first signs new
    /// tokens (by whoever mints them), the others still verify, so a
    /// secret can rotate without logging anyone out. Each at least
    /// [`MIN_TOKEN_SECRET_BYTES`]; never logged.
    pub token_secrets: Vec<String>,
    /// See [`DEFAULT_TOKEN_LEEWAY_MS`].
    pub token_leeway_ms: u64,
    /// See [`DEFAULT_MAX_CONNS_PER_SUBJECT`]; 0 turns the cap off.
    pub max_conns_per_subject: u32,
    /// `Origin`s that may open streams (SSE, job streams) and WebSockets;
    /// empty allows any. A request without `Origin` (not a browser, or a
    /// same-origin `EventSource`, which sends none) always passes.
    pub allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: Vec::new(),
            publish_keys: Vec::new(),
            admin_keys: Vec::new(),
            subscribe: SubscribeMode::Open,
            token_secrets: Vec::new(),
            token_leeway_ms: DEFAULT_TOKEN_LEEWAY_MS,
            max_conns_per_subject: DEFAULT_MAX_CONNS_PER_SUBJECT,
            allowed_origins: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// The token settings that must hold together: `token` mode needs a
    /// secret, every secret is long enough, every origin is one a browser
    /// could send. The messages name the key, never a secret.
    pub(super) fn check_tokens(&self) -> Result<(), String> {
        if self.subscribe == SubscribeMode::Token && self.token_secrets.is_empty() {
            return Err("auth.subscribe = \"token\" needs at least one auth.token_secrets".into());
        }
        if let Some(i) = self
            .token_secrets
            .iter()
            .position(|s| s.len() < MIN_TOKEN_SECRET_BYTES)
        {
            return Err(format!(
                "auth.token_secrets[{i}] is shorter than {MIN_TOKEN_SECRET_BYTES} bytes"
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
                return Err(format!(
                    "auth.allowed_origins[{i}] = {origin:?} is not an origin: scheme://host[:port], no path or trailing slash"
                ));
            }
        }
        Ok(())
    }
}
