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

use super::counting::{self, Role, Snapshot};

/// Channels of each stream, and streams.
const CHANNELS: usize = 6;
const STREAMS: usize = 100;
/// Events that queue up before a write, in the burst pattern.
const BURST: usize = 50;

/// Streams: each with its composite cursor and its write queue.
type Streams = Vec<(Composite, WriteQueue)>;

const LIMITS: QueueLimits = QueueLimits {
    max_events: 500,
    max_bytes: 256 << 10,
};

pub fn run(events: usize) {
    let names: Vec<Arc<str>> = (0..CHANNELS).map(|i| Arc::from(format!("ch{i}"))).collect();
    let tag = cursor::tag(&names);
    let evs = events_on(&names, events);
    for paced in [true, false] {
        let mut streams: Streams = (0..STREAMS)
            .map(|_| {
                let composite = Composite::new(tag, vec![0; CHANNELS].into());
                (composite, WriteQueue::default())
            })
            .collect();
        let mut run_pass =
            |count: bool, own_id: bool| pass(&mut streams, &evs, paced, count, own_id);
        // Warm-up: the arena's chunk doubles while a burst's frames are
        // queued; steady state is reached within two passes of a short run.
        run_pass(false, true);
        run_pass(false, true);
        let (used, _) = run_pass(true, true);
        // The quickest of five passes each, alternating, against noise.
        let (mut took, mut shared) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            took = took.min(run_pass(false, true).1);
            shared = shared.min(run_pass(false, false).1);
        }
        report(paced, events, used, took, shared);
    }
}

/// `events` events of ~100 bytes, round robin over `names`, with their
/// channel's index.
fn events_on(names: &[Arc<str>], events: usize) -> Vec<(usize, Event)> {
    (0..events)
        .map(|i| {
            let id = ids::pack(1_795_500_650_271 + i as u64, 0).expect("an id");
            let json = format!(r#"{{"seq":{i:08},"pad":"{}"}}"#, super::PAD);
            let channel = names[i % CHANNELS].clone();
            let ev = Event::with_id_text(id, &ids::stream_id(id), channel, &json);
            (i % CHANNELS, ev)
        })
        .collect()
}

/// One pass over every event and stream; `own_id`: the composite `id:`,
/// else the shared bytes as in every other mode; `count`: allocations
/// are counted. Returns them and the time taken.
fn pass(
    streams: &mut Streams,
    evs: &[(usize, Event)],
    paced: bool,
    count: bool,
    own_id: bool,
) -> (Snapshot, Duration) {
    let before = counting::snapshot(Role::Publisher);
    if count {
        counting::set_role(Role::Publisher);
    }
    let started = Instant::now();
    for (n, (index, ev)) in evs.iter().enumerate() {
        let write = paced || (n + 1) % BURST == 0;
        for (composite, queue) in streams.iter_mut() {
            let bytes = match own_id {
                true => composite.event(*index, ev.id, &ev.sse),
                false => ev.sse.clone(),
            };
            match queue.push_data(bytes, ev.id, LIMITS) {
                true => composite.queued(*index, ev.id),
                false => composite.dropped(*index),
            }
            if write {
                queue.flush(&mut sink(), usize::MAX);
            }
        }
    }
    // What a burst left queued goes out too (a run shorter than a burst).
    for (_, queue) in streams.iter_mut() {
        queue.flush(&mut sink(), usize::MAX);
    }
    let took = started.elapsed();
    counting::set_role(Role::Bench);
    (counting::snapshot(Role::Publisher) - before, took)
}

fn report(paced: bool, events: usize, used: Snapshot, took: Duration, shared: Duration) {
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
