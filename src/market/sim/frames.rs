//! The simulator's pure parts: client messages in, Finnhub frames out,
//! and the quirks a real feed has. No sockets and no clock: the caller
//! passes the time and the random source.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// The error text Finnhub sends past the plan's symbol limit (it does not
/// name the symbol).
pub const TOO_MANY_SYMBOLS: &str = "Subscribing to too many symbols";

/// Chance that a frame carries the trades of two symbols.
const PAIR_CHANCE: f64 = 0.3;
/// Chance that a trade appears twice, identical, in one frame.
const DUPLICATE_TRADE_CHANCE: f64 = 0.1;
/// Chance that a whole frame is sent again, identical, 20–90 ms later.
const RESEND_CHANCE: f64 = 0.1;
/// Chance of a `v: 0` trade (some venues send them).
const ZERO_VOLUME_CHANCE: f64 = 0.05;
/// Chance that `c` (trade conditions) is empty.
const EMPTY_CONDITIONS_CHANCE: f64 = 0.3;
/// Condition codes as Finnhub sends them: strings.
const CONDITIONS: [&[&str]; 4] = [&["1"], &["1", "12"], &["8"], &["12", "37"]];

/// A small xorshift64* generator: good enough for a test feed, no crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is xorshift's one fixed point.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Subscribe(String),
    Unsubscribe(String),
    /// Anything else: not JSON, another type, no symbol. Finnhub ignores it.
    Other,
}

/// Parses `{"type":"subscribe","symbol":"AAPL"}` and its `unsubscribe` twin.
pub fn parse_client(text: &str) -> ClientMsg {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ClientMsg::Other;
    };
    let symbol = match value.get("symbol").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => return ClientMsg::Other,
    };
    match value.get("type").and_then(Value::as_str) {
        Some("subscribe") => ClientMsg::Subscribe(symbol),
        Some("unsubscribe") => ClientMsg::Unsubscribe(symbol),
        _ => ClientMsg::Other,
    }
}

/// One trade as Finnhub sends it: `{"s","p","t","v","c"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub symbol: String,
    pub price: f64,
    pub time_ms: u64,
    pub volume: u64,
    pub conditions: Vec<&'static str>,
}

impl Trade {
    fn to_json(&self) -> Value {
        json!({
            "s": self.symbol,
            "p": self.price,
            "t": self.time_ms,
            "v": self.volume,
            "c": self.conditions,
        })
    }
}

/// `{"type":"trade","data":[…]}`.
pub fn trade_frame(trades: &[Trade]) -> String {
    let data: Vec<Value> = trades.iter().map(Trade::to_json).collect();
    json!({"type": "trade", "data": data}).to_string()
}

pub fn ping_frame() -> String {
    r#"{"type":"ping"}"#.to_string()
}

pub fn error_frame(msg: &str) -> String {
    json!({"type": "error", "msg": msg}).to_string()
}

/// A frame to send now, and when (ms from now) to send it again, if ever.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub text: String,
    pub resend_after_ms: Option<u64>,
}

/// The per-connection trade generator: one price per symbol, walking.
#[derive(Debug)]
pub struct Feed {
    rng: Rng,
    prices: BTreeMap<String, f64>,
    /// Duplicated trades and re-sent frames (the quirks a consumer must
    /// dedupe); the other quirks are always on.
    duplicates: bool,
}

impl Feed {
    pub fn new(seed: u64, duplicates: bool) -> Feed {
        Feed {
            rng: Rng::new(seed),
            prices: BTreeMap::new(),
            duplicates,
        }
    }

