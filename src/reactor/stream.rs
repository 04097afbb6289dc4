//! Subscriptions, for SSE and WebSocket alike: one routine attaches
//! channels in the hub and queues, in order, a reset for each channel whose
//! history no longer reaches the cursor, the replay, and then lets live
//! events in by indexing the connection under its channels. The hub reads
//! history and attaches under one lock, so replay and live delivery meet
//! at `live_from` without a gap or a double.
//!
//! Also here: starting an SSE stream, and taking channels off the local
//! index when a connection leaves them.

use std::sync::Arc;

use bytes::Bytes;

use super::timer::TimerKind;
use super::topics::{shared_name, Subscribers};
use super::{event_bytes, release_slot, reset_bytes, Encoding, Waiting, Worker};
use crate::api::answers::redis_unavailable;
use crate::api::StreamStart;
use crate::conn::composite::Composite;
use crate::conn::{ConnState, Phase, SlotKind, Sse, Sub};
use crate::hub::{cursor, NotReady, Snapshot};
use crate::proto::gzip as gz;
use crate::proto::sse;

impl Worker {
    /// Attaches `channels` for connection `(key, gen)` in the hub; the
    /// snapshot says where each channel's live delivery starts and what
    /// to replay. Redis mode may answer "not loaded yet".
    pub(super) fn attach(
        &mut self,
        key: usize,
        gen: u32,
        channels: &[Arc<str>],
        cursor: Option<u64>,
    ) -> Result<Snapshot, NotReady> {
        let conn = self.conn_ref(key, gen);
        self.shared.hub.subscribe(conn, channels, cursor)
    }

    /// Queues what a new subscription owes before live events (resets,
    /// then the replay), notes where live delivery starts, and indexes the
    /// connection under `channels` so live events reach it.
    pub(super) fn begin_delivery(&mut self, key: usize, channels: &[Arc<str>], snap: &Snapshot) {
        let enc = Encoding::of(&self.shared);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        for ch in &snap.resets {
            if let Some(bytes) = reset_bytes(&mut conn.state, ch) {
                conn.queue.push_control(bytes);
            }
        }
        for ev in &snap.replay {
            let Some(bytes) = event_bytes(&mut conn.state, ev, &enc) else {
                break;
            };
            conn.queue.push_replay(bytes, ev.id);
            conn.state.sent(ev);
        }
        if let Some(d) = conn.state.delivery_mut() {
            if let Some(last) = snap.replay.last() {
                d.queued(last.id);
            }
            let live_from = snap.live_from.iter().copied().max().unwrap_or(0);
            d.live_from_max = d.live_from_max.max(live_from);
        }
        for ch in channels {
            match self.topics.get_mut(ch) {
                Some(subs) => subs.insert(key),
                None => {
                    self.topics.insert(ch.clone(), Subscribers::new(key));
                }
            }
        }
        self.mark_dirty(key, gen);
        let ended = snap.replay.last().is_some_and(|ev| ev.ends_job);
        if ended
            && self
                .conns
                .get(key)
                .is_some_and(|c| super::deliver::ends_with_job(&c.state))
        {
            let now = self.now_ms();
            self.close_gracefully(key, None, false, now);
        }
    }

    /// Turns a request into an SSE stream: head and `retry:` first, then
    /// what the subscription owes, then live events.
    pub(super) fn start_stream(&mut self, key: usize, start: StreamStart, now: u64) {
        let Some(gen) = self.conns.get(key).map(|c| c.gen) else {
            return self.shared.access.sse.release(start.ip_slot);
        };
        let conn = self.conn_ref(key, gen);
        let snap = match self
            .shared
            .hub
            .subscribe_from(conn, &start.channels, &start.cursor)
        {
            Ok(snap) => snap,
            Err(NotReady::Loading) => return self.park(key, Waiting::Stream(start), now),
            Err(why) => {
                self.shared.access.sse.release(start.ip_slot);
                let message = match why {
                    NotReady::Full => "too many channels are loading from Redis; retry shortly",
                    _ => "Redis is unreachable; retry shortly",
                };
                let bytes = Bytes::from(redis_unavailable(message, false));
                return self.close_gracefully(key, Some(bytes), false, now);
            }
        };
        let retry = {
            let cfg = &self.shared.config.sse;
            cfg.retry_ms + self.jitter(cfg.retry_jitter_ms)
        };
        let heartbeat = self.shared.config.sse.heartbeat_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            // Gone meanwhile: undo the attach through the normal path.
            self.shared.access.sse.release(start.ip_slot);
            return self.release_channels(&start.channels);
        };
        let http_slot = conn.ip_slot.replace((SlotKind::Sse, start.ip_slot));
        release_slot(&self.shared.access, http_slot);
        let subs = subs(&start.channels, &snap)
            .map(|mut sub| {
                sub.channel = shared_name(&self.topics, &sub.channel).unwrap_or(sub.channel);
                sub
            })
            .collect();
        let mut sse = Sse::new(subs, start.gzip, start.batch);
        if start.composite {
            sse.set_composite(composite(&start, &snap));
        }
        let mut head = match start.gzip {
            true => [sse::HEAD_GZIP.as_bytes(), &gz::HEADER[..]].concat(),
            false => sse::HEAD.as_bytes().to_vec(),
        };
        head.extend_from_slice(&sse.control(&sse::retry(retry)));
        conn.queue.push_control(Bytes::from(head));
        let old = std::mem::replace(&mut conn.state, ConnState::Sse(sse));
        self.moved(old.phase(), Phase::Sse);
        self.cancel_request_timer(key, gen, &old);
        self.timers
            .schedule(now + heartbeat, key, gen, TimerKind::Heartbeat);
        self.install_token(key, start.grant, now);
        self.begin_delivery(key, &start.channels, &snap);
    }

    /// Detaches channels that have no local subscriber.
    pub(super) fn release_channels(&mut self, channels: &[Arc<str>]) {
        for ch in channels {
            if !self.topics.contains_key(ch) {
                self.shared.hub.detach(self.id, ch);
            }
        }
    }

    /// Takes `key` off the local index of `channels`; a channel with no
    /// local subscriber left is detached in the hub.
    pub(super) fn unsubscribe(&mut self, key: usize, channels: &[Sub]) {
        for Sub { channel: ch, .. } in channels {
            if let Some(subs) = self.topics.get_mut(ch) {
                if subs.remove(key) {
                    self.topics.remove(ch);
                    self.shared.hub.detach(self.id, ch);
                }
            }
        }
    }
}

/// The subscriptions a snapshot starts: each channel with where its live
/// delivery begins.
fn subs<'a>(channels: &'a [Arc<str>], snap: &'a Snapshot) -> impl Iterator<Item = Sub> + 'a {
    channels
        .iter()
        .zip(&snap.live_from)
        .map(|(c, &live_from)| Sub {
            channel: c.clone(),
            live_from,
        })
}

/// A composite-cursor stream's cursor at its start: each channel's
/// position from the client's cursor, or, without one, where its live
/// delivery starts (the client asked for nothing before).
fn composite(start: &StreamStart, snap: &Snapshot) -> Composite {
    let positions = (0..start.channels.len())
        .map(|i| match start.cursor.of(i) {
            Some(at) => at,
            None => snap.live_from.get(i).copied().unwrap_or(0),
        })
        .collect();
    Composite::new(cursor::tag(&start.channels), positions)
}
