//! Coalescing under load (`queue.coalesce_ms`): once a reactor's delivery
//! rate passes `queue.coalesce_above`, stream writes are held so that each
//! stream is written at most once per window — many events per `writev` —
//! and every event still arrives once and in order; when publishing stops,
//! the hold ends and an event goes out at once.

mod common;

use std::thread;

use common::*;

const STREAMS: usize = 20;
const EVENTS: u64 = 200;

/// The published data of an SSE event (its JSON envelope's `data`).
fn payload(ev: &SseEvent) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&ev.data).ok()?;
    Some(v.get("data")?.to_string())
}

fn counters(server: &Server) -> (f64, f64) {
    (
        server.metric("redix_events_written_total"),
        server.metric("redix_write_calls_total"),
    )
}

#[test]
fn writes_coalesce_above_the_rate_and_every_event_arrives_in_order() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--set",
        "queue.coalesce_above=1",
        "--set",
        "queue.coalesce_ms=100",
    ]);
    let addr = server.addr;
    let mut publisher = Publisher::connect(addr);
    let mut sent: Vec<String> = Vec::new();
    let readers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut c = SseClient::connect(addr, "c");
            thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(ev) = c.next_event() {
                    let Some(data) = payload(&ev) else { continue };
                    let done = data == "-1";
                    got.push(data);
                    if done {
                        break;
                    }
                }
                got
            })
        })
        .collect();
    wait_until("the streams open", || {
        server.metric("redix_connections{transport=\"sse\"}") == STREAMS as f64
    });
    // Publish until the reactor holds stream writes.
    wait_until("coalescing engaged", || {
        let data = (sent.len() + 1).to_string();
        publisher.publish("c", &data);
        sent.push(data);
        server.metric("redix_reactors_coalescing") == 1.0
    });
    let (events0, calls0) = counters(&server);
    for _ in 0..EVENTS {
        let data = (sent.len() + 1).to_string();
        publisher.publish("c", &data);
        sent.push(data);
    }
    publisher.publish("c", "-1");
    sent.push("-1".into());
    for r in readers {
        let got = r.join().expect("reader");
        assert_eq!(got, sent, "every event once, in order");
    }
    let (events1, calls1) = counters(&server);
    let per_write = (events1 - events0) / (calls1 - calls0);
    // Without the hold each event is its own write to each stream (about
    // one event per write, the publisher's answers included).
    assert!(per_write >= 3.0, "{per_write:.2} events per writev");
    // Publishing stopped: the next measurement ends the hold, and a lone
    // event is written at once.
    wait_until("coalescing off", || {
        server.metric("redix_reactors_coalescing") == 0.0
    });
    let mut late = SseClient::connect(addr, "c");
    publisher.publish("c", "7");
    let next = std::iter::from_fn(|| late.next_event()).find_map(|ev| payload(&ev));
    assert_eq!(next.as_deref(), Some("7"));
}
