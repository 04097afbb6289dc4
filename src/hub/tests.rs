//! Unit tests of the hub (embedded mode; Redis mode's are in `remote.rs`).

use super::*;
use crate::mailbox::{ConnRef, Outbox};
use std::sync::Mutex as StdMutex;

#[derive(Default)]
pub(super) struct Recorder {
    pub got: StdMutex<Vec<u64>>,
    pub retried: StdMutex<Vec<(usize, u32)>>,
    pub resets: StdMutex<Vec<String>>,
    full: bool,
}

impl Outbox for Recorder {
    fn deliver(&self, event: Arc<Event>) -> bool {
        if self.full {
            return false;
        }
        self.got.lock().unwrap().push(event.id);
        true
    }

    fn retry(&self, conn: ConnRef, _channel: Arc<str>) -> bool {
        self.retried.lock().unwrap().push((conn.key, conn.gen));
        true
    }

    fn error(&self, channel: Arc<str>, _code: &'static str, _message: Arc<str>) -> bool {
        self.resets.lock().unwrap().push(format!("error:{channel}"));
        true
    }

    fn reset(&self, channel: Arc<str>) -> bool {
        self.resets.lock().unwrap().push(channel.to_string());
        true
    }
}

const W: ConnRef = ConnRef {
    reactor: 0,
    key: 0,
    gen: 0,
};

/// Subscribes in embedded mode, where nothing waits.
fn sub(hub: &Hub, reactor: usize, channels: &[Arc<str>], cursor: Option<u64>) -> Snapshot {
    let w = ConnRef { reactor, ..W };
    hub.subscribe(w, channels, cursor).unwrap()
}

pub(super) fn config(max_events: usize) -> HubConfig {
    HubConfig {
        history: HistoryLimits {
            max_events,
            max_age_ms: 1000,
        },
        job_history: HistoryLimits {
            max_events: 50,
            max_age_ms: 5000,
        },
        max_channels: 10,
        max_bytes: 1 << 30,
        dedupe_ttl_ms: 500,
        dedupe_max: 100,
        redis: false,
    }
}

fn hub(n: usize, max_events: usize) -> (Hub, Vec<Arc<Recorder>>) {
    let recs: Vec<Arc<Recorder>> = (0..n).map(|_| Arc::new(Recorder::default())).collect();
    let outs = recs.iter().map(|r| r.clone() as Arc<dyn Outbox>).collect();
    (Hub::new(outs, 100, config(max_events)), recs)
}

pub(super) fn chans(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|n| Arc::from(*n)).collect()
}

fn ids(evs: &[Arc<Event>]) -> Vec<u64> {
    evs.iter().map(|e| e.id).collect()
}

#[test]
fn events_reach_only_subscribed_reactors_in_id_order() {
    let (hub, recs) = hub(3, 0);
    sub(&hub, 0, &chans(&["news"]), None);
    sub(&hub, 2, &chans(&["news"]), None);
    let ids: Vec<u64> = (0..5)
        .map(|_| hub.publish("news", "1", None, 0).id)
        .collect();
    assert_eq!(ids, vec![100, 101, 102, 103, 104]);
    assert_eq!(*recs[0].got.lock().unwrap(), ids);
    assert!(recs[1].got.lock().unwrap().is_empty());
    assert_eq!(*recs[2].got.lock().unwrap(), ids);
}

#[test]
fn resume_replays_after_the_cursor_over_several_channels_in_id_order() {
    let (hub, _) = hub(1, 10);
    for (i, ch) in ["a", "b", "a", "c", "b"].iter().enumerate() {
        assert_eq!(hub.publish(ch, "1", None, i as u64).id, 100 + i as u64);
    }
    let snap = sub(&hub, 0, &chans(&["a", "b"]), Some(100));
    assert_eq!(ids(&snap.replay), vec![101, 102, 104]);
    assert!(snap.resets.is_empty());
    assert_eq!(snap.live_from, vec![102, 104]);
    let snap = sub(&hub, 0, &chans(&["c"]), None);
    assert!(snap.replay.is_empty(), "no cursor, no replay");
}

