//! The event payload, `{"t":<ns since the UNIX epoch>,"pad":"x…"}`, and everything a
//! subscriber parses to find it again: the SSE response (head, chunked framing, lines) and
//! the meaning of a WebSocket text message. No sockets; each `"t"` found goes to a callback.
//! Leaf module (std and httparse).

/// The published object, `{"t":<t>,"pad":"xx…"}`, padded to `payload_bytes`.
pub fn event_json(t: u64, payload_bytes: usize) -> String {
    let fixed = format!("{{\"t\":{t},\"pad\":\"\"}}").len();
    let pad = "x".repeat(payload_bytes.saturating_sub(fixed));
    format!("{{\"t\":{t},\"pad\":\"{pad}\"}}")
}

/// Position of the first `byte`, a word (8 bytes) at a time.
#[inline]
pub fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO * byte as u64;
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) ^ pat;
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == byte).map(|p| i + p)
}

#[inline]
pub fn find_nl(s: &[u8]) -> Option<usize> {
    find_byte(s, b'\n')
}

/// The value of `"t":<digits>` in a data line (hops from colon to colon).
#[inline]
pub fn parse_t(line: &[u8]) -> Option<u64> {
    let mut i = 0;
    let p = loop {
        let j = i + find_byte(&line[i..], b':')?;
        if j >= 3 && &line[j - 3..j] == b"\"t\"" {
            break j + 1;
        }
        i = j + 1;
    };
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &line[p..] {
        match b {
            b'0'..=b'9' => {
                v = v.wrapping_mul(10).wrapping_add((b - b'0') as u64);
                any = true;
            }
            b' ' if !any => {}
            _ => break,
        }
    }
    any.then_some(v)
}

/// Every `"t":<digits>` in a message, in order: a market event carries one per trade
/// (`"data":[{"s":…,"t":<ms>,…},…]`).
#[inline]
pub fn for_each_t(mut line: &[u8], delivery: &mut impl FnMut(u64)) {
    while let Some(t) = parse_t(line) {
        delivery(t);
        // past this `"t":`, so the next search starts after it
        let Some(p) = line.windows(4).position(|w| w == b"\"t\":") else {
            break;
        };
        line = &line[p + 4..];
    }
}

/// What a WebSocket text message from the server means: an event (its `"t"` goes to
/// `delivery`), redix's `subscribed` ack (sets `acked`), or an error answer.
#[inline]
#[allow(dead_code)] // the bench calls `on_ws_message_t`; tests/bench_self_test.rs this
pub fn on_ws_message(
    m: &[u8],
    delivery: &mut impl FnMut(u64),
    acked: &mut bool,
) -> Result<(), String> {
    on_ws_message_t(m, false, delivery, acked)
}

/// `on_ws_message`, with `every_t`: every `"t"` of the message goes to `delivery` (one per
/// trade of a market event), not just the first.
#[inline]
pub fn on_ws_message_t(
    m: &[u8],
    every_t: bool,
    delivery: &mut impl FnMut(u64),
    acked: &mut bool,
) -> Result<(), String> {
    let has = |needle: &[u8]| m.windows(needle.len()).any(|w| w == needle);
    if let Some(t) = parse_t(m) {
        if every_t {
            for_each_t(m, delivery);
        } else {
            delivery(t);
        }
    } else if has(b"\"subscribed\"") {
        *acked = true;
    } else if has(b"\"error\"") {
        return Err(format!("server answered {}", String::from_utf8_lossy(m)));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum ChSt {
    Size,
    Ext,
    Data(u64),
    DataCr,
    DataLf,
    Done,
}

/// Transfer-Encoding: chunked decoder (neither server is expected to use it; handled anyway).
struct Chunked {
    st: ChSt,
    size: u64,
}

impl Chunked {
    fn decode<'a>(&mut self, data: &'a [u8], mut out: impl FnMut(&'a [u8])) -> Result<(), String> {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                ChSt::Size => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            self.size = self.size * 16 + (b as char).to_digit(16).unwrap() as u64;
                        }
                        b';' | b' ' | b'\r' => self.st = ChSt::Ext,
                        b'\n' => self.end_size(),
                        _ => return Err("bad chunk size".into()),
                    }
                }
                ChSt::Ext => {
                    if data[i] == b'\n' {
                        self.end_size();
                    }
                    i += 1;
                }
                ChSt::Data(rem) => {
                    let take = (rem as usize).min(data.len() - i);
                    out(&data[i..i + take]);
                    i += take;
                    let rem = rem - take as u64;
                    self.st = if rem == 0 {
                        ChSt::DataCr
                    } else {
                        ChSt::Data(rem)
                    };
                }
                ChSt::DataCr => {
                    self.st = if data[i] == b'\n' {
                        ChSt::Size
                    } else {
                        ChSt::DataLf
                    };
                    i += 1;
                }
                ChSt::DataLf => {
                    if data[i] != b'\n' {
                        return Err("bad chunk trailer".into());
                    }
                    self.st = ChSt::Size;
                    i += 1;
                }
                ChSt::Done => return Ok(()),
            }
        }
        Ok(())
    }
    fn end_size(&mut self) {
        self.st = if self.size == 0 {
            ChSt::Done
        } else {
            ChSt::Data(self.size)
        };
        self.size = 0;
    }
}

