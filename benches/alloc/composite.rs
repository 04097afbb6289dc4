//! The composite-cursor SSE path (Redis Cluster mode, a stream over
//! several channels), which writes every event's `id:` for each stream:
//! `Composite::event` → `WriteQueue::push_data` → `flush` into a sink,
//! in this thread, without sockets (cluster mode needs a Redis Cluster;
//! the per-stream work is all here). Counted under the `Publisher` role
//! once redix has stopped, so nothing else counts there.
//!
//! Paced: each event is written before the next (one event per write).
//! Burst: 50 events queue up before a write. The time per delivery is
//! printed beside that of the same loop queueing the shared bytes (what
//! every other stream does), the quickest of five passes each, on an
//! otherwise busy machine: indicative.

use std::io::sink;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redix::conn::composite::Composite;
use redix::conn::queue::{QueueLimits, WriteQueue};
use redix::event::Event;
use redix::hub::{cursor, ids};

use super::counting::{self, Role};

/// Channels of each stream, and streams.
const CHANNELS: usize = 6;
const STREAMS: usize = 100;
/// Events that queue up before a write, in the burst pattern.
const BURST: usize = 50;

pub fn run(events: usize) {
    let names: Vec<Arc<str>> = (0..CHANNELS).map(|i| Arc::from(format!("ch{i}"))).collect();
    let tag = cursor::tag(&names);
    let evs: Vec<(usize, Event)> = (0..events)
        .map(|i| {
            let id = ids::pack(1_795_500_650_271 + i as u64, 0).expect("an id");
            let json = format!(r#"{{"seq":{i:08},"pad":"{}"}}"#, super::PAD);
            let channel = names[i % CHANNELS].clone();
            (
                i % CHANNELS,
                Event::with_id_text(id, &ids::stream_id(id), channel, &json),
            )
        })
        .collect();
    let limits = QueueLimits {
        max_events: 500,
        max_bytes: 256 << 10,
    };
    for paced in [true, false] {
        let mut streams: Vec<(Composite, WriteQueue)> = (0..STREAMS)
            .map(|_| {
                (
                    Composite::new(tag, vec![0; CHANNELS].into()),
                    WriteQueue::default(),
                )
            })
            .collect();
        // One pass over every event and stream; `own_id`: the composite
        // `id:`, else the shared bytes as in every other mode. Returns the
        // allocations counted and the time taken.
        let mut pass = |count: bool, own_id: bool| {
            let before = counting::snapshot(Role::Publisher);
            if count {
                counting::set_role(Role::Publisher);
            }
            let started = Instant::now();
            for (n, (index, ev)) in evs.iter().enumerate() {
                let write = paced || (n + 1) % BURST == 0;
                for (composite, queue) in &mut streams {
                    let bytes = match own_id {
                        true => composite.event(*index, ev.id, &ev.sse),
                        false => ev.sse.clone(),
                    };
                    match queue.push_data(bytes, ev.id, limits) {
                        true => composite.queued(*index, ev.id),
                        false => composite.dropped(*index),
                    }
                    if write {
                        queue.flush(&mut sink(), usize::MAX);
                    }
                }
            }
            let took = started.elapsed();
            counting::set_role(Role::Bench);
            (counting::snapshot(Role::Publisher) - before, took)
        };
        pass(false, true);
        let (used, _) = pass(true, true);
        // The quickest of five passes each, alternating, against noise.
        let (mut took, mut shared) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            took = took.min(pass(false, true).1);
            shared = shared.min(pass(false, false).1);
        }
        let deliveries = (events * STREAMS) as f64;
        let ns = |d: Duration| d.as_nanos() as f64 / deliveries;
        let pattern = if paced { "paced" } else { "burst" };
        println!(
            "  → sse-composite {pattern}: {:.4} allocations per delivery ({STREAMS} streams × {CHANNELS} channels, {:.0} bytes per delivery); {:.0} ns per delivery (shared bytes: {:.0} ns)",
            used.allocs as f64 / deliveries,
            used.bytes as f64 / deliveries,
            ns(took),
            ns(shared),
        );
        println!(
            "{{\"bench\":\"alloc\",\"variant\":\"sse-composite\",\"pattern\":\"{pattern}\",\"allocs_per_delivery\":{:.4},\"ns_per_delivery\":{:.0},\"shared_ns_per_delivery\":{:.0},\"subs\":{STREAMS}}}",
            used.allocs as f64 / deliveries,
            ns(took),
            ns(shared),
        );
    }
}
