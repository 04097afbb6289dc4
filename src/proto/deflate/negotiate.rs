//! The permessage-deflate handshake (RFC 7692 §5, §7.1): which offer in a
//! `Sec-WebSocket-Extensions` header we accept, and what we answer.
//!
//! Every answer carries both `server_no_context_takeover` and
//! `client_no_context_takeover` (§7.1.1.1 lets a server add the latter to
//! any offer): our compressed messages depend on themselves alone, and so
//! must the client's, so no connection keeps a deflate window between
//! messages. `server_max_window_bits=N` is honoured for every valid N
//! (8..=15) and echoed with the same value; `client_max_window_bits` is
//! checked and never echoed (we inflate with a 15-bit window, which reads
//! any smaller one).

use super::WindowBits;

/// The extension token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The parameters agreed with one client. `Copy`, two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `server_max_window_bits=N` the client offered: our messages must
    /// not refer further back than 2^N bytes, and the answer echoes N.
    /// `None`: the client did not ask, and we use the full 15 bits.
    pub server_max_window_bits: Option<WindowBits>,
}

impl Agreement {
    /// The window to compress this client's messages with.
    pub fn server_window(&self) -> WindowBits {
        self.server_max_window_bits.unwrap_or(WindowBits::MAX)
    }

    /// The `Sec-WebSocket-Extensions` value for the 101 response.
    pub fn response_header(&self) -> String {
        let mut s = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if let Some(bits) = self.server_max_window_bits {
            // The same value as offered: RFC 7692 §7.1.2.1 allows the same
            // or a smaller one, never a larger one (see `WindowBits`).
            s.push_str("; server_max_window_bits=");
            s.push_str(&bits.get().to_string());
        }
        s
    }
}

/// Picks the first `permessage-deflate` offer in a `Sec-WebSocket-Extensions`
/// value that we can honour. Offers with unknown or repeated parameters or
/// invalid values are skipped (RFC 7692 §5 lets the server decline any offer).
pub fn negotiate(offer: Option<&str>) -> Option<Agreement> {
    split_outside_quotes(offer?, ',').find_map(|ext| {
        let mut parts = split_outside_quotes(ext, ';');
        let name = parts.next()?.trim();
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return None;
        }
        accept_params(parts)
    })
}

/// The agreement for one offer's parameters, or `None` to decline it.
fn accept_params<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreement> {
    let mut agreement = Agreement {
        server_max_window_bits: None,
    };
    // One bit per parameter name: a repeated parameter declines the offer.
    let mut seen = 0u8;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let bit = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 1,
            // Answered whether offered or not: see the module doc.
            "client_no_context_takeover" if value.is_none() => 2,
            "server_max_window_bits" => {
                agreement.server_max_window_bits = Some(WindowBits::parse(value?)?);
                4
            }
            "client_max_window_bits" => {
                // Without a value the client merely supports the parameter.
                if let Some(v) = value {
                    WindowBits::parse(v)?;
                }
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some(agreement)
}

/// Strips the quotes of a quoted-string value. Escapes are declined: no valid
/// parameter value needs one.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|s| !s.contains(['"', '\\'])),
        None => Some(v),
    }
}

/// Splits on `sep` except inside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    /// `None`: declined; `Some(None)`: accepted, no window asked for;
    /// `Some(Some(n))`: accepted with `server_max_window_bits=n`.
    type Want = Option<Option<u8>>;

    #[test]
    fn negotiate_table() {
        let table: [(Option<&str>, Want); 27] = [
            (None, None),
            (Some(""), None),
            (Some("x-webkit-deflate-frame"), None),
            (Some("permessage-deflate"), Some(None)),
            (Some("PerMessage-Deflate "), Some(None)),
            // Chrome and Firefox.
            (Some("permessage-deflate; client_max_window_bits"), Some(None)),
            (Some("permessage-deflate; client_no_context_takeover"), Some(None)),
            // A client window is checked, not echoed.
            (Some("permessage-deflate; client_max_window_bits=10"), Some(None)),
            (Some("permessage-deflate; client_max_window_bits=\"8\""), Some(None)),
            (Some("permessage-deflate;server_no_context_takeover"), Some(None)),
            (Some("permessage-deflate; server_max_window_bits=15"), Some(Some(15))),
            (Some("permessage-deflate; server_max_window_bits=\"9\""), Some(Some(9))),
            (
                Some("permessage-deflate; server_max_window_bits=8; client_max_window_bits=9"),
                Some(Some(8)),
            ),
            // Several offers: the first valid one wins (Autobahn 13.7.*).
            (
                Some("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
                Some(Some(8)),
            ),
            (
                Some("permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=12"),
                Some(Some(12)),
            ),
            (
                Some("foo; a=\"x,y\", permessage-deflate; client_no_context_takeover; x, permessage-deflate; client_max_window_bits"),
                Some(None),
            ),
            // Declined: invalid values, unknown and duplicated parameters.
            (Some("permessage-deflate; server_max_window_bits"), None),
            (Some("permessage-deflate; server_max_window_bits=7"), None),
            (Some("permessage-deflate; server_max_window_bits=16"), None),
            (Some("permessage-deflate; client_max_window_bits=16"), None),
            (Some("permessage-deflate; client_max_window_bits=7"), None),
            (Some("permessage-deflate; client_max_window_bits=09"), None),
            (Some("permessage-deflate; client_max_window_bits=1x"), None),
            (Some("permessage-deflate; server_no_context_takeover=1"), None),
            (Some("permessage-deflate; foo"), None),
            (
                Some("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
                None,
            ),
            (
                Some("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"),
                None,
            ),
        ];
        for (offer, want) in table {
            let got = negotiate(offer);
            let bits = got.map(|a| a.server_max_window_bits.map(WindowBits::get));
            assert_eq!(bits, want, "{offer:?}");
            let Some(a) = got else { continue };
            let header = a.response_header();
            match want.flatten() {
                None => assert_eq!(header, BASE, "{offer:?}"),
                Some(n) => assert_eq!(header, format!("{BASE}; server_max_window_bits={n}")),
            }
        }
    }

    #[test]
    fn every_server_window_is_honoured_and_echoed() {
        for n in 8..=15u8 {
            let offer =
                format!("permessage-deflate; server_max_window_bits={n}; client_max_window_bits");
            let a = negotiate(Some(&offer)).expect("a valid offer");
            assert_eq!(a.server_window().get(), n);
            assert!(a
                .response_header()
                .ends_with(&format!("; server_max_window_bits={n}")));
        }
        let plain = negotiate(Some("permessage-deflate")).expect("a valid offer");
        assert_eq!(plain.server_window(), WindowBits::MAX);
    }
}
