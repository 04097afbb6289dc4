//! The properties the fuzz targets check, in one place: the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`, nightly) and the corpus replay
//! (`tests/fuzz_corpus.rs`, stable) both include this file, so a corpus
//! file means the same thing to both.
//!
//! Each check takes arbitrary bytes and panics only when a property of the
//! code under test fails: refusing input with an error is fine, panicking,
//! over-consuming or answering differently for the same bytes split
//! differently is not. A few leading bytes of some inputs choose limits and
//! read sizes; the layout is documented on each check.

use redix::api::ws as ws_api;
use redix::hub::check_channel;
use redix::hub::ids::{self, Format};
use redix::proto::deflate::{self, Agreement};
use redix::proto::ws::{self, Message, Reassembler, WsError};
use redix::proto::{http, resp};

/// A check: panics when a property fails for these bytes.
pub type Check = fn(&[u8]);

/// Every target: its corpus directory name under `fuzz/corpus/` and its check.
pub const TARGETS: [(&str, Check); 4] = [
    ("http_head", http_head),
    ("ws_frames", ws_frames),
    ("cursor_ws_json", cursor_ws_json),
    ("resp", resp),
];

// ---------------------------------------------------------------- input layout

/// Splits `stream` into reads whose sizes cycle through `sizes` (a size of
/// 0 reads one byte); no sizes means one read of everything.
fn reads<'a>(stream: &'a [u8], sizes: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = match sizes {
            [] => rest.len(),
            s => usize::from(s[i % s.len()]).max(1),
        };
        i += 1;
        let (read, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        Some(read)
    })
}

/// `[config, k, size_1 .. size_k, stream ..]` (`k` taken mod 16): the
/// config byte, the read sizes and the byte stream.
fn split_input(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&config, rest) = data.split_first()?;
    let (&k, rest) = rest.split_first()?;
    let k = usize::from(k % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    Some((config, sizes, stream))
}

// ---------------------------------------------------------------- http_head

/// The bytes are a pipelined request stream, parsed with the default limits
/// and again with a small head limit so the 431 paths are reached.
pub fn http_head(data: &[u8]) {
    use redix::config::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES};
    pipeline(data, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_BODY_BYTES);
    pipeline(data, 256, 16);
}

/// Parses head after head, skipping each request's body when it is there.
fn pipeline(data: &[u8], max_head: usize, max_body: usize) {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let head = match http::parse_head(rest, max_head, max_body) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(rest.len() < max_head, "incomplete head past max_head");
                return;
            }
            Err(e) => {
                assert!(matches!(e.status, 400 | 411 | 413 | 431), "status {e:?}");
                return;
            }
        };
        check_head(rest, &head, max_head, max_body);
        let frame = head.len + head.content_length;
        if frame > rest.len() {
            return;
        }
        pos += frame;
    }
}

fn check_head(rest: &[u8], head: &http::Head, max_head: usize, max_body: usize) {
    assert!(
        head.len > 0 && head.len <= rest.len(),
        "head.len {}",
        head.len
    );
    assert!(head.len <= max_head && head.content_length <= max_body);
    assert!(!head.chunked, "a chunked request was accepted");
    assert!(head.path.len() + head.query.len() < head.len);
    // A head depends on its own bytes only, and one byte short it is
    // incomplete, not an error.
    let own = http::parse_head(&rest[..head.len], max_head, max_body);
    assert_eq!(own, Ok(Some(head.clone())), "head changed without its tail");
    let short = http::parse_head(&rest[..head.len - 1], max_head, max_body);
    assert_eq!(short, Ok(None), "a head one byte short");
    let _ = head.credential();
    let _ = http::query_param(&head.query, "channels");
    let _ = http::percent_decode(&head.path);
    check_upgrade(head);
}

/// The upgrade check and permessage-deflate negotiation on what a head says.
fn check_upgrade(head: &http::Head) {
    let accept = ws::check_upgrade(
        head.method() == http::Method::Get,
        head.upgrade.as_deref(),
        head.connection_upgrade,
        head.ws_version.as_deref(),
        head.ws_key.as_deref(),
    );
    match accept {
        Ok(accept) => assert_eq!(accept.len(), 28, "accept {accept:?}"),
        Err(e) => assert!(matches!(e.status(), 405 | 426 | 400), "{e:?}"),
    }
    if let Some(agreed) = deflate::negotiate(head.ws_extensions.as_deref()) {
        // Our answer, offered back, is accepted as the same agreement.
        let answer = agreed.response_header();
        assert_eq!(deflate::negotiate(Some(&answer)), Some(agreed), "{answer}");
    }
}

// ---------------------------------------------------------------- ws_frames

