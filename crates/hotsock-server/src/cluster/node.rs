//! The cluster task: this node's one conversation with Redis.
//!
//! It owns two connections: a multiplexed one for commands (sent in one
//! pipeline per batch of requests the hub queued) and a Pub/Sub one that
//! receives this node's inbox, the broadcast log and the channels it
//! follows. Every log is read in sequence order through a [`Cursor`]; a
//! missed message is read back from the log's stream. When Redis goes away
//! the task fails what needs an answer, counts what it drops, and
//! reconnects; back, it registers again, puts its presence back,
//! resubscribes and catches every log up from its cursor, so nothing is
//! delivered twice and nothing the streams still hold is missed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hotsock_protocol::{ChannelError, Position, PresenceEntry, encode_presence};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError, Script, Value};
use tokio::sync::{mpsc, watch};

use crate::cluster::cursor::{Cursor, Verdict};
use crate::cluster::inflight::{self, InFlight};
use crate::cluster::keys::{self, Entry, Keys};
use crate::cluster::link::{ClusterShared, Command, ReplyTo};
use crate::cluster::{fresh_epoch, unix_ms};
use crate::config::ClusterConfig;
use crate::route::channels::Fetched;
use crate::route::hub::position_bytes;
use crate::route::outbox::Outgoing;
use crate::shared::Shared;

/// Requests taken from the queue into one pipeline.
const BATCH_MAX: usize = 512;
/// Entries one read-back of a channel's stream returns at most.
const CHANNEL_STREAM_MIN: usize = 100;
/// The longest wait between two attempts to reach Redis.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Inbox and broadcast streams outlive an idle spell by this many node TTLs.
const LOG_TTL_NODE_TTLS: u64 = 10;
/// Answers may take this many `cluster.connect_timeout_ms`.
const RESPONSE_TIMEOUTS: u32 = 5;
/// Uids per pipeline when presence is written again in full.
const PRESENCE_CHUNK: usize = 1_000;

/// Why the task left `serve`.
enum Exit {
    Stopping,
    Lost(String),
}

/// Which log a Pub/Sub message or a read-back belongs to.
#[derive(Debug, Clone)]
enum Log {
    Inbox,
    Broadcast,
    Channel(String),
}

/// What a pipelined request waits for.
enum Pending {
    /// Commands sent with `ignore` (presence): no answer comes back.
    Ignored,
    /// An answer comes back, and nobody needs it.
    Nothing,
    Routed,
    Published(ReplyTo),
    Presence(ReplyTo),
}

struct Scripts {
    append: Script,
    route_uid: Script,
    presence: Script,
    register: Script,
    unregister: Script,
    head: Script,
}

/// A pipeline's answers as redis-rs gives them.
type Answers = Result<Vec<Result<Value, RedisError>>, String>;

/// The two connections, and the pipelines sent on the command connection
/// and not answered yet.
pub(super) struct Conns {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
    inflight: InFlight<Answers, Vec<Pending>>,
}

pub(super) struct Node {
    pub(super) shared: Arc<Shared>,
    pub(super) config: ClusterConfig,
    pub(super) keys: Keys,
    pub(super) id: Arc<str>,
    pub(super) epoch: u64,
    pub(super) state: Arc<ClusterShared>,
    pub(super) rx: mpsc::Receiver<Command>,
    scripts: Scripts,
    client: Client,
    following: HashSet<String>,
    inbox: Cursor,
    broadcast: Cursor,
    /// Registered at least once: a later `registered` means Redis lost the
    /// registration (restart) and presence must be put back.
    registered: bool,
    /// Redis's `run_id` at the last connect: logs written under another run
    /// start a new epoch (see `keys.rs`).
    run_id: String,
}

/// Maps a Redis failure to what the worker is told.
fn unavailable(error: &RedisError) -> ChannelError {
    ChannelError::ClusterUnavailable(error.to_string())
}

impl Node {
    pub(super) fn new(
        shared: Arc<Shared>,
        config: ClusterConfig,
        id: Arc<str>,
        epoch: u64,
        state: Arc<ClusterShared>,
        rx: mpsc::Receiver<Command>,
    ) -> Result<Node, RedisError> {
        // Nagle's algorithm off: with it, a pipeline sent while the one
        // before it is unanswered waits for Redis's acknowledgement of it,
        // which made pipelines in flight one at a time again.
        let info = config.redis.as_str().into_connection_info()?;
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = Client::open(info.set_tcp_settings(tcp))?;
        let scripts = Scripts {
            append: Script::new(&keys::append_script()),
            route_uid: Script::new(&keys::route_uid_script()),
            presence: Script::new(keys::PRESENCE_SCRIPT),
            register: Script::new(keys::REGISTER_SCRIPT),
            unregister: Script::new(keys::UNREGISTER_SCRIPT),
            head: Script::new(&keys::head_script()),
        };
        Ok(Node {
            keys: Keys::new(&config.prefix),
            shared,
            config,
            id,
            epoch,
            state,
            rx,
            scripts,
            client,
            following: HashSet::new(),
            inbox: Cursor::default(),
            broadcast: Cursor::default(),
            registered: false,
            run_id: String::new(),
        })
    }

