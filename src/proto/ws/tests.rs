//! Tests of the WebSocket core: RFC 6455 vectors, every close-code path,
//! fragmentation and fail-fast UTF-8.
use super::*;
use std::mem;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX: usize = 1 << 16;

/// Client frames, each as it goes on the wire.
type Frames = Vec<Vec<u8>>;
/// An expected outcome, or the close code of the expected failure.
type Code<T> = Result<T, u16>;
/// A parsed close frame's code and reason.
type Close<'a> = Option<(u16, &'a str)>;

/// A masked client frame, as a browser would send it.
fn client(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let op = OpCode::from_bits(opcode).unwrap_or(OpCode::Binary);
    let (h, n) = frame_header(op, fin, rsv1, payload.len() as u64);
    let mut out = h[..n].to_vec();
    out[0] = (out[0] & 0xf0) | opcode;
    out[1] |= 0x80;
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], MASK, 0);
    out
}

/// Decodes `pieces` as they would arrive in a read buffer, the way the
/// reactor drives it: consume what it can, keep the rest for the next read.
fn decode_pieces<'a>(
    r: &mut Reassembler,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Message>, WsError> {
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            let (n, msg) = r.decode(&mut pending)?;
            pending.drain(..n);
            out.extend(msg);
            if n == 0 {
                break;
            }
        }
    }
    assert!(pending.is_empty(), "left over: {pending:x?}");
    Ok(out)
}

/// Decodes `wire` arriving `step` bytes at a time.
fn decode_all(r: &mut Reassembler, wire: &[u8], step: usize) -> Result<Vec<Message>, WsError> {
    decode_pieces(r, wire.chunks(step.max(1)))
}

fn decode(wire: &[u8]) -> Result<Vec<Message>, WsError> {
    decode_all(&mut Reassembler::new(MAX, None), wire, wire.len())
}

fn text_msg(s: &str) -> Message {
    Message::Text(s.to_string())
}