#[test]
fn a_position_per_channel_replays_each_channel_from_its_own() {
    let (hub, _) = hub(1, 2);
    // a: 100 101 103 104 (keeps 103, 104); b: 102 105
    for ch in ["a", "a", "b", "a", "a", "b"] {
        hub.publish(ch, "1", None, 0);
    }
    let each = |p: &[u64]| Resume::Each(p.into());
    let snap = hub
        .subscribe_from(W, &chans(&["a", "b"]), &each(&[103, 100]))
        .unwrap();
    assert_eq!(ids(&snap.replay), vec![102, 104, 105]);
    assert!(snap.resets.is_empty());
    assert_eq!(snap.live_from, vec![104, 105]);
    // a's position is older than its history: a reset for a only.
    let snap = hub
        .subscribe_from(W, &chans(&["a", "b"]), &each(&[100, 105]))
        .unwrap();
    assert_eq!(snap.resets, chans(&["a"]));
    assert_eq!(ids(&snap.replay), vec![103, 104]);
    // 0: everything there is, on that channel only.
    let snap = hub
        .subscribe_from(W, &chans(&["a", "b"]), &each(&[104, 0]))
        .unwrap();
    assert_eq!(ids(&snap.replay), vec![102, 105]);
    assert_eq!(Resume::Fresh.of(0), None);
    assert_eq!(Resume::At(7).of(3), Some(7));
}

#[test]
fn a_cursor_older_than_the_history_gets_a_reset() {
    let (hub, _) = hub(1, 2);
    for _ in 0..4 {
        hub.publish("a", "1", None, 0);
    }
    let snap = sub(&hub, 0, &chans(&["a"]), Some(100));
    assert_eq!(snap.resets, chans(&["a"]));
    assert_eq!(
        ids(&snap.replay),
        vec![102, 103],
        "what is left still comes"
    );
    let snap = sub(&hub, 0, &chans(&["a"]), Some(101));
    assert!(snap.resets.is_empty());
    // A channel swept away entirely still answers a reset.
    hub.detach(0, "a");
    assert_eq!(hub.sweep(5000), 1);
    let snap = sub(&hub, 0, &chans(&["a"]), Some(101));
    assert_eq!(snap.resets, chans(&["a"]));
}

#[test]
fn live_delivery_starts_after_the_cursor_even_when_this_hub_is_behind() {
    let (hub, _) = hub(1, 10);
    hub.publish("a", "1", None, 0);
    // A cursor from a node that is ahead (Redis mode): 150 > last id 100.
    let snap = sub(&hub, 0, &chans(&["a"]), Some(150));
    assert_eq!(snap.live_from, vec![150]);
    assert!(snap.replay.is_empty() && snap.resets.is_empty());
}

#[test]
fn duplicates_within_the_window_are_not_published_again() {
    let (hub, recs) = hub(1, 10);
    sub(&hub, 0, &chans(&["x"]), None);
    let first = hub.publish("x", "1", Some("k"), 0);
    let again = hub.publish("x", "1", Some("k"), 499);
    assert_eq!((again.id, again.duplicate), (first.id, true));
    let later = hub.publish("x", "1", Some("k"), 500);
    assert!(!later.duplicate && later.id > first.id);
    assert_eq!(recs[0].got.lock().unwrap().len(), 2);
}

#[test]
fn the_sweep_bounds_channels_without_subscribers() {
    let (hub, _) = hub(1, 10);
    for i in 0..50 {
        hub.publish(&format!("one-shot-{i}"), "1", None, 0);
    }
    let f = hub.figures();
    assert_eq!((f.channels, f.history_events), (10, 10), "channel cap");
    assert_eq!(hub.stats.untracked.load(Ordering::Relaxed), 40);
    assert_eq!(hub.sweep(999), 0, "not expired yet");
    assert_eq!(hub.sweep(1000), 10);
    let f = hub.figures();
    assert_eq!((f.channels, f.history_events, f.history_bytes), (0, 0, 0));
}

