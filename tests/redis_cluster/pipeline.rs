//! Publishes pipelined per master: many at once, on every shard.

use super::*;

/// `per_shard` channels on each master's slot range.
fn channels_on_shards(node: &RedisServer, per_shard: usize) -> Vec<String> {
    let mut found: [Vec<String>; 3] = Default::default();
    for i in 0.. {
        let ch = format!("pl-{i}");
        let slot = usize::from(slot_of(node, &ch));
        let shard = (slot * 3 / 16384).min(2);
        if found[shard].len() < per_shard {
            found[shard].push(ch);
        }
        if found.iter().all(|s| s.len() == per_shard) {
            break;
        }
    }
    found.concat()
}

/// The sum of a per-shard series over the shards.
fn over_shards(node: SocketAddr, name: &str) -> f64 {
    shard_rows(node, name).values().sum()
}

#[test]
fn concurrent_publishes_on_every_shard_are_pipelined_acknowledged_and_delivered_once_in_order() {
    let cluster = start_cluster();
    let channels = channels_on_shards(&cluster[0], 4);
    let a = cluster_node(&cluster[..3]);
    let mut ws = ws_on(a.addr, &channels);
    const EACH: i64 = 100;
    // One publisher per channel, all at once: each channel's order is its
    // publisher's.
    let publishers: Vec<_> = channels
        .iter()
        .map(|ch| {
            let (ch, addr) = (ch.clone(), a.addr);
            std::thread::spawn(move || {
                let mut p = Publisher::connect(addr);
                let ids: Vec<(String, i64)> = (0..EACH)
                    .map(|i| (p.publish_id(&ch, &i.to_string()), i))
                    .collect();
                (ch, ids)
            })
        })
        .collect();
    let published: Published = publishers
        .into_iter()
        .map(|t| t.join().expect("a publisher"))
        .collect();
    let total = channels.len() * EACH as usize;
    let mut got: Published = HashMap::new();
    for _ in 0..total {
        let (ch, id, data) = next_ws(&mut ws);
        got.entry(ch).or_default().push((id, data));
    }
    assert_eq!(got, published, "every event once, in order per channel");
    // Each channel's ids increase in publish order.
    for (ch, evs) in &published {
        let ids: Vec<(u64, u64)> = evs.iter().map(|(id, _)| stream_id(id)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ch}: {ids:?}");
    }
    // The pipeline was used: on every shard, fewer round trips than
    // publishes (concurrent publishes shared them).
    let timed = shard_rows(a.addr, "redix_redis_shard_publish_seconds_count");
    let pipelines = shard_rows(a.addr, "redix_redis_shard_publish_pipelines_total");
    assert_eq!(timed.len(), 3, "{timed:?}");
    for (shard, n) in &timed {
        assert_eq!(*n, (4 * EACH) as f64, "{shard}: {timed:?}");
        assert!(pipelines[shard] >= 1.0, "{shard}: {pipelines:?}");
    }
    let trips = over_shards(a.addr, "redix_redis_shard_publish_pipelines_total");
    println!(
        "{total} publishes on 12 channels over 3 shards in {trips} pipelines ({:.1} per pipeline): all acknowledged, delivered once, in order",
        total as f64 / trips
    );
    assert!(trips < total as f64, "{pipelines:?}");
}

/// A stream id `<ms>-<n>` as numbers.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, n) = id.split_once('-').expect("a stream id");
    (ms.parse().expect("ms"), n.parse().expect("n"))
}
