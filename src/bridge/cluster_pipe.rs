//! Redis Cluster: the command connection, pipelined per master.
//!
//! A batch of publishes (or history loads) is split by the master that
//! owns each command's slot (the slot of the channel, the hash tag of
//! every key the command names) and written as one pipeline to each of
//! those masters before any answer is read: one round trip per batch, the
//! shards working in parallel, as one server's connection pipelines.
//!
//! Why our own connection per master and not the `redis` crate's
//! `ClusterPipeline`: in the crate's synchronous cluster connection
//! (1.8) an error answer inside a pipeline is a value, never retried,
//! and without `ignore_errors` (not offered for cluster pipelines) one
//! error answer turns the whole pipeline into an error that drops the
//! other commands' answers: a batch with one `MOVED` could not tell
//! which publishes had run, and a publish without a publisher id cannot
//! be sent twice. Plain pipelines on a `Connection` per master give one
//! answer per command.
//!
//! Redirects stay with the crate: a command answered with an error the
//! crate would retry (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`,
//! `READONLY`, …; see [`redirected`]) runs again alone through the
//! crate's cluster connection, which follows it, and the slot map is read
//! again before the next batch. So is a command of a slot the map has no
//! master for. Order per channel holds: a master answers a slot's
//! commands in the order sent, and once it redirects one of them it
//! redirects the batch's later ones of that slot too (the slot left it,
//! or is migrating, which only moves on), so the redirected ones are the
//! tail of each channel's commands and run again in batch order.
//!
//! A master whose pipeline fails on the wire: its commands that had not
//! answered fail with the error (the caller drops this connection, and
//! the next one reads the slot map again, finding a promoted replica);
//! the other masters' answers stand. `WAIT` runs on the connection the
//! writes went through: the master's own, and the crate's cluster
//! connection too when anything ran there since the batch began.

use std::collections::HashMap;
use std::time::Duration;

use redis::cluster::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Connection, ConnectionLike, RedisError, RetryMethod, Value};

use super::shards::slots::{self, slot_of, Addr, SlotMap};
use super::wire::{connect, connect_cluster, link_failed, packed, wait_replicas, Link, Reply};
use super::Endpoint;

/// The command connection of Redis Cluster mode.
pub struct ClusterLink {
    /// Single commands, redirects followed, scripts loaded on every
    /// master.
    cluster: ClusterConnection,
    /// Pipelines: one connection per master, opened when first used.
    masters: HashMap<Addr, Connection>,
    map: SlotMap,
    /// A redirect was answered: read the map before the next batch.
    stale: bool,
    /// Something ran on `cluster` since the batch began (for `WAIT`).
    cluster_wrote: bool,
    /// Seeds as `host:port`, asked for the map after the masters.
    seeds: Vec<Addr>,
    /// Credentials of the masters' connections.
    template: Endpoint,
    timeout: Duration,
    /// Read timeout of the masters' connections (a reply may wait for
    /// its `WAIT`).
    reply_within: Duration,
}

impl ClusterLink {
    /// Connects to the cluster through its seeds and reads the slot map.
    /// `reply_within` bounds each answer (a publish's includes its `WAIT`).
    pub fn open(
        seeds: &[Endpoint],
        timeout: Duration,
        reply_within: Duration,
    ) -> Result<ClusterLink, RedisError> {
        let cluster = connect_cluster(seeds, timeout, reply_within)?;
        let template = seeds
            .first()
            .cloned()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no seed node")))?;
        let mut link = ClusterLink {
            cluster,
            masters: HashMap::new(),
            map: SlotMap::default(),
            stale: true,
            cluster_wrote: false,
            seeds: seeds
                .iter()
                .map(|e| format!("{}:{}", e.host, e.port))
                .collect(),
            template,
            timeout,
            reply_within,
        };
        link.refresh_map();
        Ok(link)
    }

