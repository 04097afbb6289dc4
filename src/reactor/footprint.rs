//! What one idle connection costs in user space, by part: the sizes that
//! make up a slab slot and the heap a stream keeps while idle. Run with
//! `cargo test --lib footprint -- --nocapture` to print the breakdown.

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use crate::conn::queue::WriteQueue;
    use crate::conn::{Conn, ConnState, Delivery, Request, Sse, Sub, Ws};
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
            ("  Request", size_of::<Request>()),
            ("  Sse (inline in ConnState)", size_of::<Sse>()),
            ("  Delivery", size_of::<Delivery>()),
            ("Ws (boxed)", size_of::<Ws>()),
            ("  Reassembler", size_of::<Reassembler>()),
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
            println!("{part:<40} {bytes:>5} B");
        }
        // Ratios only: a slot stays a small multiple of a cache line.
        assert!(size_of::<Slot<Conn>>() <= 4 * size_of::<Ws>().max(64));
    }
}