#[test]
fn subscribed_channels_survive_the_sweep() {
    let (hub, _) = hub(1, 10);
    sub(&hub, 0, &chans(&["kept"]), None);
    hub.publish("kept", "1", None, 0);
    hub.sweep(5000);
    assert_eq!(hub.figures().channels, 1);
    hub.detach(0, "kept");
    assert_eq!(hub.figures().channels, 0, "no history left, no subscriber");
}

#[test]
fn full_inbox_is_counted() {
    let full = Arc::new(Recorder {
        full: true,
        ..Recorder::default()
    });
    let hub = Hub::new(vec![full as Arc<dyn Outbox>], 1, config(0));
    sub(&hub, 0, &chans(&["x"]), None);
    let p = hub.publish("x", "1", None, 0);
    assert_eq!(p.dropped, 1);
    assert_eq!(hub.stats.inbox_drops.load(Ordering::Relaxed), 1);
}

#[test]
fn channel_names() {
    assert!(check_channel("trades:AAPL").is_ok());
    assert!(check_channel("").is_err());
    assert!(check_channel("a\"b").is_err());
    assert!(check_channel(&"x".repeat(MAX_CHANNEL_LEN + 1)).is_err());
}

#[test]
fn the_byte_cap_evicts_the_oldest_events_over_all_channels() {
    let size = history::event_bytes(&Event::new(1, Arc::from("a"), "1"));
    let cfg = HubConfig {
        // Room for four one-digit events.
        max_bytes: 4 * size + size / 2,
        ..config(100)
    };
    let rec = Arc::new(Recorder::default());
    let hub = Hub::new(vec![rec as Arc<dyn Outbox>], 1, cfg);
    let old = hub.publish("a", "1", None, 0).id;
    for _ in 0..3 {
        hub.publish("b", "2", None, 0);
    }
    assert_eq!(hub.figures().history_events, 4);
    // A fifth event: the oldest of all (on "a") makes room.
    hub.publish("b", "3", None, 0);
    let f = hub.figures();
    assert_eq!(
        (f.history_events, hub.stats.evicted.load(Ordering::Relaxed)),
        (4, 1)
    );
    assert!(f.history_bytes <= cfg.max_bytes, "{f:?}");
    // A resume from before the evicted event is told so.
    let snap = sub(&hub, 0, &chans(&["a"]), Some(old - 1));
    assert_eq!(snap.resets, chans(&["a"]));
    // Then "b" loses its oldest, one per new event.
    hub.publish("a", "4", None, 0);
    hub.publish("a", "5", None, 0);
    assert_eq!(hub.figures().history_events, 4);
    assert_eq!(hub.stats.evicted.load(Ordering::Relaxed), 3);
}

#[test]
fn a_redis_mode_channel_that_leaves_gives_its_history_bytes_back() {
    let rec = Arc::new(Recorder::default());
    let cfg = HubConfig {
        redis: true,
        ..config(10)
    };
    let hub = Hub::new(vec![rec as Arc<dyn Outbox>], 1, cfg);
    hub.set_link(true);
    let c = chans(&["c"]);
    let w = ConnRef { reactor: 0, ..W };
    assert!(hub.subscribe(w, &c, None).is_err(), "loads first");
    let (token, _) = hub.begin_sync("c").unwrap();
    let ev = |id: u64| RemoteEvent {
        id,
        id_text: ids::stream_id(id),
        data: "1".into(),
    };
    assert!(hub.finish_sync("c", token, vec![ev(1 << 20), ev(2 << 20)], 0, 0));
    hub.subscribe(w, &c, None).unwrap();
    assert_eq!(hub.figures().history_events, 2);
    // The last local subscriber leaves: the channel goes, and so do the
    // bytes its history held (they stayed counted before).
    hub.detach(0, "c");
    let f = hub.figures();
    assert_eq!((f.channels, f.history_events, f.history_bytes), (0, 0, 0));
}