#[test]
fn rfc6455_accept_key() {
    let accept = check_upgrade(
        true,
        Some("websocket"),
        true,
        Some("13"),
        Some("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    assert_eq!(accept.as_deref(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

#[test]
fn upgrade_errors_map_to_statuses() {
    let key = Some("dGhlIHNhbXBsZSBub25jZQ==");
    type Case<'a> = (
        bool,
        Option<&'a str>,
        bool,
        Option<&'a str>,
        Option<&'a str>,
    );
    let table: [(Case, Result<(), UpgradeError>, u16); 13] = [
        (
            (true, Some("WebSocket"), true, Some("13"), key),
            Ok(()),
            101,
        ),
        (
            (true, Some("h2c, websocket"), true, Some("13"), key),
            Ok(()),
            101,
        ),
        (
            (false, Some("websocket"), true, Some("13"), key),
            Err(UpgradeError::NotGet),
            405,
        ),
        (
            (true, None, true, Some("13"), key),
            Err(UpgradeError::NoUpgradeHeader),
            426,
        ),
        (
            (true, Some("h2c"), true, Some("13"), key),
            Err(UpgradeError::NotWebSocket),
            400,
        ),
        (
            (true, Some("websocket"), false, Some("13"), key),
            Err(UpgradeError::NoConnectionUpgrade),
            400,
        ),
        (
            (true, Some("websocket"), true, Some("8"), key),
            Err(UpgradeError::Version),
            426,
        ),
        (
            (true, Some("websocket"), true, None, key),
            Err(UpgradeError::Version),
            426,
        ),
        (
            (true, Some("websocket"), true, Some("13"), None),
            Err(UpgradeError::BadKey),
            400,
        ),
        // 12 bytes, not 16.
        (
            (
                true,
                Some("websocket"),
                true,
                Some("13"),
                Some("AAAAAAAAAAAAAAAA"),
            ),
            Err(UpgradeError::BadKey),
            400,
        ),
        (
            (
                true,
                Some("websocket"),
                true,
                Some("13"),
                Some("dGhlIHNhbXBsZSBub25jZQ"),
            ),
            Err(UpgradeError::BadKey),
            400,
        ),
        (
            (
                true,
                Some("websocket"),
                true,
                Some("13"),
                Some("dGhlIHNhbXBsZSBub25jZ*=="),
            ),
            Err(UpgradeError::BadKey),
            400,
        ),
        (
            (
                true,
                Some("websocket"),
                true,
                Some("13"),
                Some("dGhlIHNhbXBsZSBub25jZQ=A"),
            ),
            Err(UpgradeError::BadKey),
            400,
        ),
    ];
    for ((get, up, conn, ver, key), want, status) in table {
        let got = check_upgrade(get, up, conn, ver, key).map(|_| ());
        assert_eq!(got, want, "{up:?} {ver:?} {key:?}");
        if let Err(e) = got {
            assert_eq!(e.status(), status);
        }
    }
    let r = String::from_utf8(UpgradeError::Version.response(false)).unwrap_or_default();
    assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
    assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
    assert!(r.contains("upgrade_required"), "{r}");
}

#[test]
fn accept_response_lines() {
    let r = accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None);
    assert_eq!(
        r,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    let r = accept_response("x", Some("permessage-deflate; server_no_context_takeover"));
    assert!(r.ends_with(
        b"Sec-WebSocket-Accept: x\r\n\
Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
    ));
}

#[test]
fn rfc6455_masked_hello() {
    // RFC 6455 §5.7: a single-frame masked text message.
    let wire = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(client(0x1, true, false, b"Hello"), wire);
    assert_eq!(decode(&wire), Ok(vec![text_msg("Hello")]));
    let (h, hl) = parse_frame(&wire, 125, false).unwrap().unwrap();
    assert_eq!(
        (h.opcode, h.fin, h.len, h.mask, hl),
        (OpCode::Text, true, 5, MASK, 6)
    );
}

#[test]
fn rfc6455_server_frames() {
    // RFC 6455 §5.7 unmasked examples.
    assert_eq!(text("Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(ping(b"Hello"), [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(pong(b"Hello")[0], 0x8a);
    let table: [(u64, &[u8]); 6] = [
        (0, &[0x82, 0x00]),
        (125, &[0x82, 125]),
        (126, &[0x82, 126, 0x00, 126]),
        (256, &[0x82, 0x7e, 0x01, 0x00]),
        (65535, &[0x82, 0x7e, 0xff, 0xff]),
        (65536, &[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]),
    ];
    for (len, want) in table {
        let (h, n) = frame_header(OpCode::Binary, true, false, len);
        assert_eq!(&h[..n], want, "{len}");
    }
    let (h, n) = frame_header(OpCode::Text, false, true, 3);
    assert_eq!(&h[..n], [0x41, 3]);
    assert_eq!(
        compressed_text("Hello", deflate::WindowBits::MAX),
        [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
    );
}

#[test]
fn close_frames_cut_reason_at_char_boundary() {
    assert_eq!(close_frame(1000, ""), [0x88, 0x02, 0x03, 0xe8]);
    assert_eq!(
        close_frame(4008, "slow"),
        [0x88, 0x06, 0x0f, 0xa8, b's', b'l', b'o', b'w']
    );
    let long = "é".repeat(100);
    let f = close_frame(1001, &long);
    assert_eq!(f.len(), 2 + 2 + 122);
    assert_eq!(
        parse_close(&f[2..]).map(|c| c.map(|c| c.reason.len())),
        Ok(Some(122))
    );
    assert_eq!(ping(&[7; 200]).len(), 2 + MAX_CONTROL);
}

#[test]
fn header_errors_carry_close_codes() {
    let m = [0x82, 0x85, 1, 2, 3, 4];
    let table: [(&[u8], bool, u64, u16); 15] = [
        (&[0x91, 0x80], false, MAX as u64, 1002), // RSV3
        (&[0xa1, 0x80], false, MAX as u64, 1002), // RSV2
        (&[0xc1, 0x80], false, MAX as u64, 1002), // RSV1 without deflate
        (&[0xc0, 0x80], true, MAX as u64, 1002),  // RSV1 on a continuation
        (&[0xc9, 0x80], true, MAX as u64, 1002),  // RSV1 on a ping
        (&[0x83, 0x80], false, MAX as u64, 1002), // reserved data opcode
        (&[0x8b, 0x80], false, MAX as u64, 1002), // reserved control opcode
        (&[0x09, 0x80], false, MAX as u64, 1002), // fragmented ping
        (&[0x89, 0xfe], false, MAX as u64, 1002), // ping of 126 bytes
        (&[0x88, 0xff], false, MAX as u64, 1002), // close with 64-bit length
        (&[0x81, 0x05], false, MAX as u64, 1002), // unmasked
        (
            &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
            false,
            u64::MAX,
            1002,
        ),
        (&[0x82, 0xfe, 0x01, 0x00], false, 255, 1009),
        (
            &[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0],
            false,
            MAX as u64,
            1009,
        ),
        (&m, false, 4, 1009),
    ];
    for (wire, rsv1, max, code) in table {
        let got = parse_header(wire, max, rsv1).map_err(|e| e.code);
        assert_eq!(got, Err(code), "{wire:x?}");
    }
    // RSV1 is fine on the first frame of a message once deflate is agreed.
    assert!(parse_header(&[0xc1, 0x80, 0, 0, 0, 0], 10, true).is_ok_and(|h| h.is_some()));
    assert!(parse_header(&[0x41, 0x80, 0, 0, 0, 0], 10, true).is_ok_and(|h| h.is_some()));
}

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    for len in [0usize, 5, 125, 126, 300, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let wire = client(0x2, true, false, &payload);
        for cut in 0..wire.len() {
            assert_eq!(
                parse_frame(&wire[..cut], 1 << 20, false),
                Ok(None),
                "{len} cut {cut}"
            );
        }
        let (h, hl) = parse_frame(&wire, 1 << 20, false).unwrap().unwrap();
        assert_eq!((h.len as usize, hl + len), (len, wire.len()));
        let mut body = wire[hl..].to_vec();
        unmask(&mut body, h.mask, 0);
        assert_eq!(body, payload);
    }
}

#[test]
fn non_minimal_lengths_are_accepted() {
    let table: [&[u8]; 2] = [
        &[0x81, 0xfe, 0x00, 0x02, 0, 0, 0, 0, b'h', b'i'],
        &[
            0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, b'h', b'i',
        ],
    ];
    for wire in table {
        assert_eq!(decode(wire), Ok(vec![text_msg("hi")]));
    }
}

#[test]
fn unmask_matches_bytewise_at_every_offset_and_length() {
    let mask = [0xde, 0xad, 0xbe, 0xef];
    for len in 0..40 {
        for offset in 0..8 {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut fast = plain.clone();
            unmask(&mut fast, mask, offset);
            let slow: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(i + offset) % 4])
                .collect();
            assert_eq!(fast, slow, "len {len} offset {offset}");
        }
    }
    // Unmasking in pieces equals unmasking at once.
    let mut whole: Vec<u8> = (0..100).collect();
    let mut pieces = whole.clone();
    unmask(&mut whole, mask, 0);
    let (a, rest) = pieces.split_at_mut(7);
    let (b, c) = rest.split_at_mut(30);
    unmask(a, mask, 0);
    unmask(b, mask, 7);
    unmask(c, mask, 37);
    assert_eq!(whole, pieces);
}

#[test]
fn fragmentation_rules() {
    let ping = client(0x9, true, false, b"p");
    let table: Vec<(Frames, Code<Vec<Message>>)> = vec![
        // Autobahn 5.3: text in two fragments.
        (
            vec![
                client(0x1, false, false, b"frag"),
                client(0x0, true, false, b"ment"),
            ],
            Ok(vec![text_msg("fragment")]),
        ),
        // 5.6: a ping between fragments comes out at once.
        (
            vec![
                client(0x1, false, false, b"a"),
                ping.clone(),
                client(0x0, true, false, b"b"),
            ],
            Ok(vec![Message::Ping(b"p".to_vec()), text_msg("ab")]),
        ),
        // Empty fragments are fine.
        (
            vec![
                client(0x2, false, false, b""),
                client(0x0, false, false, b""),
                client(0x0, true, false, b""),
            ],
            Ok(vec![Message::Binary(vec![])]),
        ),
        // 5.9: continuation without a start.
        (vec![client(0x0, true, false, b"x")], Err(1002)),
        // 5.15: a continuation after the message ended.
        (
            vec![
                client(0x1, false, false, b"a"),
                client(0x0, true, false, b"b"),
                client(0x0, false, false, b"c"),
            ],
            Err(1002),
        ),
        // 5.18: a new text frame while one is in progress.
        (
            vec![
                client(0x1, false, false, b"a"),
                client(0x1, true, false, b"b"),
            ],
            Err(1002),
        ),
        // 5.1: a fragmented ping.
        (vec![client(0x9, false, false, b"p")], Err(1002)),
        // A close in the middle of a fragmented message is still a close.
        (
            vec![
                client(0x1, false, false, b"a"),
                client(0x8, true, false, &[0x03, 0xe8]),
            ],
            Ok(vec![Message::Close(Some(CloseFrame {
                code: 1000,
                reason: String::new(),
            }))]),
        ),
    ];
    for (frames, want) in table {
        let wire = frames.concat();
        let got = decode(&wire).map_err(|e| e.code);
        assert_eq!(got, want, "{wire:x?}");
        // Frame by frame through push gives the same answer.
        let mut r = Reassembler::new(MAX, None);
        let mut pushed = Ok(Vec::new());
        for f in &frames {
            let Ok(Some((h, hl))) = parse_frame(f, MAX as u64, false) else {
                pushed = Err(1002);
                break;
            };
            let mut body = f[hl..].to_vec();
            unmask(&mut body, h.mask, 0);
            match r.push(&h, &body) {
                Ok(m) => pushed
                    .as_mut()
                    .map(|v: &mut Vec<Message>| v.extend(m))
                    .unwrap_or(()),
                Err(e) => {
                    pushed = Err(e.code);
                    break;
                }
            }
        }
        assert_eq!(pushed, want, "push {wire:x?}");
    }
}

#[test]
fn split_at_every_byte_boundary() {
    let wire = [
        client(0x1, false, false, "κόσ".as_bytes()),
        client(0xa, true, false, b"pong"),
        client(0x0, true, false, "με".as_bytes()),
        client(0x2, true, false, &[9; 300]),
        client(0x8, true, false, &[0x03, 0xe9, b'b', b'y', b'e']),
    ]
    .concat();
    let want = vec![
        Message::Pong(b"pong".to_vec()),
        text_msg("κόσμε"),
        Message::Binary(vec![9; 300]),
        Message::Close(Some(CloseFrame {
            code: 1001,
            reason: "bye".into(),
        })),
    ];
    for step in 1..=wire.len() {
        let got = decode_all(&mut Reassembler::new(MAX, None), &wire, step);
        assert_eq!(got.as_ref(), Ok(&want), "step {step}");
    }
    // Two reads, cut at every position.
    for cut in 0..wire.len() {
        let got = decode_pieces(
            &mut Reassembler::new(MAX, None),
            [&wire[..cut], &wire[cut..]],
        );
        assert_eq!(got.as_ref(), Ok(&want), "cut {cut}");
    }
}

#[test]
fn utf8_across_fragments() {
    // Autobahn 6.2.x: a valid message split inside code points.
    let s = "Hello-µ@ßöäüàá-UTF-8!!\u{10348}";
    let bytes = s.as_bytes();
    for cut in 1..bytes.len() {
        let wire = [
            client(0x1, false, false, &bytes[..cut]),
            client(0x0, true, false, &bytes[cut..]),
        ]
        .concat();
        assert_eq!(decode(&wire), Ok(vec![text_msg(s)]), "cut {cut}");
    }
    let table: [&[u8]; 6] = [
        b"\xff",
        b"\xc0\xaf",         // overlong
        b"\xed\xa0\x80",     // surrogate
        b"\xf4\x90\x80\x80", // over U+10FFFF
        b"ok\xe2\x82",       // cut off at the end
        b"\xce\xba\xe1",     // cut off at the end
    ];
    for bad in table {
        let got = decode(&client(0x1, true, false, bad)).map_err(|e| e.code);
        assert_eq!(got, Err(1007), "{bad:x?}");
    }
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_fragment() {
    // Autobahn 6.4.1: valid, then a fragment making it invalid, then more.
    let mut r = Reassembler::new(MAX, None);
    let mut f1 = client(0x1, false, false, "κόσμε".as_bytes());
    let mut f2 = client(0x0, false, false, &[0xf4, 0x90, 0x80, 0x80]);
    assert_eq!(
        r.decode(&mut f1).map(|(n, m)| (n, m.is_none())),
        Ok((f1.len(), true))
    );
    assert_eq!(r.decode(&mut f2).map_err(|e| e.code), Err(1007));
    // Autobahn 6.4.3: the same inside one frame arriving in chops; the
    // error comes with the chop that holds the bad bytes, before the
    // frame's end.
    let payload = [
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5".as_slice(),
        b"\xf4\x90\x80\x80",
        b"\xce\xbc",
    ]
    .concat();
    let wire = client(0x1, true, false, &payload);
    let mut r = Reassembler::new(MAX, None);
    let mut first = wire[..6 + 11].to_vec();
    assert_eq!(
        r.decode(&mut first).map(|(n, m)| (n, m.is_none())),
        Ok((17, true))
    );
    let mut second = wire[17..19].to_vec();
    assert_eq!(r.decode(&mut second).map_err(|e| e.code), Err(1007));
    // A sequence that could still be completed is not an error yet.
    let mut r = Reassembler::new(MAX, None);
    let mut partial = client(0x1, false, false, b"ok\xe2\x82");
    assert!(r.decode(&mut partial).is_ok());
    let mut rest = client(0x0, true, false, b"\xac");
    assert_eq!(
        r.decode(&mut rest).map(|(_, m)| m),
        Ok(Some(text_msg("ok€")))
    );
}

#[test]
fn close_payload_rules() {
    let table: [(&[u8], Code<Close>); 16] = [
        (&[], Ok(None)),
        (&[0x03], Err(1002)),
        (&[0x03, 0xe8], Ok(Some((1000, "")))),
        (&[0x03, 0xe8, b'o', b'k'], Ok(Some((1000, "ok")))),
        (&[0x03, 0xeb], Ok(Some((1003, "")))),
        (&[0x03, 0xef], Ok(Some((1007, "")))),
        (&[0x03, 0xf3], Ok(Some((1011, "")))),
        (&[0x0b, 0xb8], Ok(Some((3000, "")))),
        (&[0x13, 0x87], Ok(Some((4999, "")))),
        (&[0x03, 0xe7], Err(1002)), // 999
        (&[0x03, 0xec], Err(1002)), // 1004
        (&[0x03, 0xed], Err(1002)), // 1005
        (&[0x03, 0xee], Err(1002)), // 1006
        (&[0x03, 0xf7], Err(1002)), // 1015
        (&[0x0b, 0xb7], Err(1002)), // 2999
        (&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xff], Err(1007)),
    ];
    for (payload, want) in table {
        let got = decode(&client(0x8, true, false, payload)).map_err(|e| e.code);
        let want = want.map(|c| {
            vec![Message::Close(c.map(|(code, reason)| CloseFrame {
                code,
                reason: reason.into(),
            }))]
        });
        assert_eq!(got, want, "{payload:x?}");
    }
    for (code, valid) in [
        (0, false),
        (1016, false),
        (1100, false),
        (2000, false),
        (5000, false),
        (1012, true),
        (1014, true),
        (4000, true),
    ] {
        assert_eq!(is_valid_close_code(code), valid, "{code}");
    }
}

#[test]
fn message_size_is_capped() {
    let table: [(Frames, Code<usize>); 4] = [
        (vec![client(0x2, true, false, &[0; 100])], Ok(100)),
        (vec![client(0x2, true, false, &[0; 101])], Err(1009)),
        (
            vec![
                client(0x1, false, false, &[b'a'; 60]),
                client(0x0, true, false, &[b'a'; 40]),
            ],
            Ok(100),
        ),
        (
            vec![
                client(0x1, false, false, &[b'a'; 60]),
                client(0x0, true, false, &[b'a'; 41]),
            ],
            Err(1009),
        ),
    ];
    for (frames, want) in table {
        let mut r = Reassembler::new(100, None);
        let got = decode_all(&mut r, &frames.concat(), 7).map_err(|e| e.code);
        let got = got.map(|m| match &m[..] {
            [Message::Text(t)] => t.len(),
            [Message::Binary(b)] => b.len(),
            _ => usize::MAX,
        });
        assert_eq!(got, want);
    }
    // The limit is reported from the header alone, before any payload.
    let mut r = Reassembler::new(100, None);
    let mut head = client(0x2, true, false, &[0; 1000])[..8].to_vec();
    assert_eq!(r.decode(&mut head).map_err(|e| e.code), Err(1009));
}

#[test]
fn large_fragmented_messages_assemble_in_linear_time() {
    // Autobahn 9.3.x: 4 MiB in 64-byte fragments, fed in 4 KiB reads.
    let payload = vec![b'*'; 4 << 20];
    let mut wire = Vec::with_capacity(payload.len() * 2);
    for (i, part) in payload.chunks(64).enumerate() {
        let op = if i == 0 { 0x1 } else { 0x0 };
        wire.extend(client(op, (i + 1) * 64 >= payload.len(), false, part));
    }
    let mut r = Reassembler::new(16 << 20, None);
    let got = decode_all(&mut r, &wire, 4096);
    assert!(matches!(&got.as_deref(), Ok([Message::Text(t)]) if t.len() == 4 << 20));
    assert_eq!(
        r.buf.capacity(),
        0,
        "an idle reassembler holds no message memory"
    );
    assert!(!r.in_message());
}

/// A reassembler for a client that agreed to permessage-deflate (and so,
/// whatever it offered, to `client_no_context_takeover`).
fn deflated() -> Reassembler {
    Reassembler::new(MAX, deflate::negotiate(Some("permessage-deflate")))
}

#[test]
fn compressed_messages() {
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    // RFC 7692 §7.2.3.1 and §7.2.3.2 (two fragments, RSV1 on the first only).
    let single = client(0x1, true, true, &hello);
    let frags = [
        client(0x1, false, true, &hello[..3]),
        client(0x0, true, false, &hello[3..]),
    ]
    .concat();
    for wire in [&single, &frags] {
        let mut r = deflated();
        assert_eq!(decode_all(&mut r, wire, 1), Ok(vec![text_msg("Hello")]));
        assert_eq!(r.buf.capacity(), 0, "nothing kept between messages");
    }
    // §7.2.3.2's second message refers into the first: the client agreed
    // not to take over context, so that is invalid data.
    let mut r = deflated();
    let second = client(0x1, true, true, &[0xf2, 0x00, 0x11, 0x00, 0x00]);
    let got = decode_all(&mut r, &[single.clone(), second].concat(), 3);
    assert_eq!(got.map_err(|e| e.code), Err(1007));
    // Round trip of our own output, and an uncompressed message in between.
    let json = r#"{"type":"subscribe","channel":"news"}"#;
    let packed = deflate::compress(json.as_bytes(), deflate::WindowBits::MAX);
    let wire = [
        client(0x1, true, true, &packed),
        client(0x2, true, false, b"raw"),
    ]
    .concat();
    assert_eq!(
        decode_all(&mut deflated(), &wire, 5),
        Ok(vec![text_msg(json), Message::Binary(b"raw".to_vec())])
    );
}

#[test]
fn compressed_message_errors() {
    let full = deflate::WindowBits::MAX;
    let bomb = deflate::compress(&vec![b'a'; 1 << 20], full);
    let bad_utf8 = deflate::compress(b"ok\xff", full);
    let table: [(Vec<u8>, bool, u16); 5] = [
        (client(0x1, true, true, &bomb), true, 1009),
        (client(0x1, true, true, &bad_utf8), true, 1007),
        (client(0x1, true, true, &[0xff, 0xff, 0xff]), true, 1007),
        // RSV1 without the extension, and on a continuation.
        (client(0x1, true, true, b"x"), false, 1002),
        (
            [
                client(0x1, false, true, &bomb[..2]),
                client(0x0, true, true, &bomb[2..]),
            ]
            .concat(),
            true,
            1002,
        ),
    ];
    for (wire, agreed, code) in table {
        let mut r = if agreed {
            deflated()
        } else {
            Reassembler::new(MAX, None)
        };
        assert_eq!(
            decode_all(&mut r, &wire, wire.len()).map_err(|e| e.code),
            Err(code)
        );
    }
    // Binary is not UTF-8 checked after inflating.
    let mut r = deflated();
    let got = decode_all(&mut r, &client(0x2, true, true, &bad_utf8), 64);
    assert_eq!(got, Ok(vec![Message::Binary(b"ok\xff".to_vec())]));
}

#[test]
fn idle_state_is_small() {
    assert!(
        mem::size_of::<Reassembler>() <= 72,
        "{}",
        mem::size_of::<Reassembler>()
    );
    let r = Reassembler::new(MAX, deflate::negotiate(Some("permessage-deflate")));
    assert_eq!(r.buf.capacity(), 0);
}
