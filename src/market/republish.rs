//! The lease holder's trades into Redis, and the connection the market
//! coordination uses: one server's, or a Redis Cluster's.
//!
//! - One server (or Sentinel): the trades of one upstream message go in
//!   one pipeline, each refused (`FENCED`) unless the lease key still
//!   holds the holder's value, checked atomically with the publish.
//! - Redis Cluster: the lease lives in the `{market}` slot and a channel's
//!   keys in the channel's own, so no script can read both. Each trade is
//!   published on its channel's master, fenced there by the channel's
//!   fence key (`<prefix>{<channel>}:fence`, the highest fencing token
//!   that published on the channel): a holder whose token is lower than
//!   one that already published on the channel is refused (`FENCED`),
//!   atomically with the publish. What this does not give (the lease
//!   itself is not read): a holder that lost its lease may still publish
//!   on a channel until the new holder's first publish there, and until
//!   its own lease turn or timing rule stops it (see `lease`).

use std::time::Duration;

use redis::{ConnectionLike, RedisError, Script};
use std::sync::OnceLock;

use crate::bridge::wire::{self, PublishArgs};
use crate::bridge::Master;
use crate::link::Publish;

/// A connection to Redis: one server's, or a cluster's (which sends each
/// command to its key's master).
pub type Con = Box<dyn ConnectionLike + Send>;

/// The publish script (the bridge's own: the same text, so the same hash).
fn publish_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("../bridge/scripts/publish.lua")))
}

/// Opens the coordination's connection: to the master, or (Redis
/// Cluster) to the cluster through its seed nodes.
pub fn connect(master: &Master, cluster: bool, timeout: Duration) -> Result<Con, RedisError> {
    match cluster {
        true => Ok(Box::new(wire::connect_cluster(
            &master.seeds,
            timeout,
            timeout,
        )?)),
        false => Ok(Box::new(wire::connect_master(master, timeout)?)),
    }
}

/// Why trades were not (all) published.
#[derive(Debug)]
pub enum Refused {
    /// The lease is another node's: the holder must close its upstream.
    /// Redis Cluster: with the highest token the channel holds.
    Fenced(Option<u64>),
    /// Redis failed; the connection is to be made again.
    Failed(RedisError),
}

impl Refused {
    fn of(e: RedisError) -> Refused {
        if e.code() == Some("FENCED") {
            let highest = e
                .detail()
                .and_then(|d| d.split_whitespace().next())
                .and_then(|t| t.parse().ok());
            return Refused::Fenced(highest);
        }
        // A refusal inside a pipeline's answer may come wrapped.
        match e.to_string().contains("FENCED") {
            true => Refused::Fenced(None),
            false => Refused::Failed(e),
        }
    }
}

/// One server: the batch in one pipeline, fenced by the lease's `value`.
pub fn publish_by_lease(
    con: &mut Con,
    args: &PublishArgs<'_>,
    batch: &[Publish],
    value: &str,
) -> Result<(), Refused> {
    wire::publish_fenced(con.as_mut(), args, batch, value).map_err(Refused::of)
}

/// Redis Cluster: each trade on its channel's master, fenced by the
/// channel's highest token. A failure other than a fence skips that
/// channel's trades (the next message brings newer ones) and is reported
/// once the batch is done, unless the wire failed, which ends the batch.
pub fn publish_by_token(
    con: &mut Con,
    args: &PublishArgs<'_>,
    batch: &[Publish],
    token: u64,
) -> Result<(), Refused> {
    let (names, keep) = (args.names, args.retention);
    let mut failed = None;
    for p in batch {
        let channel = &p.channel;
        let published: Result<(String, i64), RedisError> = publish_script()
            .key(names.stream(channel))
            .key(names.last_id_of(channel))
            .key(names.channel_fence(channel))
            .arg(names.notify(channel))
            .arg(&p.data)
            .arg(keep.max_events.max(1))
            .arg(keep.max_age_ms)
            .arg(keep.dedupe_ttl_ms)
            .arg(token)
            .arg("token")
            .invoke(con.as_mut());
        match published.map_err(Refused::of) {
            Ok(_) => {}
            Err(Refused::Fenced(highest)) => return Err(Refused::Fenced(highest)),
            Err(Refused::Failed(e)) if wire::link_failed(&e) => return Err(Refused::Failed(e)),
            Err(Refused::Failed(e)) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(Refused::Failed(e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: &str, detail: &str) -> Refused {
        let e = redis::make_extension_error(code.to_string(), Some(detail.to_string()));
        Refused::of(e)
    }

    #[test]
    fn a_fence_names_the_channels_highest_token() {
        let table = [
            (
                "FENCED",
                "17 a newer market lease holder published here",
                Some(Some(17)),
            ),
            ("FENCED", "the market lease is no longer held", Some(None)),
            ("ERR", "something else", None),
        ];
        for (code, detail, want) in table {
            let got = match refusal(code, detail) {
                Refused::Fenced(highest) => Some(highest),
                Refused::Failed(_) => None,
            };
            assert_eq!(got, want, "{code} {detail}");
        }
    }
}
