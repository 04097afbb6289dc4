//! What redix serves to browsers from its own binary: the client library
//! (`/client/redix.js`, its TypeScript declarations) and the demo page
//! (`/`). Embedded at build time, so a fresh `cargo run --release` serves
//! them with nothing else installed.

use super::Action;
use crate::proto::http::{self, Head};

const CLIENT_JS: &str = include_str!("../../client/redix.js");
const CLIENT_DTS: &str = include_str!("../../client/redix.d.ts");
const DEMO_HTML: &str = include_str!("../../client/demo.html");

/// The asset at `path`, if it is one.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", DEMO_HTML)),
        "/client/redix.js" => Some(("text/javascript; charset=utf-8", CLIENT_JS)),
        "/client/redix.d.ts" => Some(("text/plain; charset=utf-8", CLIENT_DTS)),
        _ => None,
    }
}

/// A 200 with the asset; browsers revalidate (`no-cache`), so a new
/// binary's client is picked up on reload.
pub fn serve(head: &Head, content_type: &str, body: &str) -> Action {
    let extra = ["Cache-Control: no-cache".to_string()];
    Action::Respond {
        bytes: http::response(200, content_type, body.as_bytes(), head.keep_alive, &extra),
        close: !head.keep_alive,
    }
}
