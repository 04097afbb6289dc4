//! Subscription tokens: HS256 JWTs that let a browser, which must not
//! hold an API key, subscribe to the channels its token lists until the
//! token's `exp`.
//!
//! Claims: `sub` (a string naming who the token is for: the per-subject
//! connection cap counts it), `exp` (seconds since the epoch), `channels`
//! (patterns: an exact channel name, or a prefix ending in `*`, such as
//! `trades:*`; `*` alone is every channel) and optionally `nbf`. Other
//! claims (`iat`, `iss`, `aud`, ...) are ignored.
//!
//! Only HS256 is accepted: the header's `alg` is checked before anything
//! else, so `none` and every other algorithm are refused whatever the
//! signature says. The signature is checked by `jsonwebtoken` (ring's
//! HMAC, compared in constant time) against each configured secret in
//! turn, so a secret can rotate: the old one stays listed until the
//! tokens it signed have expired. The time checks are done here, with the
//! time passed in, so they are tested without a clock.
//!
//! Invariants: a [`Grant`] exists only for a token whose signature and
//! claims were checked; a [`SubjectSlot`] gives its place back when it is
//! dropped, wherever the stream that held it ended.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, SubscribeMode};
use crate::hub::check_channel;
use crate::limits::IpLimiter;

/// Longest token accepted; longer ones are refused before any work.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Channel patterns one token may list.
pub const MAX_TOKEN_CHANNELS: usize = 128;
/// Longest `sub`.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Milliseconds since the Unix epoch: the timebase of `exp` and `nbf`.
/// A clock before 1970 reads as 0 (every token then looks unexpired to
/// it, as to any clock that is wrong; the signature still holds).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who may subscribe: built from `[auth]`, replaced whole on SIGHUP.
pub struct Policy {
    mode: SubscribeMode,
    secrets: Vec<DecodingKey>,
    validation: Validation,
    leeway_ms: u64,
    origins: Vec<String>,
}

impl Policy {
    pub fn from_config(auth: &AuthConfig) -> Policy {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` and `nbf` are checked here with the time passed in;
        // `aud` is not part of a redix token.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Policy {
            mode: auth.subscribe,
            secrets: auth
                .token_secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            validation,
            leeway_ms: auth.token_leeway_ms,
            origins: auth.allowed_origins.clone(),
        }
    }

    /// Channel streams need a token (`auth.subscribe = "token"`).
    pub fn required(&self) -> bool {
        self.mode == SubscribeMode::Token
    }

    pub fn secrets(&self) -> usize {
        self.secrets.len()
    }

    /// Whether a request with this `Origin` header may open a stream: any
    /// while the list is empty, and a request without one always (only
    /// browsers send it, and a same-origin `EventSource` does not).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            Some(o) => self.origins.is_empty() || self.origins.iter().any(|a| a == o),
            None => true,
        }
    }

    /// Checks `token` at `now_ms` (Unix milliseconds): the algorithm, the
    /// signature against each secret, then the claims.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = decode_header(token).map_err(|e| match e.kind() {
            // The header is JSON but no `Header`: its alg is none of
            // those the crate knows (`none` among them), or missing.
            ErrorKind::Json(_) => TokenError::Algorithm(None),
            _ => TokenError::from_kind(e.kind()),
        })?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Algorithm(Some(format!("{:?}", header.alg))));
        }
        let mut claims = None;
        for key in &self.secrets {
            match decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
                Err(e) => return Err(TokenError::from_kind(e.kind())),
            }
        }
        let claims = claims.ok_or(TokenError::Signature)?;
        self.grant(claims, now_ms)
    }

    /// The grant of claims whose signature held, if they are in force.
    fn grant(&self, claims: Claims, now_ms: u64) -> Result<Grant, TokenError> {
        let expires_ms = claims
            .exp
            .saturating_mul(1000)
            .saturating_add(self.leeway_ms);
        if now_ms >= expires_ms {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if nbf.saturating_mul(1000) > now_ms.saturating_add(self.leeway_ms) {
                return Err(TokenError::NotYetValid);
            }
        }
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_BYTES {
            return Err(TokenError::Claims(format!(
                "sub is 1 to {MAX_SUBJECT_BYTES} bytes"
            )));
        }
        if claims.channels.len() > MAX_TOKEN_CHANNELS {
            return Err(TokenError::Claims(format!(
                "at most {MAX_TOKEN_CHANNELS} channel patterns"
            )));
        }
        let patterns = claims
            .channels
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::parse(p).map_err(|m| TokenError::Claims(format!("channels[{i}] {m}")))
            })
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Grant {
            subject: SubjectKey::of(&claims.sub),
            sub: claims.sub.into(),
            patterns,
            exp: claims.exp,
            expires_ms,
            slot: None,
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    channels: Vec<String>,
}

/// One `channels` entry of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Box<str>),
    /// `prefix*`; an empty prefix is every channel.
    Prefix(Box<str>),
}

impl Pattern {
    fn parse(raw: &str) -> Result<Pattern, String> {
        let bad =
            |why: String| format!("{raw:?}: {why}; give a channel name or a prefix ending in *");
        match raw.strip_suffix('*') {
            Some("") => Ok(Pattern::Prefix("".into())),
            Some(prefix) => check_channel(prefix)
                .map(|()| Pattern::Prefix(prefix.into()))
                .map_err(bad),
            None => check_channel(raw)
                .map(|()| Pattern::Exact(raw.into()))
                .map_err(bad),
        }
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(name) => **name == *channel,
            Pattern::Prefix(prefix) => channel.starts_with(&**prefix),
        }
    }
}

/// What a checked token allows, until when, and (once taken) its place
/// under the subject's connection cap.
#[derive(Debug)]
pub struct Grant {
    /// The token's `sub`.
    pub sub: Arc<str>,
    pub subject: SubjectKey,
    patterns: Box<[Pattern]>,
    /// The token's `exp` (seconds), as the client knows it.
    pub exp: u64,
    /// When the grant ends: `exp` plus the leeway, Unix milliseconds.
    pub expires_ms: u64,
    slot: Option<SubjectSlot>,
}

impl Grant {
    /// Whether the token lets its holder subscribe to `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }

