//! What one idle connection costs in user space, by part: the sizes that
//! make up a slab slot and the heap a stream keeps while idle. Run with
//! `cargo test --lib footprint -- --nocapture` to print the breakdown.
//!
//! An idle plain SSE stream holds: its slot (the write queue is a null
//! pointer while empty, a single channel is inline in `Subs`), one
//! heartbeat timer entry and its key in the reactor's topic set; the
//! channel's name is shared with the topic entry. A WebSocket adds its
//! boxed `Ws`; and the out-of-line parts only while used: `Receiving`
//! while a frame or a message is coming in, `WsExtra` with a token or
//! subscriptions waiting for Redis, `SseExtra` for gzip, batching or a
//! token, a boxed slice for a second channel. The write queue's ring and
//! its counters are one box, given back when a connection goes cold
//! (`WriteQueue::release`).
//!
//! glibc's malloc adds 8 B to each allocation and rounds it up to 16 (at
//! least 32): the boxed `Ws` (104 B) takes a 112-B chunk. BENCHMARKS.md
//! ("Memory per idle connection, round 3") accounts the measured RSS per
//! connection against these sizes.

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use crate::conn::queue::WriteQueue;
    use crate::conn::{
        Conn, ConnState, Delivery, Flags, Receiving, Request, Sse, SseExtra, Stamp, Sub, Subs, Ws,
        WsExtra,
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
            (
                "  WriteQueue (boxed ring, None when empty)",
                size_of::<WriteQueue>(),
            ),
            (
                "  the rest (socket, peer, per-IP slot, clocks)",
                size_of::<Conn>() - size_of::<ConnState>() - size_of::<WriteQueue>(),
            ),
            ("    a clock (Stamp)", size_of::<Stamp>()),
            ("    the flags", size_of::<Flags>()),
            ("  Request", size_of::<Request>()),
            ("  Sse (inline in ConnState)", size_of::<Sse>()),
            ("    Subs (one channel inline)", size_of::<Subs>()),
            ("    Delivery", size_of::<Delivery>()),
            ("SseExtra (gzip/batch/token only)", size_of::<SseExtra>()),
            ("Ws (boxed)", size_of::<Ws>()),
            ("Receiving (while receiving only)", size_of::<Receiving>()),
            ("  Reassembler", size_of::<Reassembler>()),
            ("WsExtra (waiting/token only)", size_of::<WsExtra>()),
            (
                "Sub (inline for one channel, else a boxed slice)",
                size_of::<Sub>(),
            ),
            ("timer Entry (per live timer)", size_of::<Entry>()),
            (
                "queue ring header (boxed, while frames are queued)",
                WriteQueue::RING_SIZE,
            ),
            (
                "queue frame slot (VecDeque element)",
                WriteQueue::FRAME_SIZE,
            ),
        ]
    }

    #[test]
    fn footprint_of_an_idle_connection() {
        for (part, bytes) in parts() {
            println!("{part:<52} {bytes:>5} B");
        }
        // Ratios only: a slot stays a small multiple of a cache line.
        assert!(size_of::<Slot<Conn>>() <= 4 * size_of::<Ws>().max(64));
        // The sizes the idle-memory figures in BENCHMARKS.md were measured
        // with (64-bit, debug build; a release build's mio socket is 12 B
        // smaller, so its slot is 136 B): grow one only on purpose.
        if cfg!(target_pointer_width = "64") {
            assert!(size_of::<Slot<Conn>>() <= 152);
            assert!(size_of::<Ws>() <= 104, "a 112-B malloc chunk");
            assert!(size_of::<Entry>() <= 16);
            assert_eq!(size_of::<Subs>(), size_of::<Sub>());
            assert_eq!(size_of::<WriteQueue>(), 8);
        }
    }
}