    /// Reads the slot map (asking the masters we hold a connection to,
    /// then the seeds, then the other masters of the old map: a dead
    /// master last); on failure keeps the old one, and commands it cannot
    /// place run alone.
    fn refresh_map(&mut self) {
        let mut nodes: Vec<Addr> = self.masters.keys().cloned().collect();
        nodes.extend(self.seeds.iter().cloned());
        nodes.extend(self.map.masters());
        let mut seen = std::collections::HashSet::new();
        nodes.retain(|n| seen.insert(n.clone()));
        match slots::fetch(&nodes, &self.template, self.timeout, &|| {}) {
            Ok(map) => {
                self.masters.retain(|addr, _| map.masters().contains(addr));
                self.map = map;
                self.stale = false;
            }
            Err(e) => log::warn!("Redis Cluster slot map for publishes: {e}"),
        }
    }

    /// The master's pipeline connection, opened if need be.
    fn master(&mut self, addr: &Addr) -> Result<&mut Connection, RedisError> {
        if !self.masters.contains_key(addr) {
            let endpoint = slots::endpoint_of(addr, &self.template)
                .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "bad master address")))?;
            let con = connect(&endpoint, self.timeout)?;
            con.set_read_timeout(Some(self.reply_within))?;
            self.masters.insert(addr.clone(), con);
        }
        self.masters
            .get_mut(addr)
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no connection")))
    }

    /// Sends each master its commands (indexes into `cmds`), then reads
    /// the answers; a master that fails on the wire is dropped and its
    /// unanswered commands get the error.
    fn run_groups(&mut self, cmds: &[Cmd], groups: &[(Addr, Vec<usize>)], out: &mut [Reply]) {
        let mut sent = Vec::with_capacity(groups.len());
        for (addr, at) in groups {
            let bytes = packed(at.iter().map(|i| &cmds[*i]));
            let wrote = self
                .master(addr)
                .and_then(|con| con.send_packed_command(&bytes));
            match wrote {
                Ok(()) => sent.push((addr, at)),
                Err(e) => self.fail(addr, at, out, e),
            }
        }
        for (addr, at) in sent {
            for (n, i) in at.iter().enumerate() {
                let read = self.master(addr).and_then(|con| con.recv_response());
                match read {
                    Ok(v) => out[*i] = v.extract_error(),
                    Err(e) => {
                        self.fail(addr, &at[n..], out, e);
                        break;
                    }
                }
            }
        }
    }

    fn fail(&mut self, addr: &Addr, at: &[usize], out: &mut [Reply], e: RedisError) {
        log::warn!("Redis Cluster pipeline to {addr}: {e}");
        self.masters.remove(addr);
        self.stale = true;
        for i in at {
            out[*i] = Err(e.clone());
        }
    }

    /// Runs the commands answered with a redirect (again) and those no
    /// master was known for, alone and in order, through the cluster
    /// connection; a wire failure there ends it (the later ones answer
    /// with it).
    fn run_alone(&mut self, cmds: &[Cmd], out: &mut [Reply], alone: &[bool]) {
        let mut failed: Option<RedisError> = None;
        for ((cmd, reply), alone) in cmds.iter().zip(out.iter_mut()).zip(alone) {
            if !alone && !reply.as_ref().is_err_and(redirected) {
                continue;
            }
            self.stale = true;
            if let Some(e) = &failed {
                *reply = Err(e.clone());
                continue;
            }
            self.cluster_wrote = true;
            *reply = cmd.query::<Value>(&mut self.cluster);
            if let Err(e) = reply {
                failed = link_failed(e).then(|| e.clone());
            }
        }
    }
}

impl Link for ClusterLink {
    fn wait_for(&mut self, key: &str, needed: u32, timeout_ms: u64) -> Result<u64, RedisError> {
        let mut acked = u64::MAX;
        let owner = self.map.owner(slot_of(hash_tag(key))).cloned();
        if let Some(con) = owner.and_then(|a| self.masters.get_mut(&a)) {
            acked = acked.min(wait_replicas(con, needed, timeout_ms)?);
        }
        if self.cluster_wrote || acked == u64::MAX {
            let route = Route::with_key(key, SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            let mut wait = redis::cmd("WAIT");
            wait.arg(needed).arg(timeout_ms);
            let reply = self.cluster.route_command(&wait, routing)?;
            acked = acked.min(redis::from_redis_value(reply)?);
        }
        Ok(acked)
    }

    fn pipeline(&mut self, cmds: &[Cmd]) -> Result<Vec<Reply>, RedisError> {
        if self.stale {
            self.refresh_map();
        }
        self.cluster_wrote = false;
        let mut out: Vec<Reply> = vec![Ok(Value::Nil); cmds.len()];
        // Commands of no known master run alone, through the crate.
        let mut alone = vec![false; cmds.len()];
        let mut groups: Vec<(Addr, Vec<usize>)> = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let owner = first_key(cmd).and_then(|k| self.map.owner(slot_of(hash_tag(k))));
            let Some(owner) = owner else {
                alone[i] = true;
                continue;
            };
            match groups.iter_mut().find(|(a, _)| a == owner) {
                Some((_, at)) => at.push(i),
                None => groups.push((owner.clone(), vec![i])),
            }
        }
        self.run_groups(cmds, &groups, &mut out);
        self.run_alone(cmds, &mut out, &alone);
        Ok(out)
    }
}

