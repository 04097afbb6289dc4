//! Compression and inflation: RFC 7692 §7.2.3 vectors, round trips through
//! a strict raw inflater of every window size, caps and corrupt input.

use super::strict;
use super::*;

/// RFC 7692 §7.2.3.1: "Hello" in one fixed-Huffman block.
const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

fn w(bits: u8) -> WindowBits {
    WindowBits::new(bits).expect("8..=15")
}

/// Inflates `compressed` (tail stripped) the way a client with a 2^bits
/// window may: any reference further back than that is an error.
fn client_inflate(compressed: &[u8], bits: u8) -> Result<Vec<u8>, &'static str> {
    strict::inflate(&[compressed, &SYNC_TAIL].concat(), bits)
}

/// `len` bytes no compressor can shrink (xorshift), from `seed`.
fn noise(len: usize, mut seed: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect()
}

#[test]
fn rfc7692_hello_inflates() {
    assert_eq!(inflate(&HELLO, 100).unwrap(), b"Hello");
    assert_eq!(inflate(&HELLO, 100).unwrap(), b"Hello");
}

#[test]
fn rfc7692_other_encodings_of_hello() {
    let table: [&[u8]; 3] = [
        // §7.2.3.4: a final block (BFINAL=1); the byte after it is ignored.
        &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
        // §7.2.3.3: a stored (uncompressed) block.
        &[
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ],
        // §7.2.3.5: two blocks, the first with BFINAL=0, then a final one.
        &[
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ],
    ];
    for c in table {
        assert_eq!(inflate(c, 100).unwrap(), b"Hello", "{c:x?}");
    }
}

#[test]
fn a_reference_into_an_earlier_message_is_corrupt() {
    // §7.2.3.2: the second "Hello" of a context-taking-over client refers
    // back into the first. Every client agreed not to do that.
    let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
    assert_eq!(inflate(&second, 100), Err(InflateError::Corrupt));
}

#[test]
fn empty_message_is_a_single_zero_byte() {
    // Deflate of nothing: one stored-block header byte once the tail is cut.
    for bits in 8..=15 {
        assert_eq!(compress(b"", w(bits)), [0x00]);
    }
    assert_eq!(inflate(&[0x00], 10).unwrap(), b"");
}

#[test]
fn compress_round_trips_and_never_ends_with_the_tail() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let json = br#"{"type":"trade","data":[{"s":"AAPL","p":189.5,"v":100}]}"#.repeat(50);
    let table: [&[u8]; 5] = [b"Hello", b"a", &json, &big, &[0u8; 70_000]];
    for bits in 8..=15 {
        for payload in table {
            let c = compress(payload, w(bits));
            assert!(!c.ends_with(&SYNC_TAIL));
            assert_eq!(inflate(&c, 1 << 20).unwrap(), payload, "window {bits}");
        }
        // Short-range repeats still compress in the smallest window.
        assert!(
            compress(&json, w(bits)).len() < json.len() / 4,
            "window {bits}"
        );
    }
}

#[test]
fn every_window_reads_in_a_client_window_of_that_size() {
    for bits in 8..=15u8 {
        let window = 1usize << bits;
        // Noise repeated at a distance over the window, plus short repeats:
        // a 15-bit compressor would refer back across the whole block.
        let block = noise(window + window / 2, u32::from(bits));
        let json = br#"{"s":"AAPL","p":189.5,"v":100}"#.repeat(40);
        let payload = [&block[..], &json, &block, &block].concat();
        assert!(payload.len() > window);
        let c = compress(&payload, w(bits));
        let got = client_inflate(&c, bits);
        assert_eq!(got.as_deref(), Ok(&payload[..]), "window {bits}");
        if bits < 15 {
            // The check has teeth: the full window refers too far back.
            let wide = compress(&payload, WindowBits::MAX);
            assert!(
                wide.len() < c.len(),
                "window {bits}: 15 bits reach the repeats"
            );
            assert!(client_inflate(&wide, bits).is_err(), "window {bits}");
        }
    }
}

