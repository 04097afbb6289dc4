//! The publish bench's Redis client: commands as RESP, and the replies it reads back (the
//! stream entries its self-check compares with the acknowledged publishes).

#[allow(dead_code)] // only part of the module is tested
#[path = "../../benches/support/resp.rs"]
mod resp;

use std::io::Cursor;

use resp::{encode, read_reply, Reply};

#[test]
fn a_command_is_an_array_of_bulk_strings() {
    assert_eq!(
        encode(&["XLEN", "redix:{pb-1}:s"]),
        b"*2\r\n$4\r\nXLEN\r\n$14\r\nredix:{pb-1}:s\r\n".to_vec()
    );
}

#[test]
fn replies_of_every_kind_are_read() {
    let cases: &[(&[u8], Reply)] = &[
        (b"+PONG\r\n", Reply::Status("PONG".into())),
        (
            b"-MOVED 3999 127.0.0.1:7002\r\n",
            Reply::Error("MOVED 3999 127.0.0.1:7002".into()),
        ),
        (b":42\r\n", Reply::Int(42)),
        (b"$-1\r\n", Reply::Bulk(None)),
        (b"*-1\r\n", Reply::Array(None)),
        (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
        (b"$4\r\na\r\nb\r\n", Reply::Bulk(Some(b"a\r\nb".to_vec()))),
    ];
    for (wire, want) in cases {
        let got = read_reply(&mut Cursor::new(wire)).unwrap();
        assert_eq!(&got, want, "{}", String::from_utf8_lossy(wire));
    }
    assert!(read_reply(&mut Cursor::new(b"?x\r\n")).is_err());
    assert!(read_reply(&mut Cursor::new(b"")).is_err());
}

#[test]
fn a_stream_entry_is_read_as_nested_arrays() {
    // XREVRANGE key + - COUNT 1 → [[id, [field, value]]]
    let wire = b"*1\r\n*2\r\n$15\r\n1796138860596-0\r\n*2\r\n$1\r\nd\r\n$8\r\n{\"s\":41}\r\n";
    let r = read_reply(&mut Cursor::new(&wire[..])).unwrap();
    let entry = r.items()[0].items();
    assert_eq!(entry[0].text().as_deref(), Some("1796138860596-0"));
    let fields = entry[1].items();
    assert_eq!(fields[0].text().as_deref(), Some("d"));
    assert_eq!(fields[1].text().as_deref(), Some("{\"s\":41}"));
    // two replies back to back are read one at a time
    let mut two = Cursor::new(&b":1\r\n+OK\r\n"[..]);
    assert_eq!(read_reply(&mut two).unwrap(), Reply::Int(1));
    assert_eq!(read_reply(&mut two).unwrap(), Reply::Status("OK".into()));
}
