//! The self-check after a run: for every channel, the newest entry of its stream in Redis
//! must be the last publish its connection had acknowledged (same id, same sequence number
//! in the data), and the stream must hold no more entries than were acknowledged and at
//! least `min(acknowledged, history kept)`. Keys: `<prefix>s:<ch>` on one server,
//! `<prefix>{<ch>}:s` on a cluster (asked on the slot's owner).

use crate::cli::Res;
use crate::load::ChannelTally;
use crate::redis::Redis;
use crate::support::resp::{cluster_command, command, Reply};

pub struct Checked {
    pub channels: usize,
    pub matching: usize,
    /// the first few mismatches, described
    pub mismatches: Vec<String>,
}

pub fn stream_key(prefix: &str, channel: &str, cluster: bool) -> String {
    match cluster {
        true => format!("{prefix}{{{channel}}}:s"),
        false => format!("{prefix}s:{channel}"),
    }
}

/// Checks every channel that was published to; `kept` is `history.max_events`.
pub fn streams(redis: &Redis, prefix: &str, tallies: &[ChannelTally], kept: u64) -> Checked {
    let mut c = Checked {
        channels: 0,
        matching: 0,
        mismatches: Vec::new(),
    };
    for t in tallies.iter().filter(|t| t.sent > 0) {
        c.channels += 1;
        match one(redis, prefix, t, kept) {
            Ok(()) => c.matching += 1,
            Err(e) if c.mismatches.len() < 5 => c.mismatches.push(format!("{}: {e}", t.name)),
            Err(_) => {}
        }
    }
    c
}

fn one(redis: &Redis, prefix: &str, t: &ChannelTally, kept: u64) -> Res<()> {
    let key = stream_key(prefix, &t.name, redis.cluster);
    let port = redis.servers[0].port;
    let ask = |args: &[&str]| match redis.cluster {
        true => cluster_command(port, args),
        false => command(port, args),
    };
    let len = match ask(&["XLEN", &key])? {
        Reply::Int(n) => n as u64,
        r => return Err(format!("XLEN: {r:?}")),
    };
    let newest = ask(&["XREVRANGE", &key, "+", "-", "COUNT", "1"])?;
    let entry = newest.items().first().map(Reply::items).unwrap_or(&[]);
    let id = entry.first().and_then(Reply::text);
    let fields = entry.get(1).map(Reply::items).unwrap_or(&[]);
    let data = fields
        .chunks(2)
        .find(|kv| kv[0].text().as_deref() == Some("d"))
        .and_then(|kv| kv.get(1)?.text());
    let seq = data
        .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .and_then(|v| v["s"].as_u64());
    let want = t.last.as_ref().map(|(s, id)| (Some(id.clone()), Some(*s)));
    if want != Some((id.clone(), seq)) {
        return Err(format!(
            "newest entry {id:?} s={seq:?}, last acknowledged {:?} ({} unanswered)",
            t.last, t.unanswered
        ));
    }
    if len > t.acked + t.unanswered || len < t.acked.min(kept) {
        return Err(format!(
            "{len} entries for {} acknowledged (history keeps {kept})",
            t.acked
        ));
    }
    Ok(())
}
