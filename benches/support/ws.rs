//! The one WebSocket client (RFC 6455) both benches use, without sockets: the upgrade
//! request and the check of its `101`, masked client frames, an incremental reader of server
//! frames (7/16/64-bit lengths, split across reads, several per read, fragmented messages,
//! permessage-deflate's RSV1 when it was agreed), and `Client`, which adds the handshake,
//! pongs and close codes on top for a subscriber that reads until it is told to stop.
//! Leaf module (std, tungstenite for the accept key, httparse for the `101`).

use std::sync::Arc;

/// Largest server frame (and reassembled message) accepted.
pub const MAX_FRAME: u64 = 16 << 20;

/// The upgrade request, with an optional permessage-deflate offer.
pub fn upgrade_request(path: &str, host: &str, key: &str, deflate: bool) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if deflate {
        r.push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Checks a complete response head (blank line included): `101`, the accept value, and
/// permessage-deflate agreed exactly when it was offered. Returns the extensions header.
pub fn check_upgrade(head: &[u8], accept: &str, offered_deflate: bool) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let first = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[]));
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) if r.code == Some(101) => {}
        Ok(_) => return Err(format!("unexpected response to the upgrade: {first}")),
        Err(e) => return Err(format!("bad response to the upgrade ({e}): {first}")),
    }
    let value = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    match value("sec-websocket-accept") {
        Some(v) if v == accept => {}
        v => {
            return Err(format!(
                "bad Sec-WebSocket-Accept {v:?} (expected {accept})"
            ))
        }
    }
    let ext = value("sec-websocket-extensions").unwrap_or_default();
    let agreed = ext.contains("permessage-deflate");
    match (offered_deflate, agreed, ext.is_empty()) {
        (false, _, false) => Err("server negotiated an extension that was not offered".into()),
        (true, false, _) => Err(format!(
            "permessage-deflate offered but not agreed: {first}"
        )),
        _ => Ok(ext),
    }
}

/// (header length, payload length) of the frame at the start of `b`; None until the header
/// (2, 4 or 10 bytes) is complete.
#[inline]
pub fn frame_header(b: &[u8]) -> Option<(usize, u64)> {
    if b.len() < 2 {
        return None;
    }
    match b[1] & 0x7f {
        126 => (b.len() >= 4).then(|| (4, u16::from_be_bytes([b[2], b[3]]) as u64)),
        127 => (b.len() >= 10).then(|| (10, u64::from_be_bytes(b[2..10].try_into().unwrap()))),
        n => Some((2, n as u64)),
    }
}

/// Appends one masked client frame (FIN set).
pub fn push_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let n = payload.len();
    out.push(0x80 | opcode);
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// One whole message (fragments joined) or control frame from the server.
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    pub opcode: u8,
    /// RSV1 on its first frame: permessage-deflate compressed
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Incremental reader of server frames. Complete frames are handled straight from the bytes
/// read; only a frame split across reads is copied.
#[derive(Default)]
pub struct Reader {
    /// permessage-deflate was agreed: RSV1 allowed on a message's first frame
    deflate: bool,
    /// the start of a frame whose rest has not arrived yet
    fbuf: Vec<u8>,
    /// a fragmented message being reassembled: (opcode, compressed)
    frag: Option<(u8, bool)>,
    msg: Vec<u8>,
}

impl Reader {
    pub fn new(deflate: bool) -> Reader {
        Reader {
            deflate,
            ..Reader::default()
        }
    }

    pub fn clear(&mut self) {
        self.fbuf.clear();
        self.msg.clear();
        self.frag = None;
    }

