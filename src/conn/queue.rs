//! A connection's bounded write queue of shared frames.
//!
//! Data frames count against the caps (events and bytes); when either is
//! reached the new data frame is dropped and the caller counts a warning.
//! Control frames (heartbeats, final events, responses) never count and
//! never drop. A partial write only advances `offset` into the front frame,
//! and frames are flushed with vectored writes.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::io::{classify, IoStatus};
use super::Stamp;

/// Frames handed to one `writev`.
const MAX_IOV: usize = 64;

#[derive(Debug)]
struct Frame {
    bytes: Bytes,
    /// The event id for data frames; `None` for control frames.
    data_id: Option<u64>,
    /// A conflatable frame's channel: a newer event of it may take this
    /// frame's place while the queue is full.
    channel: Option<Arc<str>>,
}

/// What [`WriteQueue::push_conflated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Took the place of an older queued event of the same channel.
    Replaced,
    /// Full, and no event of the channel to replace.
    Full,
}

/// Caps of one queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// The queue: nothing while it holds no frame and its ring was given
/// back (an idle connection's slot carries 8 B, not the 48 of a ring and
/// its counters); the ring, boxed with its counters, from the first frame
/// until [`WriteQueue::release`].
#[derive(Debug, Default)]
pub struct WriteQueue(Option<Box<Ring>>);

#[derive(Debug, Default)]
struct Ring {
    frames: VecDeque<Frame>,
    /// Bytes queued (data and control), minus `offset`.
    bytes: usize,
    /// Bytes of the front frame already written (`u32`, like `events`:
    /// the queue is in every connection's slot; a frame is an event or a
    /// response, far below 4 GiB).
    offset: u32,
    /// Data frames queued (at most `queue.max_events` plus a replay).
    events: u32,
    /// Since when the queued bytes have made no write progress (the
    /// write deadline counts from it); never: not stalled. An empty
    /// queue is never stalled, so it lives with the frames.
    stalled_since: Stamp,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub status: IoStatus,
    pub bytes: usize,
    /// Data events completely written.
    pub events: usize,
    /// Id of the last data event completely written.
    pub last_id: Option<u64>,
    /// `writev` calls made.
    pub calls: usize,
}

impl WriteQueue {
    /// Bytes of one queued frame's slot in the ring.
    pub const FRAME_SIZE: usize = std::mem::size_of::<Frame>();
    /// Bytes of the boxed ring header (its counters and the `VecDeque`).
    pub const RING_SIZE: usize = std::mem::size_of::<Ring>();