#[test]
fn window_bits_parse_and_map_to_compressors() {
    let table: [(&str, Option<u8>, usize); 8] = [
        ("8", Some(8), 0),
        ("9", Some(9), 0),
        ("12", Some(12), 3),
        ("15", Some(15), 6),
        ("16", None, 0),
        ("7", None, 0),
        ("08", None, 0),
        ("", None, 0),
    ];
    for (text, bits, index) in table {
        let got = WindowBits::parse(text);
        assert_eq!(got.map(WindowBits::get), bits, "{text:?}");
        if let Some(b) = got {
            assert_eq!(b.compressor_index(), index, "{text:?}");
            assert!(b.compressor_index() < WindowBits::COMPRESSORS);
        }
    }
    // 8 and 9 share a compressor, so they share compressed bytes too.
    let payload = noise(2000, 7).repeat(2);
    assert_eq!(compress(&payload, w(8)), compress(&payload, w(9)));
}

#[test]
fn compression_is_stateless_per_message() {
    let event = b"the same event, twice: the same event";
    for bits in [8, 10, 15] {
        let first = compress(event, w(bits));
        // A message in between that the next could otherwise refer to.
        let other = compress(&event.repeat(3), w(bits));
        let again = compress(event, w(bits));
        assert_eq!(first, again);
        for c in [&first, &other, &again] {
            assert!(inflate(c, 1000).is_ok_and(|p| p.starts_with(event)));
            assert!(client_inflate(c, bits).is_ok_and(|p| p.starts_with(event)));
        }
    }
}

#[test]
fn zip_bomb_stops_at_the_cap() {
    // 10 MiB of zeros at the best level: about 10 KiB on the wire.
    let zeros = vec![0u8; 10 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut bomb = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut bomb, FlushCompress::Sync)
        .unwrap();
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooBig));
    assert_eq!(inflate(&bomb, 10 << 20).unwrap().len(), 10 << 20);
    let hundred = compress(&[1; 100], WindowBits::MAX);
    assert_eq!(inflate(&hundred, 99), Err(InflateError::TooBig));
    assert_eq!(inflate(&hundred, 100).unwrap().len(), 100);
}

#[test]
fn corrupt_streams_are_refused() {
    let table: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0xff],
        // Reserved block type 11.
        &[0x07],
        // Stored block whose length check fails.
        &[0x00, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5],
    ];
    for c in table {
        assert_eq!(inflate(c, 100), Err(InflateError::Corrupt), "{c:x?}");
    }
}

#[test]
fn the_strict_inflater_reads_the_rfc_vectors_and_enforces_its_window() {
    let vectors: [&[u8]; 3] = [
        &HELLO,
        &[
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ],
        &[
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ],
    ];
    for v in vectors {
        assert_eq!(client_inflate(v, 8).as_deref(), Ok(&b"Hello"[..]), "{v:x?}");
    }
    // Dynamic blocks, checked against zlib on output zlib-rs made.
    let text = br#"{"s":"AAPL","p":189.5,"v":100,"c":["@","T"]}"#.repeat(300);
    let mut c = Compress::new(Compression::best(), false);
    let mut packed = Vec::with_capacity(1 << 16);
    c.compress_vec(&text, &mut packed, FlushCompress::Sync)
        .unwrap();
    packed.truncate(packed.len() - SYNC_TAIL.len());
    assert_eq!(client_inflate(&packed, 15).as_deref(), Ok(&text[..]));
    assert_eq!(inflate(&packed, 1 << 20).as_deref(), Ok(&text[..]));
    // 600 bytes of noise, then the same again: one reference 600 back.
    let twice = noise(600, 1).repeat(2);
    let wide = compress(&twice, WindowBits::MAX);
    assert_eq!(client_inflate(&wide, 10).as_deref(), Ok(&twice[..]));
    assert_eq!(client_inflate(&wide, 9), Err("distance past the window"));
}
