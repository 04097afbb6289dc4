//! The per-stream state of a composite-cursor SSE stream (Redis Cluster
//! mode, several channels): each channel's position, and the `id:` line
//! of every event written for this stream alone.
//!
//! Invariants:
//! - A position moves when an event of its channel is queued, never
//!   when one is dropped: after a drop on a channel (a full queue) that
//!   channel's position stays where it was before the gap, so every later
//!   `id:` is a resume point that loses nothing (the client gets that
//!   channel's later events again, as with a plain id after a gap).
//! - Events are written into a per-stream arena ([`BytesMut`]) and split
//!   off as shared [`Bytes`]: a delivery allocates only when the arena is
//!   used up while frames cut from it are still queued (then the next
//!   chunk is twice as large, up to 32 KiB); once they are written the
//!   arena's memory is reclaimed in place. A stream whose queue
//!   is released (idle) releases its arena too.

use bytes::{BufMut, Bytes, BytesMut};

use super::{ConnState, Sse};
use crate::event::Event;
use crate::hub::cursor;

/// Bytes the arena takes at a time, at first and after going idle.
const ARENA_CHUNK: usize = 4096;
/// The most it takes at a time: each time a chunk is used up while its
/// frames are still queued (a burst larger than the chunk), the next one
/// is twice as large, so a steady burst size ends up fitting in one chunk
/// that is reclaimed in place.
const MAX_ARENA_CHUNK: usize = 32 * 1024;

/// What a composite-cursor stream knows about its channels.
#[derive(Debug)]
pub struct Composite {
    /// Tag of the channel set ([`cursor::tag`]).
    tag: u32,
    /// Per channel (canonical order): the last id queued; 0: none yet.
    positions: Box<[u64]>,
    /// Per channel: an event was dropped, so the position stays.
    gap: Box<[bool]>,
    arena: BytesMut,
    /// Size of the chunk the arena holds; 0: none.
    chunk: usize,
}

impl Composite {
    /// A stream over a channel set `tag` starting at `positions`.
    pub fn new(tag: u32, positions: Box<[u64]>) -> Composite {
        Composite {
            tag,
            gap: vec![false; positions.len()].into_boxed_slice(),
            positions,
            arena: BytesMut::new(),
            chunk: 0,
        }
    }

    /// The cursor as it stands: every event queued counted.
    pub fn text(&self) -> String {
        cursor::text(self.tag, &self.positions)
    }

    /// `sse` (a complete shared SSE event, `id:` line first) with its
    /// `id:` replaced by the cursor after event `id` of channel `index`.
    pub fn event(&mut self, index: usize, id: u64, sse: &[u8]) -> Bytes {
        let body = match sse.iter().position(|b| *b == b'\n') {
            Some(nl) if sse.starts_with(b"id: ") => &sse[nl + 1..],
            _ => sse,
        };
        let need = 5 + cursor::max_len(self.positions.len()) + body.len();
        // Back to the chunk's start once every frame cut from it is
        // written (tried while less than half is left, so a burst that
        // follows a written one starts at the beginning).
        let low = self.arena.capacity() < need.max(self.chunk / 2);
        let reclaimed = low && self.arena.try_reclaim(need.max(self.chunk));
        if !reclaimed && self.arena.capacity() < need {
            self.chunk = match self.chunk {
                0 => ARENA_CHUNK,
                held => (held * 2).min(MAX_ARENA_CHUNK),
            };
            self.arena = BytesMut::with_capacity(need.max(self.chunk));
        }
        let Composite {
            tag,
            positions,
            gap,
            arena,
            ..
        } = self;
        // The channel of this event moves to it, unless a gap holds it.
        let moved = !gap.get(index).copied().unwrap_or(true);
        let position = |i: usize| match i == index && moved {
            true => id,
            false => positions[i],
        };
        arena.put_slice(b"id: ");
        cursor::write(arena, *tag, positions.len(), position);
        arena.put_u8(b'\n');
        arena.put_slice(body);
        arena.split().freeze()
    }

    /// Gives the arena back (its memory goes once the frames cut from it
    /// are written): an idle stream holds none; the next event takes a
    /// fresh chunk.
    pub fn release(&mut self) {
        self.arena = BytesMut::new();
        self.chunk = 0;
    }

    /// An event `id` of channel `index` was queued.
    pub fn queued(&mut self, index: usize, id: u64) {
        if let (Some(p), Some(false)) = (self.positions.get_mut(index), self.gap.get(index)) {
            *p = id;
        }
    }

    /// An event of channel `index` was dropped: its position stays.
    pub fn dropped(&mut self, index: usize) {
        if let Some(g) = self.gap.get_mut(index) {
            *g = true;
        }
    }
}

// The composite cursor of an SSE stream, where it has one.
impl Sse {
    /// Gives the stream a composite cursor (its channels must be in
    /// canonical order).
    pub fn set_composite(&mut self, composite: Composite) {
        self.extra_mut().composite = Some(Box::new(composite));
    }