    /// Feeds bytes read after the `101`; `on` gets every message and control frame.
    pub fn feed<F>(&mut self, mut data: &[u8], on: &mut F) -> Result<(), String>
    where
        F: FnMut(Msg<'_>) -> Result<(), String>,
    {
        // Complete a frame begun in an earlier read, copying only that frame's bytes.
        while !self.fbuf.is_empty() && !data.is_empty() {
            let want = match frame_header(&self.fbuf) {
                Some((hl, len)) if len <= MAX_FRAME => hl + len as usize,
                Some((_, len)) => return Err(format!("server frame of {len} bytes")),
                None if self.fbuf.len() < 2 => 2,
                None if self.fbuf[1] & 0x7f == 126 => 4,
                None => 10,
            };
            let take = (want - self.fbuf.len()).min(data.len());
            self.fbuf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if matches!(frame_header(&self.fbuf), Some((hl, len)) if (hl as u64 + len) == self.fbuf.len() as u64)
            {
                let buf = std::mem::take(&mut self.fbuf);
                let r = self.frames(&buf, on);
                self.fbuf = buf;
                self.fbuf.clear();
                r?;
            }
        }
        if !data.is_empty() {
            let used = self.frames(data, on)?;
            self.fbuf.extend_from_slice(&data[used..]);
        }
        Ok(())
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes they took.
    fn frames<F>(&mut self, buf: &[u8], on: &mut F) -> Result<usize, String>
    where
        F: FnMut(Msg<'_>) -> Result<(), String>,
    {
        let mut i = 0;
        while let Some((hl, len)) = frame_header(&buf[i..]) {
            let (b0, b1) = (buf[i], buf[i + 1]);
            if b1 & 0x80 != 0 {
                return Err("server sent a masked frame".into());
            }
            let rsv = b0 & 0x70;
            if rsv != 0 && !(self.deflate && rsv == 0x40 && b0 & 0x0f != 0) {
                return Err(format!("server frame with RSV bits {rsv:#x}"));
            }
            if len > MAX_FRAME {
                return Err(format!("server frame of {len} bytes"));
            }
            let end = i + hl + len as usize;
            if end > buf.len() {
                break;
            }
            self.frame(b0, &buf[i + hl..end], on)?;
            i = end;
        }
        Ok(i)
    }

    fn frame<F>(&mut self, b0: u8, payload: &[u8], on: &mut F) -> Result<(), String>
    where
        F: FnMut(Msg<'_>) -> Result<(), String>,
    {
        let (fin, compressed, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        match opcode {
            0x1 | 0x2 if self.frag.is_some() => Err("new message inside a fragmented one".into()),
            0x1 | 0x2 if fin => on(Msg {
                opcode,
                compressed,
                payload,
            }),
            0x1 | 0x2 => {
                self.frag = Some((opcode, compressed));
                self.msg.clear();
                self.msg.extend_from_slice(payload);
                Ok(())
            }
            0x0 => {
                let Some((opcode, compressed)) = self.frag else {
                    return Err("continuation frame without a message".into());
                };
                self.msg.extend_from_slice(payload);
                if self.msg.len() as u64 > MAX_FRAME {
                    return Err("fragmented message over 16 MiB".into());
                }
                if !fin {
                    return Ok(());
                }
                self.frag = None;
                let m = std::mem::take(&mut self.msg);
                let r = on(Msg {
                    opcode,
                    compressed,
                    payload: &m,
                });
                self.msg = m;
                r
            }
            0x8..=0xA => on(Msg {
                opcode,
                compressed: false,
                payload,
            }),
            op => Err(format!("server frame with opcode {op:#x}")),
        }
    }
}

/// What a subscriber's connections to one server share.
pub struct Config {
    pub path: String,
    pub host: String,
    /// unmasked text message sent after the `101`; None when the URL subscribes
    pub subscribe: Option<Vec<u8>>,
}

/// A subscriber's WebSocket: upgrade request, `101` check, subscribe message, then frames;
/// pings are answered with masked pongs, a close frame ends it.
pub struct Client {
    cfg: Arc<Config>,
    /// this attempt's upgrade request (fresh key per attempt)
    pub req: Vec<u8>,
    /// expected `Sec-WebSocket-Accept`
    pub accept: String,
    head: Vec<u8>,
    upgraded: bool,
    /// frames to send (subscribe, pongs), not yet written
    pub out: Vec<u8>,
    reader: Reader,
    rng: u64,
    /// the server closed with 4008 (slow consumer)
    pub slow: bool,
}

impl Client {
    pub fn new(cfg: Arc<Config>, seed: u64) -> Client {
        Client {
            cfg,
            req: Vec::new(),
            accept: String::new(),
            head: Vec::new(),
            upgraded: false,
            out: Vec::new(),
            reader: Reader::new(false),
            rng: seed | 1,
            slow: false,
        }
    }

    /// A new attempt: a fresh key and request, empty buffers.
    pub fn reset(&mut self) {
        let key = tungstenite::handshake::client::generate_key();
        self.accept = accept_for(&key);
        self.req = upgrade_request(&self.cfg.path, &self.cfg.host, &key, false);
        self.head.clear();
        self.upgraded = false;
        self.out.clear();
        self.reader.clear();
        self.slow = false;
    }

    /// The `101` arrived and was accepted.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// xorshift64*, for masking keys (RFC 6455 wants them unpredictable, not cryptographic here)
    fn rand32(rng: &mut u64) -> u32 {
        let mut x = *rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Feeds bytes read from the server; `on_data` gets each text or binary message.
    pub fn feed<F>(&mut self, data: &[u8], on_data: &mut F) -> Result<(), String>
    where
        F: FnMut(&[u8]) -> Result<(), String>,
    {
        if self.upgraded {
            return self.feed_frames(data, on_data);
        }
        self.head.extend_from_slice(data);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let n = match httparse::Response::new(&mut headers).parse(&self.head) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.head.len() > 16 * 1024 => {
                return Err("response headers over 16 KiB".into())
            }
            Ok(httparse::Status::Partial) => return Ok(()),
            Err(e) => return Err(format!("bad response head: {e}")),
        };
        check_upgrade(&self.head[..n], &self.accept, false)?;
        self.upgraded = true;
        if let Some(sub) = &self.cfg.subscribe {
            let mask = Self::rand32(&mut self.rng).to_ne_bytes();
            push_client_frame(&mut self.out, 0x1, sub, mask);
        }
        let rest = self.head.split_off(n);
        self.head = Vec::new();
        self.feed_frames(&rest, on_data)
    }

    fn feed_frames<F>(&mut self, data: &[u8], on_data: &mut F) -> Result<(), String>
    where
        F: FnMut(&[u8]) -> Result<(), String>,
    {
        let Client {
            reader,
            out,
            rng,
            slow,
            ..
        } = self;
        reader.feed(data, &mut |m: Msg<'_>| match m.opcode {
            0x1 | 0x2 => on_data(m.payload),
            0x8 => {
                let p = m.payload;
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                *slow = code == 4008;
                Err(format!(
                    "server closed the WebSocket: {code} {}",
                    String::from_utf8_lossy(p.get(2..).unwrap_or(&[]))
                ))
            }
            0x9 => {
                push_client_frame(out, 0xA, m.payload, Self::rand32(rng).to_ne_bytes());
                Ok(())
            }
            _ => Ok(()),
        })
    }
}
