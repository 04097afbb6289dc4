//! A reference raw inflater (RFC 1951, after the design of zlib's
//! `contrib/puff`) for tests, whose window is exactly 2^bits bytes: a
//! distance past it is an error. zlib proper does not do: an inflater only
//! fails on a distance past what it has kept, and zlib-rs keeps 32 KiB
//! whatever window it is asked for, zlib keeps whatever its output buffer
//! still holds. This one states what a client with that window may rely on.

/// Code-length code order (RFC 1951 §3.2.7).
const ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];
const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

type Res<T> = Result<T, &'static str>;

/// A canonical Huffman code: how many codes of each length, and the
/// symbols in code order.
struct Huffman {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        let mut offs = [0u16; 16];
        for len in 1..15 {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[usize::from(offs[usize::from(l)])] = sym as u16;
                offs[usize::from(l)] += 1;
            }
        }
        Huffman { count, symbol }
    }
}

struct Inflate<'a> {
    input: &'a [u8],
    pos: usize,
    bitbuf: u64,
    bitcnt: u32,
    out: Vec<u8>,
    window: usize,
}

/// Inflates a raw deflate stream that ends at the end of `input` (or in a
/// final block) with a 2^`bits`-byte window.
pub fn inflate(input: &[u8], bits: u8) -> Res<Vec<u8>> {
    let mut s = Inflate {
        input,
        pos: 0,
        bitbuf: 0,
        bitcnt: 0,
        out: Vec::new(),
        window: 1 << bits,
    };
    loop {
        let last = s.bits(1)? == 1;
        match s.bits(2)? {
            0 => s.stored()?,
            1 => s.fixed()?,
            2 => s.dynamic()?,
            _ => return Err("reserved block type"),
        }
        if last || s.pos == s.input.len() {
            return Ok(s.out);
        }
    }
}

impl Inflate<'_> {
    fn bits(&mut self, need: u32) -> Res<u32> {
        while self.bitcnt < need {
            let byte = *self.input.get(self.pos).ok_or("out of input")?;
            self.pos += 1;
            self.bitbuf |= u64::from(byte) << self.bitcnt;
            self.bitcnt += 8;
        }
        let v = (self.bitbuf & ((1 << need) - 1)) as u32;
        self.bitbuf >>= need;
        self.bitcnt -= need;
        Ok(v)
    }

    fn stored(&mut self) -> Res<()> {
        (self.bitbuf, self.bitcnt) = (0, 0);
        let head = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or("out of input")?;
        let len = u16::from_le_bytes([head[0], head[1]]);
        if len != !u16::from_le_bytes([head[2], head[3]]) {
            return Err("stored length check");
        }
        let start = self.pos + 4;
        let data = self
            .input
            .get(start..start + usize::from(len))
            .ok_or("out of input")?;
        self.out.extend_from_slice(data);
        self.pos = start + usize::from(len);
        Ok(())
    }

    fn fixed(&mut self) -> Res<()> {
        let mut lengths = [8u8; 288];
        lengths[144..256].fill(9);
        lengths[256..280].fill(7);
        self.codes(&Huffman::new(&lengths), &Huffman::new(&[5; 30]))
    }

    fn dynamic(&mut self) -> Res<()> {
        let nlen = self.bits(5)? as usize + 257;
        let ndist = self.bits(5)? as usize + 1;
        let ncode = self.bits(4)? as usize + 4;
        let mut lengths = [0u8; 19];
        for &i in &ORDER[..ncode] {
            lengths[i] = self.bits(3)? as u8;
        }
        let lencode = Huffman::new(&lengths);
        let mut lens = Vec::with_capacity(nlen + ndist);
        while lens.len() < nlen + ndist {
            let (value, repeat) = match self.decode(&lencode)? {
                sym @ 0..=15 => (sym as u8, 1),
                16 => (
                    *lens.last().ok_or("repeat with no length")?,
                    3 + self.bits(2)?,
                ),
                17 => (0, 3 + self.bits(3)?),
                _ => (0, 11 + self.bits(7)?),
            };
            lens.extend(std::iter::repeat_n(value, repeat as usize));
        }
        if lens.len() != nlen + ndist {
            return Err("too many lengths");
        }
        let (lit, dist) = lens.split_at(nlen);
        self.codes(&Huffman::new(lit), &Huffman::new(dist))
    }

    fn decode(&mut self, h: &Huffman) -> Res<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= self.bits(1)? as i32;
            let count = i32::from(h.count[len]);
            if code - count < first {
                return Ok(h.symbol[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("bad code")
    }

    fn codes(&mut self, lit: &Huffman, dist: &Huffman) -> Res<()> {
        loop {
            let sym = usize::from(self.decode(lit)?);
            match sym {
                0..=255 => self.out.push(sym as u8),
                256 => return Ok(()),
                _ => {
                    let i = sym - 257;
                    let base = *LEN_BASE.get(i).ok_or("bad length symbol")?;
                    let len = usize::from(base) + self.bits(u32::from(LEN_EXTRA[i]))? as usize;
                    let d = usize::from(self.decode(dist)?);
                    let base = *DIST_BASE.get(d).ok_or("bad distance symbol")?;
                    let back = usize::from(base) + self.bits(u32::from(DIST_EXTRA[d]))? as usize;
                    if back > self.window {
                        return Err("distance past the window");
                    }
                    if back > self.out.len() {
                        return Err("distance before the start");
                    }
                    for _ in 0..len {
                        self.out.push(self.out[self.out.len() - back]);
                    }
                }
            }
        }
    }
}
