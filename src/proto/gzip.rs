//! gzip for event streams (RFC 1952 around RFC 1951 blocks).
//!
//! A gzip stream here is the 10-byte header, then chunks that each end in
//! a full flush (byte-aligned, no reference to earlier data, so every chunk
//! decodes as soon as it arrives and one compressed event can be shared by
//! every subscriber), then at a graceful end a final empty block and the
//! trailer. Only the CRC-32 and length of what a connection was sent are
//! kept per connection.

use super::deflate::{self, SYNC_TAIL};

/// Member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

/// A final, empty fixed-Huffman block: ends the deflate stream.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// One self-contained, flushed chunk of `payload`.
pub fn chunk(payload: &[u8]) -> Vec<u8> {
    let mut out = deflate::compress(payload, deflate::WindowBits::MAX);
    out.extend_from_slice(&SYNC_TAIL);
    out
}

/// What one connection's gzip stream has carried so far.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    crc: crc32fast::Hasher,
    len: u32,
}

impl Trail {
    /// Records uncompressed bytes that went out in a chunk.
    pub fn update(&mut self, raw: &[u8]) {
        self.crc.update(raw);
        // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
        self.len = self.len.wrapping_add(raw.len() as u32);
    }

    /// The end of the stream: final block, CRC-32 and length (mod 2^32).
    pub fn finish(&self) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..2].copy_from_slice(&FINAL_BLOCK);
        out[2..6].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        out[6..].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// Whether `Accept-Encoding` admits gzip (a `gzip` token without `q=0`).
pub fn accepts(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|list| {
        list.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !zero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn chunks_concatenate_into_a_stream_that_decodes_piece_by_piece() {
        let parts: [&[u8]; 3] = [b"retry: 100\n\n", b"id: 1\ndata: {}\n\n", b": ping\n\n"];
        let mut stream = HEADER.to_vec();
        let mut trail = Trail::default();
        let mut decoder_input = Vec::new();
        for p in parts {
            let c = chunk(p);
            trail.update(p);
            stream.extend_from_slice(&c);
            // Every prefix that ends at a chunk boundary decodes in full.
            decoder_input.clone_from(&stream);
            let mut d = flate2::read::DeflateDecoder::new(&decoder_input[HEADER.len()..]);
            let mut out = Vec::new();
            let _ = d.read_to_end(&mut out);
            assert!(out.ends_with(p), "chunk decodes on arrival");
        }
        stream.extend_from_slice(&trail.finish());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&stream[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(
            out, "retry: 100\n\nid: 1\ndata: {}\n\n: ping\n\n",
            "CRC and length check out"
        );
    }

    #[test]
    fn accept_encoding_tokens() {
        let table = [
            (Some("gzip, deflate, br"), true),
            (Some("br;q=1.0, gzip;q=0.8"), true),
            (Some("GZIP"), true),
            (Some("gzip;q=0"), false),
            (Some("identity"), false),
            (None, false),
        ];
        for (header, want) in table {
            assert_eq!(accepts(header), want, "{header:?}");
        }
    }
}