    /// Holds `slot` for as long as the grant lives.
    pub fn hold(&mut self, slot: SubjectSlot) {
        self.slot = Some(slot);
    }

    /// Replaces this grant with `newer`, a later token of the same
    /// subject (a WebSocket refreshing its token), keeping the place
    /// under the cap; refused for another subject.
    pub fn renew(&mut self, mut newer: Grant) -> Result<(), TokenError> {
        if newer.subject != self.subject || newer.sub != self.sub {
            return Err(TokenError::OtherSubject);
        }
        newer.slot = self.slot.take();
        *self = newer;
        Ok(())
    }
}

/// A token subject as the connection cap counts it: the first 8 bytes of
/// the SHA-256 of `sub`, so the map holds no client-chosen strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubjectKey(u64);

impl SubjectKey {
    pub fn of(sub: &str) -> SubjectKey {
        let d = Sha256::digest(sub.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        SubjectKey(u64::from_be_bytes(id))
    }
}

/// Connections per token subject (`auth.max_conns_per_subject`).
pub type SubjectLimiter = IpLimiter<SubjectKey>;

/// One connection's place under its subject's cap, given back on drop.
pub struct SubjectSlot {
    limiter: Arc<SubjectLimiter>,
    key: SubjectKey,
}

impl SubjectSlot {
    /// Takes a place for `key`; `None` when the subject holds the cap.
    pub fn take(limiter: &Arc<SubjectLimiter>, key: SubjectKey) -> Option<SubjectSlot> {
        limiter.acquire(key).then(|| SubjectSlot {
            limiter: limiter.clone(),
            key,
        })
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        self.limiter.release(self.key);
    }
}

impl fmt::Debug for SubjectSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectSlot({:?})", self.key)
    }
}

/// Why a token was refused; the message tells the client what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    Malformed(String),
    /// The header's `alg` is not HS256 (`None`: not one redix knows,
    /// which includes `none`).
    Algorithm(Option<String>),
    /// No configured secret signed it.
    Signature,
    Expired,
    NotYetValid,
    /// A claim is missing or out of shape.
    Claims(String),
    /// A refresh named another `sub`.
    OtherSubject,
}

impl TokenError {
    fn from_kind(kind: &ErrorKind) -> TokenError {
        match kind {
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm(None),
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::MissingRequiredClaim(c) => TokenError::Claims(format!("{c} is missing")),
            ErrorKind::Json(e) => TokenError::Claims(e.to_string()),
            _ => TokenError::Malformed("not a compact JWS (header.payload.signature)".into()),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::Algorithm(Some(alg)) => {
                write!(f, "token alg {alg} is not accepted; only HS256")
            }
            TokenError::Algorithm(None) => {
                f.write_str("token header unreadable or its alg unknown; only HS256 is accepted, \"none\" never")
            }
            TokenError::Signature => f.write_str("token signature does not match any secret"),
            TokenError::Expired => f.write_str("token expired; get a fresh one"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::Claims(why) => write!(f, "token claims: {why}"),
            TokenError::OtherSubject => {
                f.write_str("a refreshed token must have the same sub as the one it replaces")
            }
        }
    }
}

#[cfg(test)]
mod tests;