/// The permessage-deflate offers the first byte chooses from (low 3 bits).
pub const WS_OFFERS: [Option<&str>; 6] = [
    None,
    Some("permessage-deflate"),
    Some("permessage-deflate; client_no_context_takeover"),
    Some("permessage-deflate; client_max_window_bits=9"),
    Some("permessage-deflate; client_max_window_bits=15; server_max_window_bits=15"),
    Some("permessage-deflate; client_max_window_bits"),
];

/// Message limits the first byte chooses from (bits 3–4).
pub const WS_MAX_MESSAGE: [usize; 3] = [125, 4096, redix::config::DEFAULT_WS_MAX_MESSAGE_BYTES];

/// How a run of the reassembler ended.
#[derive(Debug, PartialEq, Eq)]
struct WsRun {
    messages: Vec<Message>,
    error: Option<WsError>,
}

/// `[config, k, read sizes .., client bytes ..]` (see [`split_input`]):
/// the stream is decoded as it arrives in those reads and again in one
/// read; both must give the same messages and the same error.
pub fn ws_frames(data: &[u8]) {
    let Some((config, sizes, stream)) = split_input(data) else {
        return;
    };
    let offer = WS_OFFERS[usize::from(config & 7) % WS_OFFERS.len()];
    let agreement = offer.map(|o| deflate::negotiate(Some(o)).expect("a fixed offer"));
    let max = WS_MAX_MESSAGE[usize::from((config >> 3) & 3) % WS_MAX_MESSAGE.len()];
    let split = ws_run(agreement, max, reads(stream, sizes));
    let whole = ws_run(agreement, max, reads(stream, &[]));
    assert_eq!(split, whole, "read sizes changed the outcome");
}

/// Feeds reads to a fresh reassembler the way a reactor does: append to
/// the buffer, decode while it consumes, stop at an error or a Close.
fn ws_run<'a>(
    agreement: Option<Agreement>,
    max: usize,
    reads: impl Iterator<Item = &'a [u8]>,
) -> WsRun {
    let mut r = Reassembler::new(max, agreement);
    let mut run = WsRun {
        messages: Vec::new(),
        error: None,
    };
    let mut buf = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let len = buf.len();
            let (used, msg) = match r.decode(&mut buf) {
                Ok(decoded) => decoded,
                Err(e) => {
                    use ws::close_code::{INVALID_PAYLOAD, PROTOCOL, TOO_BIG};
                    assert!(
                        matches!(e.code, PROTOCOL | INVALID_PAYLOAD | TOO_BIG),
                        "{e}"
                    );
                    run.error = Some(e);
                    return run;
                }
            };
            assert!(used <= len, "consumed {used} of {len}");
            buf.drain(..used);
            let Some(msg) = msg else {
                if used == 0 {
                    break;
                }
                continue;
            };
            assert!(used > 0, "a message from no bytes");
            check_message(&msg, max);
            let close = matches!(msg, Message::Close(_));
            run.messages.push(msg);
            if close {
                return run;
            }
        }
    }
    run
}

fn check_message(msg: &Message, max: usize) {
    match msg {
        Message::Text(t) => assert!(t.len() <= max, "text of {} over {max}", t.len()),
        Message::Binary(b) => assert!(b.len() <= max, "binary of {} over {max}", b.len()),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= ws::MAX_CONTROL),
        Message::Close(Some(c)) => {
            assert!(ws::is_valid_close_code(c.code), "close code {}", c.code);
            assert!(c.reason.len() <= ws::MAX_CONTROL - 2);
        }
        Message::Close(None) => {}
    }
}

// ---------------------------------------------------------------- cursor_ws_json

/// Cursors (`Last-Event-ID`, `lastEventId`, `since`) and the WebSocket
/// JSON commands. The first 8 bytes, when there, are also a packed id.
pub fn cursor_ws_json(data: &[u8]) {
    if let Some(word) = data.first_chunk::<8>() {
        let id = u64::from_le_bytes(*word);
        // Every u64 is a decimal id; a stream id only while its ms part
        // fits what the hub packs (`ids::MAX_MS`).
        let fits = id >> ids::SEQ_BITS <= ids::MAX_MS;
        assert_eq!(
            Format::Stream.parse(&ids::stream_id(id)),
            fits.then_some(id),
            "stream id of {id}"
        );
        assert_eq!(
            Format::Decimal.parse(&id.to_string()),
            Some(id),
            "plain id {id}"
        );
    }
    let text = String::from_utf8_lossy(data);
    let query = http::query_param(&text, "lastEventId");
    for format in [Format::Decimal, Format::Stream] {
        cursor(&text, format);
        if let Some(v) = &query {
            cursor(v.trim(), format);
        }
        ws_json(&text, format);
    }
}