    /// Connects, registers, subscribes and catches up. An error at the
    /// first start is the operator's (`hotsock start` refuses to run).
    pub(super) async fn connect(&mut self) -> Result<Conns, String> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let redis = self.config.redis.clone();
        let connecting = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout * RESPONSE_TIMEOUTS));
            let cmd = self.client.get_multiplexed_async_connection_with_config(&config).await?;
            let mut cmd = cmd;
            load_scripts(&mut cmd).await?;
            let (sink, stream) = self.client.get_async_pubsub().await?.split();
            Ok::<_, RedisError>(Conns { cmd, sink, stream, inflight: InFlight::new() })
        };
        let mut conns = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conns)) => conns,
            Ok(Err(error)) => return Err(format!("cannot reach {redis}: {error}")),
            Err(_) => return Err(format!("cannot reach {redis}: no answer within {} ms", timeout.as_millis())),
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conns.cmd)
            .await
            .map_err(|e| format!("asking {redis} for its run id: {e}"))?;
        let run_id = info.lines().find_map(|l| l.strip_prefix("run_id:")).map(str::trim).unwrap_or_default();
        if !self.run_id.is_empty() && self.run_id != run_id {
            tracing::warn!(redis = %redis, "cluster: Redis is another run than before (restarted or failed over): its logs start new epochs");
        }
        self.run_id = run_id.to_owned();
        self.register(&mut conns.cmd).await?;
        // Presence first: uid sends to this node go to its inbox from now
        // on, and the inbox is caught up below.
        self.put_presence_back(&mut conns.cmd).await.map_err(|e| format!("restoring presence on {redis}: {e}"))?;
        self.resubscribe(&mut conns).await.map_err(|e| format!("subscribing on {redis}: {e}"))?;
        Ok(conns)
    }

    /// Registers (or renews) this node; the live node count comes back.
    async fn register(&mut self, cmd: &mut MultiplexedConnection) -> Result<bool, String> {
        let stale_ms = self.config.heartbeat_ms * 2;
        let reply: (String, String, u64) = self
            .scripts
            .register
            .prepare_invoke()
            .arg(self.keys.prefix())
            .arg(&*self.id)
            .arg(self.epoch)
            .arg(self.config.node_ttl_ms)
            .arg(stale_ms)
            .invoke_async(cmd)
            .await
            .map_err(|e| format!("registering on {}: {e}", self.config.redis))?;
        let (outcome, holder, live) = reply;
        if outcome == "taken" {
            return Err(format!(
                "cluster.node_id {:?} is in use by a running node (epoch {holder}); give each node its own",
                self.id
            ));
        }
        self.state.nodes.store(live, Ordering::Relaxed);
        let lost = outcome == "registered" && self.registered;
        self.registered = true;
        Ok(lost)
    }

    /// Subscribes to the inbox, the broadcast log and every channel with
    /// local members, then reads back what each missed.
    async fn resubscribe(&mut self, conns: &mut Conns) -> Result<(), RedisError> {
        let followed = self.shared.hub.followed();
        let mut logs = vec![self.keys.inbox(&self.id), self.keys.broadcast()];
        logs.extend(followed.iter().map(|(name, _)| self.keys.channel(name)));
        pubsub_step(self.config.connect_timeout_ms, conns.sink.subscribe(&logs)).await?;
        self.following = followed.iter().map(|(name, _)| name.to_string()).collect();
        for log in [Log::Inbox, Log::Broadcast] {
            let cursor = match log {
                Log::Inbox => self.inbox,
                _ => self.broadcast,
            };
            let (epoch, seq) = self.head(&mut conns.cmd, &self.log_name(&log)).await?;
            match cursor.epoch {
                // The first start: what was sent before is not ours.
                None => self.set_cursor(&log, Cursor::at(epoch, seq)),
                // A new run of the log is caught up from its start.
                Some(seen) => {
                    let after = if seen == epoch { cursor.head } else { 0 };
                    self.catch_up(&mut conns.cmd, &log, epoch, after, seq).await?;
                }
            }
        }
        for (name, position) in followed {
            let log = Log::Channel(name.to_string());
            let (epoch, seq) = self.head(&mut conns.cmd, &self.log_name(&log)).await?;
            let after = if epoch == position.epoch { position.offset } else { 0 };
            self.catch_up(&mut conns.cmd, &log, epoch, after, seq).await?;
        }
        Ok(())
    }

    /// Writes every local uid's connections to presence and removes what
    /// this node no longer holds.
    async fn put_presence_back(&mut self, cmd: &mut MultiplexedConnection) -> Result<(), RedisError> {
        self.state.presence_dirty.store(false, Ordering::Relaxed);
        let local = self.shared.hub.local_presence();
        let held: Vec<u64> = redis::cmd("SMEMBERS").arg(self.keys.node_uids(&self.id)).query_async(cmd).await?;
        let now: HashSet<u64> = local.iter().map(|(uid, _)| *uid).collect();
        let gone = held.into_iter().filter(|uid| !now.contains(uid)).map(|uid| (uid, Vec::new()));
        let all: Vec<(u64, Vec<u64>)> = gone.chain(local).collect();
        // In pipelines of a bounded size, so no one answer takes long.
        for chunk in all.chunks(PRESENCE_CHUNK) {
            let mut pipe = redis::pipe();
            for (uid, conns) in chunk {
                self.presence_command(&mut pipe, *uid, conns);
            }
            pipe.query_async::<()>(cmd).await?;
        }
        Ok(())
    }

    fn presence_command(&self, pipe: &mut redis::Pipeline, uid: u64, conns: &[u64]) {
        let (key, uids) = (self.keys.presence(uid), self.keys.node_uids(&self.id));
        if conns.is_empty() {
            pipe.cmd("HDEL").arg(&key).arg(&*self.id).ignore();
            pipe.cmd("SREM").arg(&uids).arg(uid).ignore();
        } else {
            let list: Vec<String> = conns.iter().map(u64::to_string).collect();
            let value = format!("{}|{}", self.epoch, list.join(","));
            pipe.cmd("HSET").arg(&key).arg(&*self.id).arg(value).ignore();
            pipe.cmd("SADD").arg(&uids).arg(uid).ignore();
        }
    }

    /// The task's life: serve while Redis answers, reconnect while it does
    /// not, unregister on a graceful stop.
    pub(super) async fn run(mut self, conns: Conns) {
        let mut stopping = self.shared.stopping.subscribe();
        let mut conns = Some(conns);
        loop {
            if let Some(mut live) = conns.take() {
                self.state.connected.store(true, Ordering::Relaxed);
                if let Ok(mut error) = self.state.last_error.lock() {
                    *error = None;
                }
                match self.serve(&mut live, &mut stopping).await {
                    Exit::Stopping => {
                        self.unregister(&mut live.cmd).await;
                        self.refuse_the_rest();
                        return;
                    }
                    Exit::Lost(error) => self.lost(error),
                }
            }
            match self.reconnect(&mut stopping).await {
                Some(live) => conns = Some(live),
                None => {
                    self.refuse_the_rest();
                    return;
                }
            }
        }
    }

    /// The node leaves: what is still queued, and what the hub queues from
    /// now on, is answered at once (a handler awaiting a publish during
    /// the stop must not wait forever).
    fn refuse_the_rest(&mut self) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            self.refuse(command, "the server is stopping");
        }
    }

    fn lost(&self, error: String) {
        tracing::error!(redis = %self.config.redis, "cluster: lost Redis ({error}); local traffic goes on, cluster requests fail until it is back");
        self.state.connected.store(false, Ordering::Relaxed);
        self.state.outages.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.state.last_error.lock() {
            *last = Some(error);
        }
    }

    async fn serve(&mut self, conns: &mut Conns, stopping: &mut watch::Receiver<bool>) -> Exit {
        let exit = self.serving(conns, stopping).await;
        match &exit {
            // A graceful stop: what was sent is answered before the node
            // unregisters.
            Exit::Stopping => {
                if let Err(error) = self.drain(conns).await {
                    self.abandon(conns, &error);
                }
            }
            Exit::Lost(error) => self.abandon(conns, error),
        }
        exit
    }

    async fn serving(&mut self, conns: &mut Conns, stopping: &mut watch::Receiver<bool>) -> Exit {
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            if *stopping.borrow() {
                return Exit::Stopping;
            }
            let step = tokio::select! {
                _ = stopping.changed() => Ok(()),
                message = conns.stream.next() => match message {
                    Some(message) => self.on_message(&mut conns.cmd, message).await,
                    None => return Exit::Lost("the Pub/Sub connection closed".into()),
                },
                Some((answers, waiting)) = conns.inflight.next(), if !conns.inflight.is_empty() => {
                    self.settle_all(answers, waiting)
                }
                taken = self.rx.recv_many(&mut batch, BATCH_MAX), if !conns.inflight.is_full() => {
                    if taken == 0 {
                        return Exit::Stopping;
                    }
                    self.run_batch(conns, &mut batch).await
                }
                _ = heartbeat.tick() => self.heartbeat(conns).await,
            };
            if let Err(error) = step {
                return Exit::Lost(error);
            }
        }
    }

    /// Fails requests while Redis is away and tries it again with back-off.
    async fn reconnect(&mut self, stopping: &mut watch::Receiver<bool>) -> Option<Conns> {
        let mut backoff = Duration::from_millis(100);
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            if *stopping.borrow() {
                return None;
            }
            tokio::select! {
                _ = stopping.changed() => {}
                taken = self.rx.recv_many(&mut batch, BATCH_MAX) => {
                    if taken == 0 {
                        return None;
                    }
                    let why = self.state.last_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
                    for command in batch.drain(..) {
                        self.refuse(command, &why);
                    }
                }
                _ = tokio::time::sleep(backoff) => match self.connect().await {
                    Ok(conns) => {
                        tracing::info!(redis = %self.config.redis, "cluster: Redis is back; registered, resubscribed and caught up");
                        return Some(conns);
                    }
                    Err(error) => {
                        tracing::debug!("cluster: still no Redis: {error}");
                        if let Ok(mut last) = self.state.last_error.lock() {
                            *last = Some(error);
                        }
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                    }
                },
            }
        }
    }

    /// A request while Redis is unreachable.
    fn refuse(&mut self, command: Command, why: &str) {
        let error = || Err(ChannelError::ClusterUnavailable(format!("Redis is unreachable: {why}")));
        match command {
            Command::Publish { reply, .. }
            | Command::Subscribe { reply, .. }
            | Command::PresenceQuery { reply, .. } => {
                self.shared.hub.answer(reply, error());
            }
            Command::ToUid { .. } | Command::CloseUid { .. } | Command::Broadcast { .. } => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // Put back in full once Redis is.
            Command::Presence { .. } => self.state.presence_dirty.store(true, Ordering::Relaxed),
            Command::Unfollow { channel } => {
                self.following.remove(&*channel);
            }
        }
    }

    async fn unregister(&mut self, cmd: &mut MultiplexedConnection) {
        let result: Result<i64, RedisError> = self
            .scripts
            .unregister
            .prepare_invoke()
            .arg(self.keys.prefix())
            .arg(&*self.id)
            .arg(self.epoch)
            .invoke_async(cmd)
            .await;
        match result {
            Ok(0) => tracing::warn!(
                node = %self.id,
                "cluster: a newer boot of this node id holds it; only this boot's presence was removed"
            ),
            Ok(_) => tracing::info!(node = %self.id, "cluster: left the cluster (presence removed)"),
            Err(error) => {
                tracing::warn!(node = %self.id, "cluster: could not unregister ({error}); presence expires with the node's TTL")
            }
        }
    }

    async fn heartbeat(&mut self, conns: &mut Conns) -> Result<(), String> {
        let lost = self.register(&mut conns.cmd).await?;
        if lost || self.state.presence_dirty.load(Ordering::Relaxed) {
            if lost {
                tracing::warn!(node = %self.id, "cluster: Redis had lost this node's registration; presence put back");
            }
            self.put_presence_back(&mut conns.cmd).await.map_err(|e| e.to_string())?;
        }
        // Subscriptions and the hub's channels agree: an unfollow the queue
        // could not take leaves a subscription without members (dropped
        // here), and a channel the hub holds without a subscription is
        // subscribed and caught up.
        let followed = self.shared.hub.followed();
        let wanted: HashSet<String> = followed.iter().map(|(n, _)| n.to_string()).collect();
        let extra: Vec<String> = self.following.difference(&wanted).cloned().collect();
        let timeout = self.config.connect_timeout_ms;
        for name in extra {
            pubsub_step(timeout, conns.sink.unsubscribe(self.keys.channel(&name))).await.map_err(|e| e.to_string())?;
            self.following.remove(&name);
        }
        let missing: Vec<_> = followed.into_iter().filter(|(n, _)| !self.following.contains(&**n)).collect();
        for (name, position) in missing {
            tracing::warn!(channel = %name, "cluster: a followed channel had no subscription; subscribed and caught up");
            let log = self.keys.channel(&name);
            pubsub_step(timeout, conns.sink.subscribe(&log)).await.map_err(|e| e.to_string())?;
            self.following.insert(name.to_string());
            let (epoch, seq) = self.head(&mut conns.cmd, &log).await.map_err(|e| e.to_string())?;
            let after = if epoch == position.epoch { position.offset } else { 0 };
            let channel = Log::Channel(name.to_string());
            self.catch_up(&mut conns.cmd, &channel, epoch, after, seq).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Runs a batch of requests: every request that needs only a command
    /// goes into one pipeline, sent without waiting for the answers of
    /// the pipelines before it; a subscribe or unfollow (Pub/Sub changes)
    /// first has everything before it sent and answered, keeping the
    /// queue's order.
    async fn run_batch(&mut self, conns: &mut Conns, batch: &mut Vec<Command>) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut pending = Vec::new();
        let mut commands = batch.drain(..);
        while let Some(command) = commands.next() {
            let step = match command {
                Command::Subscribe { conn, channel, from, reply } => {
                    self.send(conns, &mut pipe, &mut pending).await;
                    match self.drain(conns).await {
                        Ok(()) => self.subscribe(conns, conn, channel, from, reply).await,
                        Err(error) => {
                            self.refuse(Command::Subscribe { conn, channel, from, reply }, &error);
                            Err(error)
                        }
                    }
                }
                // A subscribe queued before this unfollow may have given the
                // channel a member again: then it stays followed.
                Command::Unfollow { channel } => {
                    self.send(conns, &mut pipe, &mut pending).await;
                    match self.drain(conns).await {
                        Ok(()) if !self.shared.hub.follows(&channel) && self.following.remove(&*channel) => {
                            let unsubscribing = conns.sink.unsubscribe(self.keys.channel(&channel));
                            pubsub_step(self.config.connect_timeout_ms, unsubscribing).await.map_err(|e| e.to_string())
                        }
                        other => other,
                    }
                }
                other => {
                    pending.push(self.pipeline(&mut pipe, other));
                    Ok(())
                }
            };
            if let Err(error) = step {
                // Redis is gone: whatever is left of the batch is answered
                // (or counted) as during any outage, never left waiting.
                for rest in commands.by_ref() {
                    self.refuse(rest, &error);
                }
                return Err(error);
            }
        }
        drop(commands);
        self.send(conns, &mut pipe, &mut pending).await;
        Ok(())
    }

    /// Adds one request to the pipeline; what its answer is for.
    fn pipeline(&self, pipe: &mut redis::Pipeline, command: Command) -> Pending {
        let now = unix_ms();
        let log_ttl = self.config.node_ttl_ms * LOG_TTL_NODE_TTLS;
        match command {
            Command::ToUid { uid, binary, data } => {
                self.route(pipe, uid, Entry::ToUid { uid, binary, data }, log_ttl, now);
                Pending::Routed
            }
            Command::CloseUid { uid, code, reason } => {
                self.route(pipe, uid, Entry::CloseUid { uid, code, reason }, log_ttl, now);
                Pending::Routed
            }
            Command::Broadcast { binary, data } => {
                let payload = Entry::Broadcast { origin: self.id.to_string(), binary, data }.encode();
                let args = self.append_args(&self.keys.broadcast(), self.config.inbox_size, log_ttl, now, &payload);
                evalsha(pipe, &self.scripts.append, &args);
                Pending::Nothing
            }
            Command::Publish { channel, except, binary, data, reply } => {
                let payload = Entry::Publication { origin: self.id.to_string(), except, binary, data }.encode();
                let channels = &self.shared.current.load().channels;
                let maxlen = channels.history_size.max(CHANNEL_STREAM_MIN);
                // Without a history TTL the stream, kept for gap fills, still
                // goes after an idle spell like an inbox's (found in review:
                // it never expired).
                let ttl = if channels.history_ttl_ms > 0 { channels.history_ttl_ms } else { log_ttl };
                let args = self.append_args(&self.keys.channel(&channel), maxlen, ttl, now, &payload);
                evalsha(pipe, &self.scripts.append, &args);
                Pending::Published(reply)
            }
            Command::Presence { uid } => {
                // The hub's connections now, not when the change was queued:
                // a later full rewrite cannot be undone by an older command.
                let conns = self.shared.hub.conns_of(uid);
                self.presence_command(pipe, uid, &conns);
                Pending::Ignored
            }
            Command::PresenceQuery { uid, reply } => {
                let args = vec![self.keys.prefix().as_bytes().to_vec(), uid.to_string().into_bytes()];
                evalsha(pipe, &self.scripts.presence, &args);
                Pending::Presence(reply)
            }
            Command::Subscribe { .. } | Command::Unfollow { .. } => Pending::Ignored,
        }
    }

    /// Routes `entry` to the inbox of every other node holding `uid`.
    fn route(&self, pipe: &mut redis::Pipeline, uid: u64, entry: Entry, log_ttl: u64, now: u64) {
        let args = [
            self.keys.prefix().as_bytes().to_vec(),
            uid.to_string().into_bytes(),
            self.id.as_bytes().to_vec(),
            self.config.inbox_size.to_string().into_bytes(),
            log_ttl.to_string().into_bytes(),
            now.to_string().into_bytes(),
            entry.encode().to_vec(),
            fresh_epoch().to_string().into_bytes(),
            self.run_id.as_bytes().to_vec(),
            keys::LOG_KEEP_MS.to_string().into_bytes(),
        ];
        evalsha(pipe, &self.scripts.route_uid, &args);
    }

    fn append_args(&self, log: &str, maxlen: usize, ttl_ms: u64, now: u64, payload: &[u8]) -> Vec<Vec<u8>> {
        vec![
            log.as_bytes().to_vec(),
            maxlen.to_string().into_bytes(),
            ttl_ms.to_string().into_bytes(),
            now.to_string().into_bytes(),
            payload.to_vec(),
            fresh_epoch().to_string().into_bytes(),
            self.run_id.as_bytes().to_vec(),
            keys::LOG_KEEP_MS.to_string().into_bytes(),
        ]
    }

    /// Sends the pipeline (if it holds anything); its answers are
    /// awaited with the others in flight.
    async fn send(&self, conns: &mut Conns, pipe: &mut redis::Pipeline, pending: &mut Vec<Pending>) {
        if pipe.cmd_iter().next().is_none() {
            pending.clear();
            return;
        }
        let sent = std::mem::replace(pipe, redis::pipe());
        pipe.ignore_errors();
        let waiting = std::mem::take(pending);
        let mut link = conns.cmd.clone();
        // Started here: the pipeline is then in redis-rs's queue to the
        // socket (which keeps the order things enter it, waiting ones
        // included) before anything sent after it, whatever order the
        // futures in flight are polled in later. The queue holds 50
        // requests (redis-rs's default); this task has at most
        // `PIPELINES_MAX` + 1 outstanding, so the first poll finds room.
        let answers = inflight::start(async move {
            sent.query_async::<Vec<Result<Value, RedisError>>>(&mut link).await.map_err(|e| e.to_string())
        })
        .await;
        conns.inflight.push(answers, waiting);
    }

    /// Waits until everything sent is answered, delivering Pub/Sub
    /// meanwhile: a cross-node message must not wait behind this node's
    /// own requests.
    async fn drain(&mut self, conns: &mut Conns) -> Result<(), String> {
        while !conns.inflight.is_empty() {
            tokio::select! {
                biased;
                Some((answers, waiting)) = conns.inflight.next() => self.settle_all(answers, waiting)?,
                message = conns.stream.next() => match message {
                    Some(message) => self.on_message(&mut conns.cmd, message).await?,
                    None => return Err("the Pub/Sub connection closed".to_owned()),
                },
            }
        }
        Ok(())
    }

    /// Redis is gone: what waits for the pipelines in flight is answered
    /// (or counted) as during any outage.
    fn abandon(&self, conns: &mut Conns, error: &str) {
        for waiting in conns.inflight.abandon() {
            self.fail(waiting, error);
        }
    }

    /// Answers (or counts) what waits for a pipeline whose answers will
    /// not come.
    fn fail(&self, waiting: Vec<Pending>, error: &str) {
        let lost = ChannelError::ClusterUnavailable(error.to_owned());
        for wait in waiting {
            self.settle(wait, Err(lost.clone()));
        }
    }

    /// Hands one pipeline's answers to whoever waits for them.
    fn settle_all(&self, answers: Answers, waiting: Vec<Pending>) -> Result<(), String> {
        let answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                self.fail(waiting, &error);
                return Err(error);
            }
        };
        // Presence commands are `ignore`d; every other request has one
        // answer, in order.
        let mut answers = answers.into_iter();
        let mut script_missing = None;
        for wait in waiting {
            if matches!(wait, Pending::Ignored) {
                continue;
            }
            let answer = answers.next().unwrap_or_else(|| Ok(Value::Nil));
            if let Err(error) = &answer
                && error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            {
                script_missing = Some(error.to_string());
            }
            self.settle(wait, answer.map_err(|e| unavailable(&e)));
        }
        match script_missing {
            // Redis lost its scripts (a SCRIPT FLUSH, a restart we did not
            // see): reconnecting loads them again.
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn settle(&self, wait: Pending, answer: Result<Value, ChannelError>) {
        match wait {
            Pending::Ignored | Pending::Nothing => {}
            Pending::Routed => {
                if let Ok(Value::Int(reached)) = answer {
                    self.state.routed.fetch_add(reached.max(0) as u64, Ordering::Relaxed);
                } else {
                    self.state.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Pending::Published(reply) => {
                let result = answer.and_then(|value| {
                    parse_head(&value).ok_or_else(|| ChannelError::ClusterUnavailable("unexpected reply".into()))
                });
                let result = result.map(|(epoch, offset)| position_bytes(Position { epoch, offset }));
                self.shared.hub.answer(reply, result);
            }
            Pending::Presence(reply) => {
                let result = answer.map(|value| encode_presence(&parse_presence(&value)));
                self.shared.hub.answer(reply, result);
            }
        }
    }

    /// Follows the channel (if not yet), reads its head and what a
    /// recovery from `from` needs, and lets the hub subscribe.
    async fn subscribe(
        &mut self,
        conns: &mut Conns,
        conn: u64,
        channel: String,
        from: Option<Position>,
        reply: ReplyTo,
    ) -> Result<(), String> {
        let log = self.keys.channel(&channel);
        let outcome = async {
            if !self.following.contains(&channel) {
                // Subscribed first: what is appended after the head read
                // below arrives live; what came before is history.
                pubsub_step(self.config.connect_timeout_ms, conns.sink.subscribe(&log)).await?;
                self.following.insert(channel.clone());
            }
            let (epoch, seq) = self.head(&mut conns.cmd, &log).await?;
            // Followed already but behind Redis (Pub/Sub messages not read
            // yet): catch up first, so a client coming from a node further
            // ahead recovers exactly.
            if let Some(position) = self.shared.hub.position(&channel)
                && position.epoch == epoch
                && position.offset < seq
            {
                let log = Log::Channel(channel.clone());
                self.catch_up(&mut conns.cmd, &log, epoch, position.offset, seq).await?;
            }
            let max_replay = self.shared.current.load().channels.max_replay as u64;
            let fetched = match from {
                Some(from) if from.epoch == epoch && from.offset < seq => {
                    let count = (seq - from.offset).min(max_replay + 1);
                    self.read_back(&mut conns.cmd, &log, from.offset, count).await?
                }
                _ => Vec::new(),
            };
            let fetched = fetched
                .into_iter()
                .filter_map(|(seq, at, entry)| match entry {
                    Entry::Publication { binary, data, .. } => {
                        Some(Fetched { offset: seq, at_ms: at, data: data_of(binary, data) })
                    }
                    _ => None,
                })
                .collect();
            Ok::<_, RedisError>((Position { epoch, offset: seq }, fetched))
        }
        .await;
        match outcome {
            Ok((head, fetched)) => {
                self.shared.hub.cluster_subscribe(conn, &channel, from, head, (head.epoch, fetched), reply);
                Ok(())
            }
            Err(error) => {
                self.shared.hub.answer(reply, Err(unavailable(&error)));
                Err(error.to_string())
            }
        }
    }

    /// A log's `(epoch, seq)`; gives it an epoch if it has none.
    async fn head(&self, cmd: &mut MultiplexedConnection, log: &str) -> Result<(u64, u64), RedisError> {
        let value: Value = self
            .scripts
            .head
            .prepare_invoke()
            .arg(log)
            .arg(fresh_epoch())
            .arg(&self.run_id)
            .arg(keys::LOG_KEEP_MS)
            .invoke_async(cmd)
            .await?;
        parse_head(&value).ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "unexpected head reply")))
    }

    /// Up to `count` entries of a log's stream after `after`:
    /// `(seq, unix_ms, entry)`; entries that do not decode are skipped.
    async fn read_back(
        &self,
        cmd: &mut MultiplexedConnection,
        log: &str,
        after: u64,
        count: u64,
    ) -> Result<Vec<(u64, u64, Entry)>, RedisError> {
        let value: Value = redis::cmd("XRANGE")
            .arg(Keys::stream(log))
            .arg(format!("{}-0", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(cmd)
            .await?;
        Ok(parse_range(&value))
    }

    /// A Pub/Sub message of one of the logs.
    async fn on_message(&mut self, cmd: &mut MultiplexedConnection, message: redis::Msg) -> Result<(), String> {
        let name = message.get_channel_name().to_owned();
        let log = if name == self.keys.inbox(&self.id) {
            Log::Inbox
        } else if name == self.keys.broadcast() {
            Log::Broadcast
        } else if let Some(channel) = self.keys.channel_of(&name) {
            Log::Channel(channel.to_owned())
        } else {
            return Ok(());
        };
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        let Ok((epoch, seq, payload)) = keys::split_message(&payload) else {
            tracing::warn!(log = %name, "cluster: a message that does not decode (another hotsock version?); skipped");
            return Ok(());
        };
        let Ok(entry) = Entry::decode(&payload) else {
            tracing::warn!(log = %name, "cluster: an entry that does not decode; skipped");
            return Ok(());
        };
        if let Verdict::Gap { after } = self.deliver(&log, epoch, seq, unix_ms(), entry, false) {
            self.catch_up(cmd, &log, epoch, after, seq).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads back `after + 1 ..= upto` of a log and delivers it in order;
    /// the first entry may jump a gap the stream no longer holds.
    async fn catch_up(
        &mut self,
        cmd: &mut MultiplexedConnection,
        log: &Log,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<(), RedisError> {
        if upto <= after {
            return Ok(());
        }
        let name = self.log_name(log);
        let entries = self.read_back(cmd, &name, after, upto - after).await?;
        // The first entry may jump a gap the stream no longer holds; a
        // later one jumps only past entries that did not decode (another
        // version's, skipped by `parse_range`), which are lost to this node.
        let mut previous = None;
        for (seq, at, entry) in entries {
            self.state.refetched.fetch_add(1, Ordering::Relaxed);
            let jump = previous.is_none_or(|previous: u64| seq != previous + 1);
            self.deliver(log, epoch, seq, at, entry, jump);
            previous = Some(seq);
        }
        Ok(())
    }

    /// Hands one entry, in sequence order, to the hub.
    fn deliver(&mut self, log: &Log, epoch: u64, seq: u64, at: u64, entry: Entry, jump: bool) -> Verdict {
        let verdict = match log {
            Log::Inbox => self.inbox.accept(epoch, seq, jump),
            Log::Broadcast => self.broadcast.accept(epoch, seq, jump),
            Log::Channel(channel) => match entry {
                Entry::Publication { ref origin, except, binary, ref data } => {
                    let except = except.filter(|_| **origin == *self.id);
                    let position = Position { epoch, offset: seq };
                    let data = data_of(binary, data.clone());
                    let verdict = self.shared.hub.cluster_deliver(channel, position, except, data, at, jump);
                    self.count(verdict);
                    return verdict;
                }
                _ => Verdict::Duplicate,
            },
        };
        self.count(verdict);
        if let Verdict::Deliver { .. } = verdict {
            match entry {
                Entry::ToUid { uid, binary, data } => self.shared.hub.cluster_to_uid(uid, &data_of(binary, data)),
                Entry::CloseUid { uid, code, reason } => self.shared.hub.cluster_close_uid(uid, code, &reason),
                Entry::Broadcast { origin, binary, data } if *origin != *self.id => {
                    self.shared.hub.cluster_broadcast(&data_of(binary, data));
                }
                _ => {}
            }
        }
        verdict
    }

    fn count(&self, verdict: Verdict) {
        if let Verdict::Deliver { lost } = verdict {
            self.state.received.fetch_add(1, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!("cluster: {lost} messages were missed and are no longer in Redis");
                self.state.lost.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }

    fn log_name(&self, log: &Log) -> String {
        match log {
            Log::Inbox => self.keys.inbox(&self.id),
            Log::Broadcast => self.keys.broadcast(),
            Log::Channel(channel) => self.keys.channel(channel),
        }
    }

    fn set_cursor(&mut self, log: &Log, cursor: Cursor) {
        match log {
            Log::Inbox => self.inbox = cursor,
            Log::Broadcast => self.broadcast = cursor,
            Log::Channel(_) => {}
        }
    }
}

/// `EVALSHA` of a script with raw arguments, into a pipeline (scripts are
/// loaded at connect, see `load_scripts`).
fn evalsha(pipe: &mut redis::Pipeline, script: &Script, args: &[Vec<u8>]) {
    let command = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(0);
    for arg in args {
        command.arg(&arg[..]);
    }
}

/// A Pub/Sub (un)subscription, bounded: the Pub/Sub connection has no
/// response timeout of its own, and a Redis that vanished without a reset
/// must not hold the task (and every queued request) for minutes.
async fn pubsub_step(
    timeout_ms: u64,
    step: impl std::future::Future<Output = Result<(), RedisError>>,
) -> Result<(), RedisError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), step).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from((redis::ErrorKind::Io, "no answer to a Pub/Sub (un)subscribe"))),
    }
}

/// Loads every script, so pipelines can use `EVALSHA`.
pub(super) async fn load_scripts(cmd: &mut MultiplexedConnection) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    for source in [
        keys::append_script(),
        keys::route_uid_script(),
        keys::PRESENCE_SCRIPT.to_owned(),
        keys::REGISTER_SCRIPT.to_owned(),
        keys::UNREGISTER_SCRIPT.to_owned(),
        keys::head_script(),
    ] {
        pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
    }
    pipe.query_async::<()>(cmd).await
}