    fn ring(&mut self) -> &mut Ring {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|r| r.frames.is_empty())
    }

    pub fn len_events(&self) -> usize {
        self.0.as_ref().map_or(0, |r| r.events as usize)
    }

    pub fn len_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |r| r.bytes)
    }

    /// The id of the data frame partly written, if any: it will complete
    /// whatever else is dropped.
    pub fn in_progress_id(&self) -> Option<u64> {
        self.0.as_ref().and_then(|r| r.in_progress_id())
    }

    /// Slots the ring holds (allocated, used or not).
    pub fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |r| r.frames.capacity())
    }

    /// Gives the ring's memory back when the queue is empty (an idle
    /// connection then holds no queue memory at all); the next frame
    /// allocates it again.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    /// Since when the queued bytes have made no write progress; never:
    /// writes are not stalled.
    pub fn stalled_since(&self) -> Stamp {
        self.0.as_ref().map_or(Stamp::NEVER, |r| r.stalled_since)
    }

    /// Books a flush at `now` for the write deadline: a write that blocked
    /// after moving bytes (or the first that blocked) starts the stall
    /// clock; one that did not block ends the stall.
    pub fn note_stall(&mut self, blocked: bool, moved: bool, now: u64) {
        let Some(ring) = &mut self.0 else {
            return;
        };
        match blocked {
            true if moved || ring.stalled_since.is_never() => ring.stalled_since = Stamp::at(now),
            true => {}
            false => ring.stalled_since = Stamp::NEVER,
        }
    }

    /// Queues a data frame unless a cap is reached; false means dropped.
    pub fn push_data(&mut self, bytes: Bytes, id: u64, limits: QueueLimits) -> bool {
        let fresh = self.0.is_none();
        let queued = self.ring().push_data(bytes, id, limits);
        if fresh && !queued {
            self.0 = None;
        }
        queued
    }

    /// Queues a data frame of a conflated channel: like [`push_data`]
    /// while there is room; when full, it takes the place of the newest
    /// queued frame of the same channel not yet started, so a stalled
    /// reader keeps one (the newest) event per channel.
    ///
    /// [`push_data`]: WriteQueue::push_data
    pub fn push_conflated(
        &mut self,
        bytes: Bytes,
        id: u64,
        channel: &Arc<str>,
        limits: QueueLimits,
    ) -> Pushed {
        let fresh = self.0.is_none();
        let pushed = self.ring().push_conflated(bytes, id, channel, limits);
        if fresh && pushed == Pushed::Full {
            self.0 = None;
        }
        pushed
    }

    /// Queues a replayed data frame. Replays are bounded by the history,
    /// not by the caps; live events after them meet the caps as usual.
    pub fn push_replay(&mut self, bytes: Bytes, id: u64) {
        self.ring().push_replay(bytes, id);
    }

    /// Queues a control frame; never dropped.
    pub fn push_control(&mut self, bytes: Bytes) {
        self.ring().push_control(bytes);
    }

    /// Removes data frames whose writing has not started; the frame in
    /// progress stays so the stream's framing survives.
    pub fn discard_pending_data(&mut self) {
        if let Some(ring) = &mut self.0 {
            ring.discard_pending_data();
        }
    }

    /// Writes until the queue is empty, the writer would block, or about
    /// `budget` bytes went out (then the status is `Progress` with bytes
    /// still queued: one connection must not hold its reactor for long).
    pub fn flush<W: Write>(&mut self, w: &mut W, budget: usize) -> Flushed {
        match &mut self.0 {
            Some(ring) => ring.flush(w, budget),
            None => Flushed {
                status: IoStatus::Progress(0),
                bytes: 0,
                events: 0,
                last_id: None,
                calls: 0,
            },
        }
    }
}

impl Ring {
    /// See [`WriteQueue::in_progress_id`].
    fn in_progress_id(&self) -> Option<u64> {
        self.frames
            .front()
            .filter(|_| self.offset > 0)
            .and_then(|f| f.data_id)
    }

    /// See [`WriteQueue::push_data`].
    fn push_data(&mut self, bytes: Bytes, id: u64, limits: QueueLimits) -> bool {
        if self.events as usize >= limits.max_events || self.bytes + bytes.len() > limits.max_bytes
        {
            return false;
        }
        self.events += 1;
        self.bytes += bytes.len();
        self.frames.push_back(Frame {
            bytes,
            data_id: Some(id),
            channel: None,
        });
        true
    }

    /// See [`WriteQueue::push_conflated`].
    fn push_conflated(
        &mut self,
        bytes: Bytes,
        id: u64,
        channel: &Arc<str>,
        limits: QueueLimits,
    ) -> Pushed {
        if (self.events as usize) < limits.max_events
            && self.bytes + bytes.len() <= limits.max_bytes
        {
            self.events += 1;
            self.bytes += bytes.len();
            self.frames.push_back(Frame {
                bytes,
                data_id: Some(id),
                channel: Some(channel.clone()),
            });
            return Pushed::Queued;
        }
        let first_free = usize::from(self.offset > 0);
        let same = |f: &Frame| f.channel.as_ref().is_some_and(|c| Arc::ptr_eq(c, channel));
        let Some(frame) = self
            .frames
            .iter_mut()
            .skip(first_free)
            .rev()
            .find(|f| same(f))
        else {
            return Pushed::Full;
        };
        self.bytes = self.bytes - frame.bytes.len() + bytes.len();
        frame.bytes = bytes;
        frame.data_id = Some(id);
        Pushed::Replaced
    }

    /// See [`WriteQueue::push_replay`].
    fn push_replay(&mut self, bytes: Bytes, id: u64) {
        self.events += 1;
        self.bytes += bytes.len();
        self.frames.push_back(Frame {
            bytes,
            data_id: Some(id),
            channel: None,
        });
    }

