//! Churning clients: SSE and WebSocket clients that drop their connection
//! at random moments and resume from their last id, and the check that
//! they still got every event exactly once, in order.

use std::net::SocketAddr;

use super::redis::stream_id;
use super::sse::SseClient;
use super::ws::RawWs;

/// Deterministic per-client randomness (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// An id as a pair that orders like the id: a plain number `n` is `(n, 0)`,
/// a Redis stream id `ms-n` is `(ms, n)`.
pub fn id_key(id: &str) -> (u64, u64) {
    match id.split_once('-') {
        Some(_) => stream_id(id),
        None => (id.parse().expect("numeric id"), 0),
    }
}

/// An SSE client of `chans` that drops its connection at random moments
/// (half of the time with RST) and comes back, to a node picked at random
/// from `addrs`, with its last id, until it has seen the `{"end":true}`
/// event of each of its channels. Returns (channel, id) in order.
pub fn churning_sse(addrs: &[SocketAddr], i: usize, chans: &[&str]) -> Vec<(String, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
    let names = chans.join(",");
    let mut got: Vec<(String, String)> = Vec::new();
    let mut ended = 0;
    loop {
        // From 0 the first time: everything since the start, whenever this
        // client happens to connect.
        let last = got.last().map_or("0", |(_, id)| id.as_str());
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        let mut c = SseClient::connect(addr, &format!("{names}&lastEventId={last}"));
        assert_eq!(c.status, 200, "client {i}: {}", c.head);
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(ev) = c.next_message() else { break };
            assert_eq!(ev.event.as_deref(), Some("message"), "client {i}: {ev:?}");
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            budget -= 1;
            if record(&mut got, &v, ev.id.expect("id"), &mut ended, chans) {
                return got;
            }
        }
        if rng.below(2) == 0 {
            c.abort();
        }
    }
}

/// Notes a delivered message; true once every channel's end event came.
fn record(
    got: &mut Vec<(String, String)>,
    message: &serde_json::Value,
    id: String,
    ended: &mut usize,
    chans: &[&str],
) -> bool {
    got.push((message["channel"].as_str().unwrap().to_string(), id));
    *ended += usize::from(message["data"]["end"] == true);
    *ended == chans.len()
}

/// A WebSocket client that churns the same way, resuming each channel from
/// the last id it got on that channel.
pub fn churning_ws(addrs: &[SocketAddr], i: usize, chans: &[&str]) -> Vec<(String, String)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((i as u64 + 7) * 0x3000_0001));
    let mut got: Vec<(String, String)> = Vec::new();
    let mut ended = 0;
    loop {
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        let mut ws = RawWs::connect(addr, "/ws", &[]);
        assert_eq!(ws.status, 101);
        for ch in chans {
            let since = got
                .iter()
                .rev()
                .find(|(c, _)| c == ch)
                .map_or("0", |(_, id)| id.as_str());
            ws.send_text(&format!(
                r#"{{"type":"subscribe","channel":"{ch}","since":"{since}"}}"#
            ));
        }
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(frame) = ws.read_non_ping() else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&frame.text()).unwrap();
            match v["type"].as_str() {
                Some("subscribed") => continue,
                Some("message") => {}
                other => panic!("client {i}: unexpected {other:?}: {v}"),
            }
            budget -= 1;
            let id = v["id"].as_str().unwrap().to_string();
            if record(&mut got, &v, id, &mut ended, chans) {
                return got;
            }
        }
        if rng.below(2) == 0 {
            ws.abort();
        }
    }
}

/// Checks what a churning client got against what was published: every
/// event of its channels exactly once, in order per channel, and for an
/// SSE client (one cursor) in id order over the whole stream.
pub fn check_churned(
    i: usize,
    chans: &[&str],
    got: &[(String, String)],
    published: &[(String, String)],
    one_stream: bool,
) {
    for ch in chans {
        let of = |list: &[(String, String)]| -> Vec<String> {
            list.iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, id)| id.clone())
                .collect()
        };
        let (want, have) = (of(published), of(got));
        if have != want {
            let at = have
                .iter()
                .zip(&want)
                .position(|(h, w)| h != w)
                .unwrap_or(want.len());
            let lo = at.saturating_sub(3);
            let pos = |id: &String| got.iter().position(|(c, x)| c == ch && x == id);
            eprintln!(
                "client {i} channel {ch}: first difference at {at}: have {:?} want {:?}; in the stream at {:?}; stream around: {:?}",
                &have[lo..(at + 3).min(have.len())],
                &want[lo..(at + 3).min(want.len())],
                have.get(at).and_then(pos),
                have.get(at).and_then(pos).map(|p| &got[p.saturating_sub(4)..(p + 4).min(got.len())]),
            );
        }
        assert_eq!(have.len(), want.len(), "client {i} channel {ch}: count");
        assert!(have == want, "client {i} channel {ch}: events differ");
    }
    if one_stream {
        assert!(
            got.windows(2).all(|w| id_key(&w[0].1) < id_key(&w[1].1)),
            "client {i}: stream order"
        );
    }
}