fn data_of(binary: bool, data: Bytes) -> Outgoing {
    if binary { Outgoing::Binary(data) } else { Outgoing::Text(data) }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `{epoch, seq}` as the append and head scripts return it.
fn parse_head(value: &Value) -> Option<(u64, u64)> {
    let Value::Array(items) = value else { return None };
    let [epoch, seq] = &items[..] else { return None };
    Some((text(epoch)?.parse().ok()?, text(seq)?.parse().ok()?))
}

/// `{node, "c1,c2", ...}` as the presence script returns it.
fn parse_presence(value: &Value) -> Vec<PresenceEntry> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .chunks(2)
        .filter_map(|pair| {
            let [node, conns] = pair else { return None };
            let conns = text(conns)?.split(',').filter_map(|c| c.parse().ok()).collect();
            Some(PresenceEntry { node: text(node)?, conns })
        })
        .collect()
}

/// An `XRANGE` reply: `[[id, [field, value, ...]], ...]`.
fn parse_range(value: &Value) -> Vec<(u64, u64, Entry)> {
    let Value::Array(entries) = value else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let [id, Value::Array(fields)] = &parts[..] else { return None };
            let seq = keys::seq_of_id(&text(id)?)?;
            let (mut at, mut payload) = (0, None);
            for pair in fields.chunks(2) {
                match pair {
                    [name, value] if text(name).as_deref() == Some("t") => at = text(value)?.parse().ok()?,
                    [name, Value::BulkString(bytes)] if text(name).as_deref() == Some("p") => {
                        payload = Some(Bytes::copy_from_slice(bytes));
                    }
                    _ => {}
                }
            }
            Some((seq, at, Entry::decode(&payload?).ok()?))
        })
        .collect()
}