    /// See [`WriteQueue::push_control`].
    fn push_control(&mut self, bytes: Bytes) {
        self.bytes += bytes.len();
        self.frames.push_back(Frame {
            bytes,
            data_id: None,
            channel: None,
        });
    }

    /// See [`WriteQueue::discard_pending_data`].
    fn discard_pending_data(&mut self) {
        let keep_front = usize::from(self.offset > 0);
        let mut index = 0;
        let (events, bytes) = (&mut self.events, &mut self.bytes);
        self.frames.retain(|f| {
            let started = index < keep_front;
            index += 1;
            if started || f.data_id.is_none() {
                return true;
            }
            *events -= 1;
            *bytes -= f.bytes.len();
            false
        });
    }

    /// See [`WriteQueue::flush`].
    fn flush<W: Write>(&mut self, w: &mut W, budget: usize) -> Flushed {
        let mut done = Flushed {
            status: IoStatus::Progress(0),
            bytes: 0,
            events: 0,
            last_id: None,
            calls: 0,
        };
        while !self.frames.is_empty() && done.bytes < budget {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { self.offset as usize } else { 0 };
                slices[n] = IoSlice::new(&f.bytes[start..]);
                n += 1;
            }
            done.calls += 1;
            match w.write_vectored(&slices[..n]) {
                Ok(0) => {
                    done.status = IoStatus::Closed;
                    return done;
                }
                Ok(written) => {
                    done.bytes += written;
                    self.advance(written, &mut done);
                }
                Err(e) => match classify(&e) {
                    None => continue,
                    Some(status) => {
                        done.status = status;
                        return done;
                    }
                },
            }
        }
        done.status = IoStatus::Progress(done.bytes);
        done
    }

    fn advance(&mut self, mut written: usize, done: &mut Flushed) {
        self.bytes -= written;
        while written > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.bytes.len() - self.offset as usize;
            if written < left {
                self.offset += written as u32;
                return;
            }
            written -= left;
            self.offset = 0;
            if let Some(id) = front.data_id {
                self.events -= 1;
                done.events += 1;
                done.last_id = Some(id);
            }
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Accepts `budget` bytes, then says WouldBlock; counts write calls.
    struct Throttled {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.budget {
                    break;
                }
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_events: 3,
        max_bytes: 100,
    };

    #[test]
    fn caps_drop_data_but_not_control() {
        let mut q = WriteQueue::default();
        for id in 0..3 {
            assert!(q.push_data(Bytes::from_static(b"0123456789"), id, LIMITS));
        }
        assert!(
            !q.push_data(Bytes::from_static(b"x"), 3, LIMITS),
            "event cap"
        );
        q.push_control(Bytes::from(vec![b'c'; 200]));
        assert_eq!((q.len_events(), q.len_bytes()), (3, 230));
        let mut q = WriteQueue::default();
        assert!(
            !q.push_data(Bytes::from(vec![0; 101]), 0, LIMITS),
            "byte cap"
        );
    }

    #[test]
    fn an_empty_queue_holds_no_ring() {
        let mut q = WriteQueue::default();
        assert!(q.0.is_none() && q.is_empty() && q.capacity() == 0);
        assert!(!q.push_data(Bytes::from(vec![0; 101]), 0, LIMITS));
        assert!(q.0.is_none(), "a refused first frame allocates nothing");
        assert_eq!(q.flush(&mut Vec::new(), 100).status, IoStatus::Progress(0));
        q.push_control(Bytes::from_static(b"hi"));
        q.release();
        assert!(q.0.is_some(), "kept while it holds a frame");
        let done = q.flush(&mut Vec::new(), 100);
        assert_eq!((done.bytes, q.is_empty()), (2, true));
        q.release();
        assert!(q.0.is_none());
    }

    #[test]
    fn partial_writes_resume_at_the_offset() {
        let mut q = WriteQueue::default();
        q.push_data(Bytes::from_static(b"hello "), 1, LIMITS);
        q.push_data(Bytes::from_static(b"world"), 2, LIMITS);
        let mut w = Throttled {
            out: vec![],
            budget: 4,
            calls: 0,
        };
        let f = q.flush(&mut w, usize::MAX);
        assert_eq!(
            (f.status, f.events, f.last_id),
            (IoStatus::WouldBlock, 0, None)
        );
        w.budget = 4;
        let f = q.flush(&mut w, usize::MAX);
        assert_eq!((f.events, f.last_id), (1, Some(1)));
        w.budget = 100;
        let f = q.flush(&mut w, usize::MAX);
        assert_eq!(
            (f.status, f.events, f.last_id),
            (IoStatus::Progress(3), 1, Some(2))
        );
        assert_eq!(w.out, b"hello world");
        assert!(q.is_empty() && q.len_bytes() == 0);
    }

    #[test]
    fn a_burst_goes_out_in_few_vectored_writes() {
        let mut q = WriteQueue::default();
        let limits = QueueLimits {
            max_events: 1000,
            max_bytes: 1 << 20,
        };
        for id in 0..100 {
            q.push_data(Bytes::from_static(b"event\n\n"), id, limits);
        }
        let mut w = Throttled {
            out: vec![],
            budget: 1 << 20,
            calls: 0,
        };
        let f = q.flush(&mut w, usize::MAX);
        // 64 slices per writev: a burst of 100 events takes 2 calls.
        assert_eq!((f.events, w.calls, f.calls), (100, 2, 2));
    }

    #[test]
    fn a_flush_stops_at_its_budget_and_resumes_later() {
        let mut q = WriteQueue::default();
        let limits = QueueLimits {
            max_events: 1000,
            max_bytes: 1 << 20,
        };
        for id in 0..10 {
            q.push_data(Bytes::from(vec![b'x'; 100]), id, limits);
        }
        let mut w = Throttled {
            out: vec![],
            budget: 250,
            calls: 0,
        };
        let f = q.flush(&mut w, 200);
        assert_eq!(
            (f.status, f.bytes),
            (IoStatus::Progress(250), 250),
            "one call, then the budget is spent"
        );
        assert!(!q.is_empty());
        w.budget = 10_000;
        let f = q.flush(&mut w, usize::MAX);
        assert_eq!((f.bytes, q.is_empty(), w.out.len()), (750, true, 1000));
    }

    #[test]
    fn discard_keeps_the_frame_in_progress_and_control_frames() {
        let mut q = WriteQueue::default();
        q.push_data(Bytes::from_static(b"aaaa"), 1, LIMITS);
        q.push_data(Bytes::from_static(b"bbbb"), 2, LIMITS);
        q.push_control(Bytes::from_static(b"pp"));
        let mut w = Throttled {
            out: vec![],
            budget: 2,
            calls: 0,
        };
        q.flush(&mut w, usize::MAX);
        q.discard_pending_data();
        w.budget = 100;
        let f = q.flush(&mut w, usize::MAX);
        assert_eq!(w.out, b"aaaapp");
        assert_eq!((f.last_id, q.len_events()), (Some(1), 0));
    }

    #[test]
    fn a_full_queue_conflates_to_the_newest_event_per_channel() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("trades:A"), Arc::from("trades:B"));
        let limits = QueueLimits {
            max_events: 2,
            max_bytes: 1000,
        };
        let mut q = WriteQueue::default();
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(q.push_conflated(f("a1"), 1, &a, limits), Pushed::Queued);
        assert_eq!(q.push_conflated(f("b2"), 2, &b, limits), Pushed::Queued);
        // Full: each newer event takes its own channel's place.
        assert_eq!(q.push_conflated(f("a3"), 3, &a, limits), Pushed::Replaced);
        assert_eq!(q.push_conflated(f("b4"), 4, &b, limits), Pushed::Replaced);
        let other: Arc<str> = Arc::from("trades:C");
        assert_eq!(q.push_conflated(f("c5"), 5, &other, limits), Pushed::Full);
        assert_eq!((q.len_events(), q.len_bytes()), (2, 4));
        let mut out = Vec::new();
        let done = q.flush(&mut out, 1 << 20);
        assert_eq!(out, b"a3b4");
        assert_eq!(done.last_id, Some(4));
    }
}