    /// A stream whose events carry a composite cursor.
    pub fn is_composite(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.composite.is_some())
    }

    /// The composite cursor as it stands (every event queued counted).
    pub fn composite_text(&self) -> Option<String> {
        let composite = self.extra.as_ref()?.composite.as_ref()?;
        Some(composite.text())
    }

    /// The composite cursor and the index of `channel` in it.
    pub(super) fn composite_of(&mut self, channel: &str) -> Option<(&mut Composite, usize)> {
        let composite = self.extra.as_mut()?.composite.as_deref_mut()?;
        let index = self
            .channels
            .binary_search_by(|s| (*s.channel).cmp(channel))
            .ok()?;
        Some((composite, index))
    }

    /// An event was dropped (full queue): a composite cursor holds its
    /// channel where it was.
    pub fn missed(&mut self, ev: &Event) {
        if let Some((composite, index)) = self.composite_of(&ev.channel) {
            composite.dropped(index);
        }
    }
}

impl ConnState {
    /// A data event was dropped for this connection (its queue was full).
    pub fn missed(&mut self, ev: &Event) {
        if let ConnState::Sse(sse) = self {
            sse.missed(ev);
        }
    }

    /// The write queue was released (idle): a composite-cursor stream
    /// gives its arena back too.
    pub fn release_buffers(&mut self) {
        let ConnState::Sse(sse) = self else {
            return;
        };
        if let Some(composite) = sse.extra.as_mut().and_then(|x| x.composite.as_mut()) {
            composite.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::ids::parse_stream;

    fn id(s: &str) -> u64 {
        parse_stream(s).expect("id")
    }

    fn id_line(b: &Bytes) -> String {
        let text = std::str::from_utf8(b).expect("utf-8");
        let line = text.lines().next().expect("a line");
        line.strip_prefix("id: ").expect("id:").to_string()
    }

    #[test]
    fn each_event_carries_every_position_after_it_and_a_gap_holds_its_channel() {
        let chans: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        let tag = cursor::tag(&chans);
        let mut c = Composite::new(tag, vec![id("5-0"), 0].into());
        let sse = b"id: 9-0\nevent: message\ndata: {}\n\n";
        let ev = c.event(1, id("9-0"), sse);
        assert!(ev.ends_with(b"\nevent: message\ndata: {}\n\n"));
        let at = |s: &Bytes| cursor::parse(&id_line(s), &chans).expect("cursor");
        assert_eq!(&*at(&ev), &[id("5-0"), id("9-0")]);
        assert_eq!(
            c.text(),
            cursor::text(tag, &[id("5-0"), 0]),
            "not queued yet"
        );
        c.queued(1, id("9-0"));
        // a: 6-0 dropped; 7-0 queued after it; the cursor keeps a at 5-0.
        c.dropped(0);
        let ev = c.event(0, id("7-0"), sse);
        assert_eq!(&*at(&ev), &[id("5-0"), id("9-0")]);
        c.queued(0, id("7-0"));
        let ev = c.event(1, id("10-1"), sse);
        assert_eq!(&*at(&ev), &[id("5-0"), id("10-1")]);
        c.queued(1, id("10-1"));
        assert_eq!(c.text(), cursor::text(tag, &[id("5-0"), id("10-1")]));
    }

    #[test]
    fn bursts_that_are_written_between_them_settle_in_one_chunk() {
        let mut c = Composite::new(1, vec![0, 0].into());
        let sse = format!("id: 1-0\nevent: message\ndata: {}\n\n", "x".repeat(200));
        let mut starts = Vec::new();
        for _ in 0..10 {
            let burst: Vec<Bytes> = (0..50)
                .map(|_| c.event(0, id("1-0"), sse.as_bytes()))
                .collect();
            starts.push(burst[0].as_ptr() as usize);
            // Written: every frame of the burst goes.
        }
        assert!(c.chunk <= MAX_ARENA_CHUNK && c.chunk > ARENA_CHUNK, "grew");
        assert!(starts[4..].windows(2).all(|w| w[0] == w[1]), "one chunk");
    }

    #[test]
    fn the_arena_is_reused_once_its_frames_are_written() {
        let mut c = Composite::new(1, vec![0, 0].into());
        let sse = b"id: 1-0\nevent: message\ndata: {\"x\":1}\n\n";
        let first = c.event(0, id("1-0"), sse);
        let start = first.as_ptr();
        drop(first);
        for _ in 0..1_000 {
            let ev = c.event(0, id("1-0"), sse);
            assert!(ev.len() < 64);
        }
        let again = c.event(0, id("1-0"), sse);
        let arena = start as usize..start as usize + ARENA_CHUNK;
        assert!(arena.contains(&(again.as_ptr() as usize)), "same memory");
        // Released while a frame is still queued: that frame stays whole.
        c.release();
        assert_eq!(c.arena.capacity(), 0);
        let next = c.event(1, id("2-0"), sse);
        assert!(again.starts_with(b"id: c1") && next.starts_with(b"id: c1"));
        assert!(again.ends_with(b"data: {\"x\":1}\n\n"));
    }
}
