//! The HTTP side of a WebSocket: checking an upgrade request and the
//! `101 Switching Protocols` answer (RFC 6455 §4.2).

use std::fmt;

use crate::proto::http::{self, HttpError};

/// Why an upgrade request was refused; see [`UpgradeError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    NotGet,
    NoUpgradeHeader,
    NotWebSocket,
    NoConnectionUpgrade,
    /// Missing or not 13.
    Version,
    /// Missing, or not base64 of 16 bytes.
    BadKey,
}

impl UpgradeError {
    pub fn status(self) -> u16 {
        match self {
            UpgradeError::NotGet => 405,
            UpgradeError::NoUpgradeHeader | UpgradeError::Version => 426,
            _ => 400,
        }
    }

    /// Header lines the error response must carry.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            UpgradeError::NotGet => &["Allow: GET"],
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            UpgradeError::NoUpgradeHeader => &["Upgrade: websocket"],
            // RFC 6455 §4.2.2: name the versions we speak.
            UpgradeError::Version => &["Sec-WebSocket-Version: 13"],
            _ => &[],
        }
    }

    pub fn http_error(self) -> HttpError {
        let code = match self.status() {
            405 => "method_not_allowed",
            426 => "upgrade_required",
            _ => "bad_request",
        };
        HttpError::new(self.status(), code, self.to_string())
    }

    /// The complete JSON error response.
    pub fn response(self, keep_alive: bool) -> Vec<u8> {
        let extra: Vec<String> = self.headers().iter().map(|h| h.to_string()).collect();
        http::error_response(&self.http_error(), keep_alive, &extra)
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpgradeError::NotGet => "a WebSocket upgrade must be a GET",
            UpgradeError::NoUpgradeHeader => "this endpoint needs a WebSocket upgrade",
            UpgradeError::NotWebSocket => "Upgrade must be websocket",
            UpgradeError::NoConnectionUpgrade => "Connection must include upgrade",
            UpgradeError::Version => "Sec-WebSocket-Version must be 13",
            UpgradeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
        })
    }
}

/// Validates an opening handshake (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
pub fn check_upgrade(
    method_is_get: bool,
    upgrade: Option<&str>,
    connection_upgrade: bool,
    version: Option<&str>,
    key: Option<&str>,
) -> Result<String, UpgradeError> {
    if !method_is_get {
        return Err(UpgradeError::NotGet);
    }
    let upgrade = upgrade.ok_or(UpgradeError::NoUpgradeHeader)?;
    if !upgrade
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(UpgradeError::NotWebSocket);
    }
    if !connection_upgrade {
        return Err(UpgradeError::NoConnectionUpgrade);
    }
    if version.map(str::trim) != Some("13") {
        return Err(UpgradeError::Version);
    }
    let key = key.map(str::trim).filter(|k| is_key(k));
    let key = key.ok_or(UpgradeError::BadKey)?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// 22 base64 characters and `==`: exactly what 16 bytes encode to.
fn is_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The `101 Switching Protocols` response; `extensions` is the agreed
/// `Sec-WebSocket-Extensions` value, if any.
pub fn accept_response(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    s.push_str("Sec-WebSocket-Accept: ");
    s.push_str(accept);
    s.push_str("\r\n");
    if let Some(ext) = extensions {
        s.push_str("Sec-WebSocket-Extensions: ");
        s.push_str(ext);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}
