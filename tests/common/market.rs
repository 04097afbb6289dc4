//! Market clients: subscribing a WebSocket to a symbol, reading its trades.

use super::ws::RawWs;

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
