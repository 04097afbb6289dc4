//! Market clients: subscribing a WebSocket to a symbol, reading its trades.

use redix::market::sim::{self, Sim, SimConfig};

use super::ws::RawWs;

/// A Finnhub simulator in this process that takes only `token`, pinging
/// every 200 ms, at `trades_per_sec` per symbol.
pub fn simulator_with_token(token: &str, trades_per_sec: u32) -> Sim {
    sim::start(SimConfig {
        token: Some(token.into()),
        trades_per_sec,
        ping_ms: 200,
        ..SimConfig::default()
    })
    .expect("start the simulator")
}

/// `--set` arguments pointing redix at `url` with `token`.
pub fn market_args(url: &str, token: &str) -> Vec<String> {
    vec![
        "--set".into(),
        format!("market.url=\"{url}\""),
        "--set".into(),
        format!("market.token=\"{token}\""),
    ]
}

/// The next trade event on a WebSocket: (event id, symbol of its trades).
pub fn next_trade(ws: &mut RawWs) -> (String, String) {
    loop {
        let f = ws.read_non_ping().expect("a frame");
        let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
        if v["type"] != "message" {
            continue;
        }
        let symbol = v["data"][0]["s"].as_str().unwrap_or_default().to_string();
        return (v["id"].as_str().unwrap_or_default().to_string(), symbol);
    }
}

pub fn subscribe_symbol(ws: &mut RawWs, symbol: &str) {
    ws.send_text(&format!(r#"{{"type":"subscribe","symbol":"{symbol}"}}"#));
}
