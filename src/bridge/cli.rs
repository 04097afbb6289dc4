//! `redix publish CHANNEL DATA`: one publish from the command line, with
//! the node's script, key names and `min_replicas_ack`, and no thread.

use std::time::Duration;

use redis::RedisError;

use super::wire::{ack_wait_of, connect, publish_once, ClusterLink, Link, PublishArgs};
use super::{Master, Retention};
use crate::link::{Names, Publish};

/// `redix publish CHANNEL DATA`: one publish with the node's script and
/// settings. Returns the answer as JSON, or the exit code and why.
pub fn publish_cli(
    config: &crate::config::Config,
    channel: &str,
    data: &str,
    publish_id: Option<&str>,
) -> Result<String, (i32, String)> {
    if !config.redis.enabled() {
        return Err((2, "give --redis redis://HOST:PORT (or redis.url)".into()));
    }
    crate::hub::check_channel(channel).map_err(|e| (2, e))?;
    if publish_id.is_some_and(|p| p.is_empty() || p.len() > 256) {
        return Err((2, "publisher ids are 1 to 256 bytes".into()));
    }
    let data = crate::hub::compact_json(data);
    let timeout = Duration::from_millis(config.redis.timeout_ms);
    let master = Master::from_config(&config.redis).map_err(|e| (2, e))?;
    if !master.sentinels.is_empty() {
        super::sentinel::resolve_once(&master, timeout).map_err(|e| (1, e))?;
    }
    let endpoint = master.endpoint().map_err(|e| (1, e))?;
    let where_ = |e: RedisError| (1, format!("{}:{}: {e}", endpoint.host, endpoint.port));
    let (mut con, names): (Box<dyn Link>, Names) = match config.redis.is_cluster() {
        true => (
            Box::new(
                ClusterLink::open(&master.seeds, timeout, timeout + ack_wait_of(&config.redis))
                    .map_err(where_)?,
            ),
            Names::clustered(&config.redis.prefix),
        ),
        false => {
            let con = connect(&endpoint, timeout).map_err(where_)?;
            // A publish's reply may wait for its `WAIT`.
            let _ = con.set_read_timeout(Some(timeout + ack_wait_of(&config.redis)));
            (Box::new(con), Names::new(&config.redis.prefix))
        }
    };
    let args = PublishArgs {
        names: &names,
        retention: Retention::of(config),
    };
    let publish = Publish {
        channel: channel.to_string(),
        data: data.into_owned(),
        publish_id: publish_id.map(str::to_string),
    };
    let (id, duplicate) =
        publish_once(&mut *con, &args, &publish).map_err(|e| (1, e.to_string()))?;
    let needed = config.redis.min_replicas_ack;
    if needed > 0 {
        let acked = con
            .wait_for(&names.stream(channel), needed, config.redis.ack_timeout_ms)
            .map_err(|e| (1, format!("WAIT: {e}")))?;
        if acked < u64::from(needed) {
            let why = format!("published as {id}, but {acked} of {needed} replicas confirmed it; retry with the same --id");
            return Err((1, why));
        }
    }
    let answer = serde_json::json!({"id": id, "channel": channel, "duplicate": duplicate});
    Ok(answer.to_string())
}