    /// One trade per symbol, grouped into frames of one or two symbols.
    pub fn tick(&mut self, symbols: &[&str], now_ms: u64) -> Vec<Planned> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < symbols.len() {
            let take = if i + 1 < symbols.len() && self.rng.chance(PAIR_CHANCE) {
                2
            } else {
                1
            };
            let mut trades = Vec::with_capacity(take + 1);
            for symbol in &symbols[i..i + take] {
                let trade = self.trade(symbol, now_ms);
                if self.duplicates && self.rng.chance(DUPLICATE_TRADE_CHANCE) {
                    trades.push(trade.clone());
                }
                trades.push(trade);
            }
            let resend_after_ms =
                (self.duplicates && self.rng.chance(RESEND_CHANCE)).then(|| self.rng.range(20, 90));
            out.push(Planned {
                text: trade_frame(&trades),
                resend_after_ms,
            });
            i += take;
        }
        out
    }

    fn trade(&mut self, symbol: &str, now_ms: u64) -> Trade {
        let start = 20.0 + self.rng.range(0, 48_000) as f64 / 100.0;
        let price = self.prices.entry(symbol.to_string()).or_insert(start);
        // A walk of at most ±0.1 %, never below a cent.
        let step = (self.rng.unit() - 0.5) * 0.002 * *price;
        *price = ((*price + step) * 100.0).round().max(1.0) / 100.0;
        let price = *price;
        let volume = if self.rng.chance(ZERO_VOLUME_CHANCE) {
            0
        } else {
            self.rng.range(1, 500)
        };
        let conditions = if self.rng.chance(EMPTY_CONDITIONS_CHANCE) {
            Vec::new()
        } else {
            CONDITIONS[self.rng.range(0, CONDITIONS.len() as u64 - 1) as usize].to_vec()
        };
        Trade {
            symbol: symbol.to_string(),
            price,
            time_ms: now_ms,
            volume,
            conditions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["type"], "trade");
        v["data"].as_array().unwrap().clone()
    }

    #[test]
    fn client_messages() {
        let cases = [
            (
                r#"{"type":"subscribe","symbol":"AAPL"}"#,
                ClientMsg::Subscribe("AAPL".into()),
            ),
            (
                r#"{"symbol":"MSFT","type":"unsubscribe"}"#,
                ClientMsg::Unsubscribe("MSFT".into()),
            ),
            (r#"{"type":"subscribe","symbol":""}"#, ClientMsg::Other),
            (r#"{"type":"subscribe"}"#, ClientMsg::Other),
            (r#"{"type":"hello","symbol":"AAPL"}"#, ClientMsg::Other),
            (r#"{"type":"subscribe","symbol":7}"#, ClientMsg::Other),
            ("not json", ClientMsg::Other),
            ("[]", ClientMsg::Other),
        ];
        for (text, want) in cases {
            assert_eq!(parse_client(text), want, "{text}");
        }
    }

    #[test]
    fn frames_have_finnhub_shape() {
        let trade = Trade {
            symbol: "AAPL".into(),
            price: 146.76,
            time_ms: 1_628_238_530_221,
            volume: 43,
            conditions: vec!["1"],
        };
        assert_eq!(
            trade_frame(&[trade]),
            r#"{"type":"trade","data":[{"s":"AAPL","p":146.76,"t":1628238530221,"v":43,"c":["1"]}]}"#
        );
        assert_eq!(ping_frame(), r#"{"type":"ping"}"#);
        assert_eq!(
            error_frame(TOO_MANY_SYMBOLS),
            r#"{"type":"error","msg":"Subscribing to too many symbols"}"#
        );
    }

    #[test]
    fn every_symbol_trades_once_per_tick() {
        let mut feed = Feed::new(7, false);
        let symbols = ["AAPL", "MSFT", "TSLA", "BINANCE:BTCUSDT"];
        for tick in 0..200 {
            let planned = feed.tick(&symbols, 1000 + tick);
            let mut seen: Vec<String> = Vec::new();
            for p in &planned {
                assert_eq!(p.resend_after_ms, None, "no resends without duplicates");
                let trades = data(&p.text);
                assert!((1..=2).contains(&trades.len()));
                for t in trades {
                    assert_eq!(t["t"], 1000 + tick);
                    assert!(t["p"].as_f64().unwrap() >= 0.01);
                    assert!(t["c"].is_array());
                    seen.push(t["s"].as_str().unwrap().to_string());
                }
            }
            assert_eq!(seen, symbols, "tick {tick}");
        }
    }

    #[test]
    fn quirks_all_appear() {
        let mut feed = Feed::new(42, true);
        let (mut pairs, mut dup_trades, mut resends, mut zero_v, mut empty_c) = (0, 0, 0, 0, 0);
        let mut last_price: Option<f64> = None;
        for tick in 0..2000 {
            for p in feed.tick(&["AAPL", "MSFT"], tick) {
                let trades = data(&p.text);
                let symbols: Vec<&Value> = trades.iter().map(|t| &t["s"]).collect();
                if symbols.contains(&&json!("AAPL")) && symbols.contains(&&json!("MSFT")) {
                    pairs += 1;
                }
                if trades.windows(2).any(|w| w[0] == w[1]) {
                    dup_trades += 1;
                }
                if let Some(ms) = p.resend_after_ms {
                    assert!((20..=90).contains(&ms));
                    resends += 1;
                }
                for t in &trades {
                    zero_v += usize::from(t["v"] == 0);
                    empty_c += usize::from(t["c"].as_array().unwrap().is_empty());
                    if t["s"] == "AAPL" {
                        let p = t["p"].as_f64().unwrap();
                        if let Some(last) = last_price {
                            // A small walk: never more than 0.1 % and a cent of rounding.
                            assert!((p - last).abs() <= last * 0.001 + 0.011, "{last} -> {p}");
                        }
                        last_price = Some(p);
                    }
                }
            }
        }
        for (name, n) in [
            ("pairs", pairs),
            ("duplicate trades", dup_trades),
            ("resends", resends),
            ("v: 0", zero_v),
            ("empty c", empty_c),
        ] {
            assert!(n > 10, "{name}: only {n} in 2000 ticks");
        }
    }

    #[test]
    fn rng_range_is_inclusive() {
        let mut rng = Rng::new(0);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let v = rng.range(20, 23);
            seen[(v - 20) as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
    }
}