/// An SSE response as it arrives: the head (a `200`, maybe chunked), then lines ending in
/// `\n` (optional `\r`), an event ending at a blank line. Remembers redix's `retry:` line and
/// an `event: slow` (the server announcing a slow-consumer close).
#[derive(Default)]
pub struct SseStream {
    head: Vec<u8>,
    in_body: bool,
    chunked: Option<Chunked>,
    line: Vec<u8>,
    pending_t: Option<u64>,
    /// redix's first `retry:` line arrived
    pub retry_seen: bool,
    /// the server announced a slow-consumer close (`event: slow`)
    pub slow: bool,
    /// every `"t"` of a data line is a delivery (market events: one per trade), counted when
    /// the data line arrives; otherwise the first `"t"`, counted at the blank line
    pub every_t: bool,
}

impl SseStream {
    /// The response head arrived and was a `200`.
    pub fn in_body(&self) -> bool {
        self.in_body
    }

    /// Feeds bytes read from the server; `delivery` gets the `"t"` of each complete event.
    pub fn feed(&mut self, data: &[u8], delivery: &mut impl FnMut(u64)) -> Result<(), String> {
        if self.in_body {
            return self.feed_body(data, delivery);
        }
        self.head.extend_from_slice(data);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.head.len() > 16 * 1024 => {
                return Err("response headers over 16 KiB".into())
            }
            Ok(httparse::Status::Partial) => return Ok(()),
            Err(e) => return Err(format!("bad response head: {e}")),
        };
        if r.code != Some(200) {
            let first = self.head.split(|&b| b == b'\r').next().unwrap_or(&[]);
            return Err(format!(
                "unexpected response: {}",
                String::from_utf8_lossy(first)
            ));
        }
        let chunked = r.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .contains("chunked")
        });
        if chunked {
            self.chunked = Some(Chunked {
                st: ChSt::Size,
                size: 0,
            });
        }
        let rest = self.head.split_off(n);
        self.head = Vec::new();
        self.in_body = true;
        self.feed_body(&rest, delivery)
    }

    fn feed_body(&mut self, data: &[u8], delivery: &mut impl FnMut(u64)) -> Result<(), String> {
        if let Some(mut ch) = self.chunked.take() {
            let mut res = Ok(());
            let r = ch.decode(data, |piece| {
                if res.is_ok() {
                    res = self.feed_lines(piece, delivery);
                }
            });
            self.chunked = Some(ch);
            r?;
            return res;
        }
        self.feed_lines(data, delivery)
    }

    /// Incremental SSE parser: lines end in \n (optional \r), an event ends at a blank line.
    fn feed_lines(&mut self, data: &[u8], delivery: &mut impl FnMut(u64)) -> Result<(), String> {
        let mut start = 0;
        while start < data.len() {
            match find_nl(&data[start..]) {
                Some(p) => {
                    let end = start + p;
                    if self.line.is_empty() {
                        self.line_done(&data[start..end], delivery);
                    } else {
                        self.line.extend_from_slice(&data[start..end]);
                        let l = std::mem::take(&mut self.line);
                        self.line_done(&l, delivery);
                        self.line = l;
                        self.line.clear();
                    }
                    start = end + 1;
                }
                None => {
                    self.line.extend_from_slice(&data[start..]);
                    if self.line.len() > 1 << 20 {
                        return Err("SSE line over 1 MiB".into());
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn line_done(&mut self, line: &[u8], delivery: &mut impl FnMut(u64)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(t) = self.pending_t.take() {
                delivery(t);
            }
            return;
        }
        match line[0] {
            b'd' if self.every_t && line.starts_with(b"data:") => for_each_t(line, delivery),
            b'd' if self.pending_t.is_none() && line.starts_with(b"data:") => {
                self.pending_t = parse_t(line)
            }
            b'r' if line.starts_with(b"retry:") => self.retry_seen = true,
            b'e' if line.strip_prefix(b"event:").map(|v| v.trim_ascii()) == Some(b"slow") => {
                self.slow = true
            }
            _ => {}
        }
    }
}