/// Single commands (scripts loaded, the canary, a publish run again) go
/// through the crate's cluster connection.
impl ConnectionLike for ClusterLink {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        self.cluster_wrote = true;
        self.cluster.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        self.cluster_wrote = true;
        self.cluster.req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        self.cluster_wrote = true;
        self.cluster.req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn supports_pipelining(&self) -> bool {
        false
    }

    fn check_connection(&mut self) -> bool {
        self.cluster.check_connection()
    }

    fn is_open(&self) -> bool {
        self.cluster.is_open()
    }
}

/// An error answer the crate's single-command path would retry (a
/// redirect, a slot in migration, the cluster or a master down, a node
/// loading, a master demoted under a stale map).
fn redirected(e: &RedisError) -> bool {
    e.code().is_some() && !matches!(e.retry_method(), RetryMethod::NoRetry)
}

/// The first key of an `EVALSHA sha numkeys key …` (the publish and load
/// scripts' commands: every key of one shares the channel's slot).
fn first_key(cmd: &Cmd) -> Option<&str> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let (name, _sha, keys, key) = (args.next()??, args.next()??, args.next()??, args.next()??);
    if !name.eq_ignore_ascii_case(b"EVALSHA") || keys == b"0" {
        return None;
    }
    std::str::from_utf8(key).ok()
}

/// What decides a key's slot: its `{hash tag}` if it has a non-empty
/// one, else the whole key.
fn hash_tag(key: &str) -> &str {
    let Some((_, rest)) = key.split_once('{') else {
        return key;
    };
    match rest.split_once('}') {
        Some((tag, _)) if !tag.is_empty() => tag,
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_placed_by_the_hash_tag_of_its_first_key() {
        for (key, tag) in [
            ("rx:{news}:s", "news"),
            ("rx:{news}:p:{x}", "news"),
            ("{a}", "a"),
            ("rx:{}:s", "rx:{}:s"),
            ("rx:{open", "rx:{open"),
            ("plain", "plain"),
        ] {
            assert_eq!(hash_tag(key), tag, "{key}");
        }
        let mut publish = redis::cmd("EVALSHA");
        publish
            .arg("abc")
            .arg(2)
            .arg("rx:{news}:s")
            .arg("rx:{news}:last");
        assert_eq!(first_key(&publish), Some("rx:{news}:s"));
        let mut no_keys = redis::cmd("EVALSHA");
        no_keys.arg("abc").arg(0).arg("x");
        assert_eq!(first_key(&no_keys), None);
        assert_eq!(first_key(redis::cmd("PUBLISH").arg("c").arg("m")), None);
        // Error answers as a pipeline reads them.
        let answer = |wire: &[u8]| match redis::parse_redis_value(wire).map(Value::extract_error) {
            Ok(Err(e)) => e,
            other => panic!("not an error answer: {other:?}"),
        };
        for (wire, again) in [
            (&b"-MOVED 3999 127.0.0.1:6381\r\n"[..], true),
            (b"-ASK 3999 127.0.0.1:6381\r\n", true),
            (
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                true,
            ),
            (
                b"-READONLY You can't write against a read only replica.\r\n",
                true,
            ),
            (b"-NOSCRIPT No matching script.\r\n", false),
            (b"-ERR bad\r\n", false),
        ] {
            assert_eq!(redirected(&answer(wire)), again, "{wire:?}");
        }
    }
}
