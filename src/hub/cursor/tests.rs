use super::*;
use crate::hub::ids::{pack, parse_stream};

fn chans(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|n| Arc::from(*n)).collect()
}

fn id(s: &str) -> u64 {
    parse_stream(s).expect("a stream id")
}

#[test]
fn cursors_round_trip_and_stay_small() {
    let c = chans(&["a", "b", "c"]);
    let t = tag(&c);
    // (positions, expected length)
    let cases: [(Vec<u64>, usize); 5] = [
        (vec![0, 0, 0], 2 + 4 + 2 + 3),
        (
            vec![
                id("1795500650271-0"),
                id("1795500650270-0"),
                id("1795500650100-3"),
            ],
            2 + 4 + 1 + 7 + 2 + 2 + 5,
        ),
        (
            vec![id("1795500650271-0"), 0, id("1-1")],
            2 + 4 + 1 + 7 + 2 + 1 + 10,
        ),
        (
            vec![pack(MAX_MS, MAX_SEQ).unwrap(), 0, 0],
            2 + 4 + 1 + 8 + 7 + 2,
        ),
        (vec![id("0-1"), id("0-2"), 0], 2 + 4 + 2 + 4 + 4 + 1),
    ];
    for (positions, len) in cases {
        let text = text(t, &positions);
        assert_eq!(text.len(), len, "{text}");
        assert!(text.len() <= max_len(c.len()));
        assert!(text.starts_with(PREFIX) && looks_composite(&text));
        assert_eq!(parse(&text, &c).as_deref(), Ok(&positions[..]), "{text}");
    }
}

#[test]
fn the_written_text_is_the_documented_one() {
    let c = chans(&["x", "y"]);
    let p = [id("100-0"), id("36-5")];
    let t = tag(&c);
    let tag_text = &text(t, &[0, 0])[2..6];
    // base 100 = "1a" (1×64 + 36); x: delta 0; y: delta 64 = "10", seq 5.
    assert_eq!(text(t, &p), format!("c1{tag_text}.1a.0.10~5"));
    assert_eq!(text(t, &[0, 0]), format!("c1{tag_text}.0.."));
}

#[test]
fn the_readme_example_is_what_redix_writes() {
    let c = chans(&["a", "b", "c", "d", "e", "f"]);
    let base = 1_796_142_634_071;
    let p: Vec<u64> = [22, 21, 1, 3, 2, 0]
        .iter()
        .map(|behind| pack(base - behind, 0).unwrap())
        .collect();
    let text = text(tag(&c), &p);
    assert_eq!(text, "c1vH_A.Q8oSPHN.M.L.1.3.2.0");
    assert_eq!(parse(&text, &c).as_deref(), Ok(&p[..]));
}

#[test]
fn the_largest_cursor_fits_max_len() {
    let c: Vec<Arc<str>> = (0..32).map(|i| Arc::from(format!("ch{i}"))).collect();
    let mut p = vec![pack(0, MAX_SEQ).unwrap(); 32];
    p[0] = pack(MAX_MS, MAX_SEQ).unwrap();
    let text = text(tag(&c), &p);
    assert_eq!(text.len(), max_len(32));
    assert_eq!(max_len(32), 456);
    assert_eq!(parse(&text, &c).as_deref(), Ok(&p[..]));
}

#[test]
fn the_tag_tells_channel_sets_apart() {
    let ab = tag(&chans(&["a", "b"]));
    assert_ne!(ab, tag(&chans(&["a", "c"])));
    assert_ne!(ab, tag(&chans(&["b", "a"])));
    assert!(ab < 1 << 24);
}

#[test]
fn bad_cursors_are_refused_naming_the_problem() {
    let c = chans(&["a", "b"]);
    let good = text(tag(&c), &[id("1795500650271-0"), id("1795500650270-2")]);
    let tag_text = good[2..6].to_string();
    let other = text(tag(&chans(&["a", "z"])), &[id("5-0"), 0]);
    let with = |rest: &str| format!("c1{tag_text}{rest}");
    let cases: Vec<(String, CursorError)> = vec![
        ("1795500650271-0".into(), CursorError::NotComposite),
        ("0".into(), CursorError::NotComposite),
        ("c2AAAA.0..".into(), CursorError::NotComposite),
        (
            format!("{good}{}", "0".repeat(500)),
            CursorError::TooLong { max: max_len(2) },
        ),
        (with(".1a.0.1 "), CursorError::BadChar(' ')),
        (with(".1a.0.1+"), CursorError::BadChar('+')),
        (with(".1a.0.1é"), CursorError::BadChar('é')),
        (other, CursorError::OtherChannels),
        (
            with(".1a.0"),
            CursorError::Count {
                expected: 2,
                got: 1,
            },
        ),
        (
            with(".1a.0.1.2"),
            CursorError::Count {
                expected: 2,
                got: 3,
            },
        ),
        (with(".1a.0.01"), CursorError::BadNumber),
        (with(".1a.0.1~0"), CursorError::BadNumber),
        (with(".1a.0.1~"), CursorError::BadNumber),
        (with(".1a.0.1b"), CursorError::BadNumber),
        (with(".1a.1.1"), CursorError::BadNumber),
        (with(".1a.0.1~1~1"), CursorError::BadChar('~')),
        (with(".1a.0.1~4000"), CursorError::BadNumber),
        (with(".ZZZZZZZZ.0."), CursorError::BadNumber),
        (with("1a.0.0"), CursorError::BadNumber),
        (with("..0.0"), CursorError::BadNumber),
        ("c1AB.0..".into(), CursorError::BadNumber),
    ];
    for (text, want) in cases {
        assert_eq!(parse(&text, &c), Err(want.clone()), "{text:?}");
        assert!(!want.to_string().is_empty());
    }
    assert!(
        parse(&with(".0.0~1."), &c).is_ok(),
        "seq 1 of ms 0 is a position"
    );
    assert!(parse(&good, &c).is_ok());
}