/// An id that parses (in `format`, or as the `0` cursor) is a canonical
/// id of that format up to leading zeros.
fn cursor(s: &str, format: Format) {
    let Some(id) = format.parse_cursor(s) else {
        return;
    };
    assert!(
        s == "0" || s.contains('-') == (format == Format::Stream),
        "{s:?}"
    );
    let canonical = |digits: &str| match digits.trim_start_matches('0') {
        "" => "0".to_string(),
        d => d.to_string(),
    };
    match s.split_once('-') {
        Some((ms, n)) => {
            let shown = format!("{}-{}", canonical(ms), canonical(n));
            assert_eq!(shown, ids::stream_id(id), "{s:?}");
        }
        None => assert_eq!(canonical(s), id.to_string(), "{s:?}"),
    }
}

/// A command that parses names a valid channel, and says the same when
/// written back as JSON.
fn ws_json(text: &str, format: Format) {
    let req = match ws_api::parse(text, format) {
        Ok(req) => req,
        Err((code, _)) => {
            let codes = ["bad_json", "bad_request", "bad_cursor", "unknown_type"];
            assert!(codes.contains(&code), "error code {code}");
            return;
        }
    };
    let again = match &req {
        ws_api::WsRequest::Ping => r#"{"type":"ping"}"#.to_string(),
        ws_api::WsRequest::Subscribe { channel, since } => {
            assert_eq!(check_channel(channel), Ok(()), "{text:?}");
            let since = match format {
                Format::Stream => since.map(ids::stream_id),
                Format::Decimal => since.map(|id| id.to_string()),
            };
            let since = since.unwrap_or_default();
            format!(r#"{{"type":"subscribe","channel":"{channel}","since":"{since}"}}"#)
        }
        ws_api::WsRequest::Unsubscribe { channel } => {
            assert_eq!(check_channel(channel), Ok(()), "{text:?}");
            format!(r#"{{"type":"unsubscribe","channel":"{channel}"}}"#)
        }
        // A token is opaque here (its checks are `tokens`'): parsing the
        // same text again must give the same request.
        ws_api::WsRequest::Auth { token } => {
            assert!(!token.is_empty(), "{text:?}");
            text.to_string()
        }
    };
    assert_eq!(ws_api::parse(&again, format), Ok(req), "{again}");
}

// ---------------------------------------------------------------- resp

/// Bulk limits the config byte chooses from (low 2 bits).
pub const RESP_MAX_BULK: [usize; 4] = [0, 8, 1024, 16 << 20];

/// How parsing a RESP stream ended.
#[derive(Debug)]
struct RespRun {
    values: Vec<resp::Value>,
    error: Option<resp::RespError>,
}

/// `[config, k, read sizes .., reply bytes ..]` (see [`split_input`]): the
/// replies parsed as they arrive in those reads must be the replies parsed
/// from the whole buffer, and both end in an error or neither does. The
/// error's text may differ: garbage without a line end is refused for its
/// length once 32 bytes of it are buffered, before its type byte is judged.
pub fn resp(data: &[u8]) {
    let Some((config, sizes, stream)) = split_input(data) else {
        return;
    };
    let max_bulk = RESP_MAX_BULK[usize::from(config & 3)];
    let whole = resp_run(max_bulk, reads(stream, &[]));
    let split = resp_run(max_bulk, reads(stream, sizes));
    for v in &whole.values {
        check_value(v, max_bulk);
    }
    let same = split.values == whole.values && split.error.is_some() == whole.error.is_some();
    assert!(
        same,
        "read sizes changed the outcome:\n{split:?}\n{whole:?}"
    );
}

/// Appends each read and drains whole replies, like the pub/sub reader.
fn resp_run<'a>(max_bulk: usize, reads: impl Iterator<Item = &'a [u8]>) -> RespRun {
    let mut run = RespRun {
        values: Vec::new(),
        error: None,
    };
    let mut buf = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        let mut used = 0;
        loop {
            match resp::parse(&buf[used..], max_bulk) {
                Ok(Some((v, n))) => {
                    assert!(n > 0 && n <= buf.len() - used, "took {n}");
                    used += n;
                    run.values.push(v);
                }
                Ok(None) => break,
                Err(e) => {
                    run.error = Some(e);
                    return run;
                }
            }
        }
        buf.drain(..used);
    }
    run
}

/// Bulks respect the limit; an array of bulk strings encodes back to itself.
fn check_value(v: &resp::Value, max_bulk: usize) {
    match v {
        resp::Value::Bulk(Some(b)) => assert!(b.len() <= max_bulk),
        resp::Value::Array(Some(items)) => {
            items.iter().for_each(|i| check_value(i, max_bulk));
            let args: Option<Vec<&[u8]>> = items
                .iter()
                .map(|i| match i {
                    resp::Value::Bulk(Some(b)) => Some(&b[..]),
                    _ => None,
                })
                .collect();
            if let Some(args) = args {
                let bytes = resp::command(&args);
                assert_eq!(
                    resp::parse(&bytes, max_bulk),
                    Ok(Some((v.clone(), bytes.len())))
                );
            }
        }
        _ => {}
    }
}
