//! What one idle connection costs in user space, by part: the sizes that
//! make up a slab slot and the heap a stream keeps while idle. Run with
//! `cargo test --lib footprint -- --nocapture` to print the breakdown.
//!
//! An idle plain SSE stream holds: its slot, its `Sub` slice (one
//! allocation), one heartbeat timer entry and its key in the reactor's
//! topic set. A WebSocket adds its boxed `Ws`; its `Sub` `Vec`; and the
//! out-of-line parts only while used: `Receiving` while a frame or a
//! message is coming in, `WsExtra` with a token or subscriptions waiting
//! for Redis, `SseExtra` for gzip, batching or a token. The write queue's
//! ring is given back when a connection goes cold (`WriteQueue::release`).

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use crate::conn::queue::WriteQueue;
    use crate::conn::{
        Conn, ConnState, Delivery, Receiving, Request, Sse, SseExtra, Sub, Ws, WsExtra,
    };
    use crate::proto::ws::Reassembler;
    use crate::reactor::timer::Entry;

    /// The shape of a `slab` slot (its `Entry` is private).
    #[allow(dead_code)]
    enum Slot<T> {
        Vacant(usize),
        Occupied(T),
    }

    /// (part, bytes) of an idle stream's footprint.
    fn parts() -> Vec<(&'static str, usize)> {
        vec![
            ("slab::Entry<Conn> (the slot)", size_of::<Slot<Conn>>()),
            ("  Conn", size_of::<Conn>()),
            ("  ConnState", size_of::<ConnState>()),
            ("  WriteQueue", size_of::<WriteQueue>()),
            (
                "  the rest (socket, peer, per-IP slot, clocks)",
                size_of::<Conn>() - size_of::<ConnState>() - size_of::<WriteQueue>(),
            ),
            ("  Request", size_of::<Request>()),
            ("  Sse (inline in ConnState)", size_of::<Sse>()),
            ("    Delivery", size_of::<Delivery>()),
            ("SseExtra (gzip/batch/token only)", size_of::<SseExtra>()),
            ("Ws (boxed)", size_of::<Ws>()),
            ("Receiving (while receiving only)", size_of::<Receiving>()),
            ("  Reassembler", size_of::<Reassembler>()),
            ("WsExtra (waiting/token only)", size_of::<WsExtra>()),
            ("Sub (one per channel, boxed slice)", size_of::<Sub>()),
            ("timer Entry (per live timer)", size_of::<Entry>()),
            (
                "queue frame slot (VecDeque element)",
                WriteQueue::FRAME_SIZE,
            ),
        ]
    }

    #[test]
    fn footprint_of_an_idle_connection() {
        for (part, bytes) in parts() {
            println!("{part:<46} {bytes:>5} B");
        }
        // Ratios only: a slot stays a small multiple of a cache line.
        assert!(size_of::<Slot<Conn>>() <= 4 * size_of::<Ws>().max(64));
        // The sizes the idle-memory figures in BENCHMARKS.md were measured
        // with (64-bit): grow one only on purpose.
        if cfg!(target_pointer_width = "64") {
            assert!(size_of::<Slot<Conn>>() <= 216);
            assert!(size_of::<Ws>() <= 128);
            assert!(size_of::<Entry>() <= 16);
        }
    }
}
