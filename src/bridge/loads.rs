//! Channel loads a pub/sub side (one server's connection or the shard
//! links) asked for but could not hand to the command thread yet (its
//! queue was full): kept, newest per channel, and handed over each turn.

use std::sync::Arc;

use crate::hub::Hub;
use crate::link::{Command, Redis};

/// Loads waiting for room: (channel, sync token, resume after).
#[derive(Default)]
pub struct Unsent(Vec<(Arc<str>, u64, Option<u64>)>);

impl Unsent {
    /// Starts loading `channel` from what this node last delivered; a
    /// newer load of the channel replaces one not sent yet.
    pub fn start(&mut self, hub: &Hub, redis: &Redis, channel: Arc<str>) {
        if let Some((token, after)) = hub.begin_sync(&channel) {
            self.0.retain(|(c, _, _)| *c != channel);
            self.0.push((channel, token, after));
            self.retry(redis);
        }
    }

    /// Hands over what the command thread's queue takes now.
    pub fn retry(&mut self, redis: &Redis) {
        while let Some((channel, token, after)) = self.0.pop() {
            let cmd = Command::Load {
                channel: channel.clone(),
                token,
                after,
            };
            if redis.submit(cmd).is_err() {
                self.0.push((channel, token, after));
                return;
            }
        }
    }
}
