//! Trade-like payloads: a random walk of AAPL prints.

use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random walk of AAPL prints: price in cents moving a few ticks, mostly round lots,
/// some odd lots and blocks, millisecond times a few ms apart, sale conditions.
pub struct Trades {
    rng: Rng,
    cents: i64,
    t_ms: u64,
}

impl Trades {
    pub fn new(seed: u64) -> Trades {
        Trades {
            rng: Rng(seed | 1),
            cents: 18923,
            t_ms: now_ms(),
        }
    }

    pub fn next(&mut self) -> String {
        let r = &mut self.rng;
        self.cents += r.below(7) as i64 - 3;
        self.t_ms += 1 + r.below(9);
        let v = match r.below(10) {
            0..=5 => 100 * (1 + r.below(5)),
            6..=8 => 1 + r.below(99),
            _ => 100 * (5 + r.below(46)),
        };
        const CONDS: [&str; 5] = [
            r#"["@"]"#,
            r#"["@","T"]"#,
            r#"["@","I"]"#,
            r#"["@","F"]"#,
            r#"["@","F","I"]"#,
        ];
        let c = CONDS[r.below(CONDS.len() as u64) as usize];
        format!(
            r#"{{"s":"AAPL","p":{}.{:02},"v":{v},"t":{},"c":{c}}}"#,
            self.cents / 100,
            self.cents % 100,
            self.t_ms
        )
    }
}
