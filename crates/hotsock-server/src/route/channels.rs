//! Channels: server-side groups of connections, each with a total order of
//! publications (offsets within an epoch) and a bounded history a
//! reconnecting client is caught up from.
//!
//! No I/O, no clock: the hub calls in under its lock with the time passed in
//! and queues what comes back. Because every publication, push and replay to
//! a connection is queued under that one lock, a connection sees them in the
//! order the server accepted them, and a subscribe that replays history and
//! then joins the live stream can neither miss a publication nor see one
//! twice.
//!
//! A publication is encoded once (the app's bytes, or the JSON envelope
//! built here) and the same `Bytes` go to every member and to the history.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hotsock_protocol::{ChannelError, Position, Subscribed};

use crate::cluster::cursor::{Cursor, Verdict};
use crate::config::{ChannelsConfig, Envelope};
use crate::route::outbox::{ConnShared, Outgoing};
use crate::wire::ChannelCounters;

/// Longest channel name, in bytes.
pub(crate) const CHANNEL_NAME_MAX_BYTES: usize = 255;

#[derive(Debug)]
struct Stored {
    offset: u64,
    at_ms: u64,
    message: Outgoing,
}

#[derive(Debug)]
struct Channel {
    epoch: u64,
    /// The latest offset given out (0: nothing published in this epoch).
    head: u64,
    members: HashMap<u64, Arc<ConnShared>>,
    history: VecDeque<Stored>,
    history_bytes: usize,
}

impl Channel {
    /// Drops what the history may no longer hold: past the size, the byte
    /// budget or the age; returns the bytes it freed.
    fn trim(&mut self, config: &ChannelsConfig, now_ms: u64) -> usize {
        let before = self.history_bytes;
        while let Some(front) = self.history.front() {
            let expired = front.at_ms.saturating_add(config.history_ttl_ms) <= now_ms;
            let over = self.history.len() > config.history_size || self.history_bytes > config.history_max_bytes;
            if !(expired || over) {
                break;
            }
            self.history_bytes -= front.message.len();
            self.history.pop_front();
        }
        before - self.history_bytes
    }

    /// A channel nobody is in and with nothing to recover from is gone. In
    /// a cluster the history is Redis's and the local one only a cache of
    /// it while the node follows the channel for its members.
    fn is_idle(&self, external: bool) -> bool {
        self.members.is_empty() && (external || self.history.is_empty())
    }
}

/// A subscribe that took effect: what to queue to the connection, in order.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) name: Arc<str>,
    pub(crate) subscribed: Subscribed,
    /// It was already a member: nothing changed, nothing is queued.
    pub(crate) already: bool,
    /// The `subscribed` envelope (`envelope = "json"` only), then the
    /// replayed publications.
    pub(crate) queue: Vec<Outgoing>,
}

/// A publication that took effect.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) position: Position,
    /// The bytes every member gets.
    pub(crate) message: Outgoing,
}

/// Every channel, and every connection's memberships.
#[derive(Debug)]
pub(crate) struct Channels {
    map: HashMap<Arc<str>, Channel>,
    by_conn: HashMap<u64, Vec<Arc<str>>>,
    config: ChannelsConfig,
    max_message_bytes: usize,
    /// Mixed into every epoch so two server runs never share one.
    seed: u64,
    created: u64,
    /// Channel count after the last sweep of idle ones (see `make_room`).
    swept_at: usize,
    /// Bytes held in all histories (kept as they change, so reading it
    /// does not walk every channel under the hub lock).
    history_total: usize,
    /// Cluster mode: offsets come from Redis (`follow`, `deliver`), not
    /// from `publish`.
    external: bool,
    /// Cluster mode: channels whose last member left since the last
    /// `take_emptied` (the node stops following them).
    emptied: Vec<Arc<str>>,
    pub(crate) counters: ChannelCounters,
}

/// One channel as a binary upgrade hands it to the new server: the same
/// epoch, head and history, so positions clients hold stay valid.
#[derive(Debug, Clone)]
pub(crate) struct ChannelState {
    pub(crate) name: String,
    pub(crate) epoch: u64,
    pub(crate) head: u64,
    pub(crate) members: Vec<u64>,
    /// Offset, time (the hub's clock, which the new server continues) and
    /// the bytes members got, oldest first.
    pub(crate) history: Vec<(u64, u64, Outgoing)>,
}

/// A publication read back from the cluster's stream of a channel.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) offset: u64,
    pub(crate) at_ms: u64,
    /// The app's bytes (not yet in the envelope).
    pub(crate) data: Outgoing,
}

impl Channels {
    pub(crate) fn new(config: ChannelsConfig, max_message_bytes: usize, seed: u64) -> Channels {
        Channels {
            map: HashMap::new(),
            by_conn: HashMap::new(),
            config,
            max_message_bytes,
            seed,
            created: 0,
            swept_at: 0,
            history_total: 0,
            external: false,
            emptied: Vec::new(),
            counters: ChannelCounters::default(),
        }
    }

    /// Cluster mode: offsets and epochs come from Redis (see `follow`).
    /// Every channel, for a binary upgrade (see `ChannelState`).
    pub(crate) fn export(&self) -> Vec<ChannelState> {
        self.map
            .iter()
            .map(|(name, channel)| ChannelState {
                name: name.to_string(),
                epoch: channel.epoch,
                head: channel.head,
                members: channel.members.keys().copied().collect(),
                history: channel.history.iter().map(|s| (s.offset, s.at_ms, s.message.clone())).collect(),
            })
            .collect()
    }

    /// Takes in what `export` gave in the old server; `member` finds each
    /// member's outbox (members the new server does not hold are left out).
    /// Runs once, on an empty set, before any connection is served.
    pub(crate) fn import(&mut self, channels: Vec<ChannelState>, member: impl Fn(u64) -> Option<Arc<ConnShared>>) {
        for state in channels {
            let name: Arc<str> = state.name.into();
            let mut channel = Channel {
                epoch: state.epoch,
                head: state.head,
                members: HashMap::new(),
                history: VecDeque::new(),
                history_bytes: 0,
            };
            for conn in state.members {
                if let Some(shared) = member(conn) {
                    channel.members.insert(conn, shared);
                    self.by_conn.entry(conn).or_default().push(name.clone());
                    self.counters.memberships += 1;
                }
            }
            for (offset, at_ms, message) in state.history {
                channel.history_bytes += message.len();
                channel.history.push_back(Stored { offset, at_ms, message });
            }
            self.history_total += channel.history_bytes;
            self.created += 1;
            self.map.insert(name, channel);
        }
        self.swept_at = self.map.len();
    }

    pub(crate) fn set_external(&mut self) {
        self.external = true;
    }

    /// New limits from a config reload; the envelope stays (a restart-only
    /// key), and lowered history bounds apply at each channel's next trim.
    pub(crate) fn set_config(&mut self, config: ChannelsConfig, max_message_bytes: usize) {
        self.config = ChannelsConfig { envelope: self.config.envelope, ..config };
        self.max_message_bytes = max_message_bytes;
    }

    /// Adds `conn` to `name`. With `from`, first queues what it missed since
    /// that position, if the history still holds all of it and it fits in
    /// `replay_budget` bytes and `channels.max_replay` publications;
    /// otherwise it joins live and `recovered` is false.
    pub(crate) fn subscribe(
        &mut self,
        conn: u64,
        shared: &Arc<ConnShared>,
        name: &str,
        from: Option<Position>,
        replay_budget: usize,
        now_ms: u64,
    ) -> Result<Joined, ChannelError> {
        check_name(name)?;
        let joined = self.by_conn.get(&conn).map_or(0, Vec::len);
        if let Some((key, channel)) = self.map.get_key_value(name)
            && channel.members.contains_key(&conn)
        {
            let subscribed = Subscribed { recovered: false, epoch: channel.epoch, offset: channel.head, replayed: 0 };
            return Ok(Joined { name: key.clone(), subscribed, already: true, queue: Vec::new() });
        }
        if joined >= self.config.max_channels_per_conn {
            return Err(ChannelError::TooManyForConnection { max: self.config.max_channels_per_conn as u64 });
        }
        let key = self.get_or_create(name, now_ms)?;
        let (config, envelope) = (&self.config, self.config.envelope);
        let Some(channel) = self.map.get_mut(&key) else { return Err(ChannelError::NoSuchConnection) };
        if channel.members.len() >= config.max_members {
            return Err(ChannelError::ChannelFull { max: config.max_members as u64 });
        }
        self.history_total -= channel.trim(config, now_ms);
        let replay = match from {
            Some(from) if from.epoch == channel.epoch => {
                if from.offset > channel.head {
                    if !self.external {
                        return Err(ChannelError::AheadOfHead { offset: from.offset, head: channel.head });
                    }
                    // In a cluster the client may come from a node that is
                    // a few publications ahead of this one: it cannot be
                    // caught up without seeing some twice, so it is told it
                    // did not recover.
                    None
                } else {
                    replayable(channel, from.offset, config.max_replay, replay_budget)
                }
            }
            _ => None,
        };
        let recovered = replay.is_some();
        let replay = replay.unwrap_or_default();
        let subscribed =
            Subscribed { recovered, epoch: channel.epoch, offset: channel.head, replayed: replay.len() as u32 };
        let mut queue = Vec::with_capacity(replay.len() + 1);
        if envelope == Envelope::Json {
            let continues_after = channel.head - replay.len() as u64;
            queue.push(subscribed_envelope(&key, channel.epoch, continues_after, recovered));
        }
        queue.extend(replay);
        channel.members.insert(conn, shared.clone());
        self.by_conn.entry(conn).or_default().push(key.clone());
        self.counters.memberships += 1;
        if from.is_some() {
            if recovered {
                self.counters.recovered += 1;
                self.counters.replayed += subscribed.replayed as u64;
            } else {
                self.counters.unrecovered += 1;
            }
        }
        Ok(Joined { name: key, subscribed, already: false, queue })
    }

    /// Removes `conn` from `name`; the name if it was a member.
    pub(crate) fn unsubscribe(&mut self, conn: u64, name: &str) -> Option<Arc<str>> {
        let names = self.by_conn.get_mut(&conn)?;
        let index = names.iter().position(|n| &**n == name)?;
        let key = names.swap_remove(index);
        if names.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.leave(conn, &key);
        Some(key)
    }

    /// Removes `conn` from every channel (it closed); the names it was in.
    pub(crate) fn leave_all(&mut self, conn: u64) -> Vec<Arc<str>> {
        let names = self.by_conn.remove(&conn).unwrap_or_default();
        for name in &names {
            self.leave(conn, name);
        }
        names
    }

    fn leave(&mut self, conn: u64, name: &str) {
        if let Some(channel) = self.map.get_mut(name) {
            if channel.members.remove(&conn).is_some() {
                self.counters.memberships -= 1;
            }
            if channel.is_idle(self.external)
                && let Some((key, channel)) = self.map.remove_entry(name)
            {
                self.history_total -= channel.history_bytes;
                if self.external {
                    self.emptied.push(key);
                }
            }
        }
    }

    /// Gives the publication the channel's next offset, keeps it in the
    /// history and returns the bytes for the members (see `members`).
    pub(crate) fn publish(&mut self, name: &str, data: Outgoing, now_ms: u64) -> Result<Published, ChannelError> {
        check_name(name)?;
        if data.len() > self.max_message_bytes {
            return Err(ChannelError::TooLarge { len: data.len() as u64, max: self.max_message_bytes as u64 });
        }
        let key = self.get_or_create(name, now_ms)?;
        let (config, envelope) = (&self.config, self.config.envelope);
        let Some(channel) = self.map.get_mut(&key) else { return Err(ChannelError::NoSuchConnection) };
        channel.head += 1;
        let position = Position { epoch: channel.epoch, offset: channel.head };
        let message = record(channel, (config, envelope), &key, position, data, now_ms, &mut self.history_total);
        self.counters.publications += 1;
        self.counters.deliveries += channel.members.len() as u64;
        if channel.is_idle(self.external) {
            self.map.remove(&key);
        }
        Ok(Published { position, message })
    }

    /// The members of `name`, with their outboxes.
    pub(crate) fn members(&self, name: &str) -> impl Iterator<Item = (u64, &Arc<ConnShared>)> {
        self.map.get(name).into_iter().flat_map(|c| c.members.iter().map(|(conn, shared)| (*conn, shared)))
    }

    /// The channels `conn` is in, in the order it joined them (give or
    /// take removals).
    pub(crate) fn of_conn(&self, conn: u64) -> &[Arc<str>] {
        self.by_conn.get(&conn).map_or(&[], Vec::as_slice)
    }

    /// Channels held now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes held in histories.
    pub(crate) fn history_bytes(&self) -> usize {
        self.history_total
    }

    /// Drops expired publications and channels left with neither members
    /// nor history.
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        let (config, total, external) = (&self.config, &mut self.history_total, self.external);
        self.map.retain(|_, channel| {
            *total -= channel.trim(config, now_ms);
            !channel.is_idle(external)
        });
        self.swept_at = self.map.len();
    }

    /// What a publication must pass before it goes to the cluster (there,
    /// `publish` is not called: offsets come back in `deliver`).
    pub(crate) fn check_publish(&self, name: &str, len: usize) -> Result<(), ChannelError> {
        check_name(name)?;
        if len > self.max_message_bytes {
            return Err(ChannelError::TooLarge { len: len as u64, max: self.max_message_bytes as u64 });
        }
        Ok(())
    }

    /// Cluster mode, before a subscribe: the node follows `name` from
    /// `(epoch, head)` if it did not already, and the publications read back
    /// from the cluster's stream fill the history below what it holds, so
    /// the ordinary subscribe replays from it.
    pub(crate) fn follow(
        &mut self,
        name: &str,
        head: Option<Position>,
        fetched: (u64, Vec<Fetched>),
        now_ms: u64,
    ) -> Result<(), ChannelError> {
        check_name(name)?;
        if !self.map.contains_key(name) {
            let key = self.get_or_create(name, now_ms)?;
            if let (Some(channel), Some(head)) = (self.map.get_mut(&key), head) {
                channel.epoch = head.epoch;
                channel.head = head.offset;
            }
        }
        let (config, envelope) = (&self.config, self.config.envelope);
        let Some(key) = self.map.get_key_value(name).map(|(key, _)| key.clone()) else { return Ok(()) };
        let Some(channel) = self.map.get_mut(&key) else { return Ok(()) };
        let (epoch, fetched) = fetched;
        if epoch != channel.epoch {
            return Ok(());
        }
        let mut below = channel.history.front().map_or(channel.head + 1, |s| s.offset);
        for entry in fetched.into_iter().rev() {
            if entry.offset + 1 != below || entry.offset == 0 {
                continue;
            }
            below = entry.offset;
            let message = match envelope {
                Envelope::None => entry.data,
                Envelope::Json => publication_envelope(&key, Position { epoch, offset: entry.offset }, &entry.data),
            };
            channel.history_bytes += message.len();
            self.history_total += message.len();
            channel.history.push_front(Stored { offset: entry.offset, at_ms: entry.at_ms, message });
        }
        self.history_total -= channel.trim(config, now_ms);
        Ok(())
    }

    /// Cluster mode: a publication at `position` for the local members of
    /// `name`. Delivered (kept in the history, the bytes for the members
    /// returned) only if it is the channel's next; a gap is for the caller
    /// to fill from the stream first (`jump`: accept it, it cannot be).
    /// A channel this node does not follow gets nothing (`Duplicate`).
    pub(crate) fn deliver(
        &mut self,
        name: &str,
        position: Position,
        data: Outgoing,
        at_ms: u64,
        jump: bool,
    ) -> (Verdict, Option<Outgoing>) {
        let (config, envelope) = (&self.config, self.config.envelope);
        let Some(key) = self.map.get_key_value(name).map(|(key, _)| key.clone()) else {
            return (Verdict::Duplicate, None);
        };
        let Some(channel) = self.map.get_mut(&key) else { return (Verdict::Duplicate, None) };
        let mut cursor = Cursor::at(channel.epoch, channel.head);
        let verdict = cursor.accept(position.epoch, position.offset, jump);
        if !matches!(verdict, Verdict::Deliver { .. }) {
            return (verdict, None);
        }
        if channel.epoch != position.epoch {
            // A new run: the history of the old one cannot be replayed in it.
            self.history_total -= channel.history_bytes;
            channel.history.clear();
            channel.history_bytes = 0;
        }
        (channel.epoch, channel.head) = (position.epoch, position.offset);
        let message = record(channel, (config, envelope), &key, position, data, at_ms, &mut self.history_total);
        self.counters.publications += 1;
        self.counters.deliveries += channel.members.len() as u64;
        (verdict, Some(message))
    }

    /// Cluster mode: the channels whose last local member left.
    pub(crate) fn take_emptied(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.emptied)
    }

    /// Cluster mode: every followed channel and where it is.
    pub(crate) fn positions(&self) -> Vec<(Arc<str>, Position)> {
        self.map.iter().map(|(name, c)| (name.clone(), Position { epoch: c.epoch, offset: c.head })).collect()
    }

    /// Cluster mode: where a followed channel is.
    pub(crate) fn position(&self, name: &str) -> Option<Position> {
        self.map.get(name).map(|c| Position { epoch: c.epoch, offset: c.head })
    }

    /// Cluster mode: a subscribe that failed may leave a followed channel
    /// without members; it goes, and the node stops following it.
    pub(crate) fn drop_if_empty(&mut self, name: &str) {
        if let Some(channel) = self.map.get(name)
            && channel.is_idle(self.external)
            && let Some((key, channel)) = self.map.remove_entry(name)
        {
            self.history_total -= channel.history_bytes;
            self.emptied.push(key);
        }
    }

    fn get_or_create(&mut self, name: &str, now_ms: u64) -> Result<Arc<str>, ChannelError> {
        if let Some((key, _)) = self.map.get_key_value(name) {
            return Ok(key.clone());
        }
        // Channels whose history expired linger until a sweep; sweep when
        // the map has doubled since the last one (amortised O(1) per
        // creation) or before refusing at the limit.
        let len = self.map.len();
        if len >= self.config.max_channels || len >= (self.swept_at * 2).max(64) {
            self.sweep(now_ms);
        }
        if self.map.len() >= self.config.max_channels {
            return Err(ChannelError::TooManyChannels { max: self.config.max_channels as u64 });
        }
        self.created += 1;
        let epoch = mix(self.seed ^ self.created.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let key: Arc<str> = Arc::from(name);
        let channel = Channel { epoch, head: 0, members: HashMap::new(), history: VecDeque::new(), history_bytes: 0 };
        self.map.insert(key.clone(), channel);
        Ok(key)
    }
}

/// A publication at `position` (the channel's new head): its bytes for the
/// members, once, kept in the history too; `total` is every history's size.
fn record(
    channel: &mut Channel,
    (config, envelope): (&ChannelsConfig, Envelope),
    name: &str,
    position: Position,
    data: Outgoing,
    at_ms: u64,
    total: &mut usize,
) -> Outgoing {
    let message = match envelope {
        Envelope::None => data,
        Envelope::Json => publication_envelope(name, position, &data),
    };
    if config.history_size > 0 {
        channel.history_bytes += message.len();
        *total += message.len();
        channel.history.push_back(Stored { offset: position.offset, at_ms, message: message.clone() });
    }
    *total -= channel.trim(config, at_ms);
    message
}

/// The publications after `offset` if the history holds every one of them
/// and they fit the limits.
fn replayable(channel: &Channel, offset: u64, max_replay: usize, budget: usize) -> Option<Vec<Outgoing>> {
    let missed = channel.head - offset;
    if missed == 0 {
        return Some(Vec::new());
    }
    if missed > max_replay as u64 {
        return None;
    }
    let first = channel.history.front()?.offset;
    if first > offset + 1 {
        return None;
    }
    let skip = (offset + 1 - first) as usize;
    let mut bytes = 0usize;
    let mut replay = Vec::with_capacity(missed as usize);
    for stored in channel.history.iter().skip(skip) {
        bytes += stored.message.len();
        if bytes > budget {
            return None;
        }
        replay.push(stored.message.clone());
    }
    Some(replay)
}

fn check_name(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::BadName("the name is empty".into()));
    }
    if name.len() > CHANNEL_NAME_MAX_BYTES {
        return Err(ChannelError::BadName(format!(
            "the name is {} bytes; at most {CHANNEL_NAME_MAX_BYTES} are allowed",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ChannelError::BadName("the name holds control characters".into()));
    }
    Ok(())
}

/// splitmix64's finaliser: spreads a counter over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn json_str(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

fn publication_envelope(channel: &str, position: Position, data: &Outgoing) -> Outgoing {
    let data = match data {
        Outgoing::Text(text) => {
            // The hub checked it is UTF-8 (`Outgoing::data`).
            format!("\"data\":{}", json_str(&String::from_utf8_lossy(text)))
        }
        Outgoing::Binary(bytes) => {
            format!("\"data_b64\":\"{}\"", base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Outgoing::Close(..) => String::from("\"data\":null"),
    };
    let text = format!(
        "{{\"type\":\"publication\",\"channel\":{},\"epoch\":\"{}\",\"offset\":{},{data}}}",
        json_str(channel),
        position.epoch_hex(),
        position.offset
    );
    Outgoing::Text(Bytes::from(text))
}

fn subscribed_envelope(channel: &str, epoch: u64, offset: u64, recovered: bool) -> Outgoing {
    let text = format!(
        "{{\"type\":\"subscribed\",\"channel\":{},\"epoch\":\"{}\",\"offset\":{offset},\"recovered\":{recovered}}}",
        json_str(channel),
        Position { epoch, offset }.epoch_hex()
    );
    Outgoing::Text(Bytes::from(text))
}

/// The `unsubscribed` envelope (`envelope = "json"` only).
pub(crate) fn unsubscribed_envelope(channel: &str) -> Outgoing {
    Outgoing::Text(Bytes::from(format!("{{\"type\":\"unsubscribed\",\"channel\":{}}}", json_str(channel))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ChannelsConfig {
        ChannelsConfig { history_size: 5, max_replay: 4, ..ChannelsConfig::default() }
    }

    fn text(s: &str) -> Outgoing {
        Outgoing::Text(Bytes::from(s.to_owned()))
    }

    fn body(out: &Outgoing) -> String {
        match out {
            Outgoing::Text(b) | Outgoing::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            Outgoing::Close(..) => "close".into(),
        }
    }

    fn conn() -> Arc<ConnShared> {
        Arc::new(ConnShared::default())
    }

    #[test]
    fn offsets_count_up_and_members_see_each_publication() {
        let mut ch = Channels::new(config(), 1 << 20, 1);
        let (a, b) = (conn(), conn());
        ch.subscribe(1, &a, "room", None, usize::MAX, 0).expect("ok");
        ch.subscribe(2, &b, "room", None, usize::MAX, 0).expect("ok");
        let p1 = ch.publish("room", text("x"), 1).expect("ok");
        let p2 = ch.publish("room", text("y"), 2).expect("ok");
        assert_eq!((p1.position.offset, p2.position.offset), (1, 2));
        assert_eq!(p1.position.epoch, p2.position.epoch);
        let mut members: Vec<u64> = ch.members("room").map(|(c, _)| c).collect();
        members.sort_unstable();
        assert_eq!(members, [1, 2]);
        assert_eq!(ch.counters.deliveries, 4);
    }

    #[test]
    fn recovery_replays_exactly_what_was_missed() {
        let mut ch = Channels::new(config(), 1 << 20, 1);
        let a = conn();
        for i in 1..=4 {
            ch.publish("room", text(&format!("m{i}")), i).expect("ok");
        }
        let epoch = ch.publish("room", text("m5"), 5).expect("ok").position.epoch;
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 2 }), usize::MAX, 6).expect("ok");
        assert!(joined.subscribed.recovered);
        assert_eq!(joined.subscribed.replayed, 3);
        assert_eq!(joined.queue.iter().map(body).collect::<Vec<_>>(), ["m3", "m4", "m5"]);
        // Nothing missed: recovered, nothing replayed.
        ch.unsubscribe(1, "room");
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 5 }), usize::MAX, 6).expect("ok");
        assert!(joined.subscribed.recovered);
        assert!(joined.queue.is_empty());
    }

    #[test]
    fn gaps_the_history_cannot_fill_are_reported_not_papered_over() {
        let mut ch = Channels::new(config(), 1 << 20, 1);
        let a = conn();
        let mut epoch = 0;
        for i in 1..=8 {
            epoch = ch.publish("room", text(&format!("m{i}")), i).expect("ok").position.epoch;
        }
        // History holds 4..=8; 2 is gone.
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 2 }), usize::MAX, 9).expect("ok");
        assert!(!joined.subscribed.recovered);
        assert!(joined.queue.is_empty());
        ch.unsubscribe(1, "room");
        // 5 missed (4..=8) is more than max_replay = 4, though all are held.
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 3 }), usize::MAX, 9).expect("ok");
        assert!(!joined.subscribed.recovered);
        ch.unsubscribe(1, "room");
        // Within the count, over the byte budget.
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 6 }), 3, 9).expect("ok");
        assert!(!joined.subscribed.recovered);
        ch.unsubscribe(1, "room");
        // Another epoch.
        let joined =
            ch.subscribe(1, &a, "room", Some(Position { epoch: epoch ^ 1, offset: 7 }), usize::MAX, 9).expect("ok");
        assert!(!joined.subscribed.recovered);
        ch.unsubscribe(1, "room");
        // The edge: exactly max_replay missed, all held.
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 4 }), usize::MAX, 9).expect("ok");
        assert!(joined.subscribed.recovered);
        assert_eq!(joined.queue.iter().map(body).collect::<Vec<_>>(), ["m5", "m6", "m7", "m8"]);
        assert_eq!((ch.counters.recovered, ch.counters.unrecovered), (1, 4));
        // A gap within max_replay that the history no longer reaches.
        let mut ch = Channels::new(ChannelsConfig { history_size: 2, max_replay: 10, ..config() }, 1 << 20, 1);
        for i in 1..=5 {
            epoch = ch.publish("room", text(&format!("m{i}")), i).expect("ok").position.epoch;
        }
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 2 }), usize::MAX, 9).expect("ok");
        assert!(!joined.subscribed.recovered);
        ch.unsubscribe(1, "room");
        let joined = ch.subscribe(1, &a, "room", Some(Position { epoch, offset: 3 }), usize::MAX, 9).expect("ok");
        assert_eq!(joined.queue.iter().map(body).collect::<Vec<_>>(), ["m4", "m5"]);
    }

    #[test]
    fn a_position_ahead_of_the_head_is_refused() {
        let mut ch = Channels::new(config(), 1 << 20, 1);
        let epoch = ch.publish("room", text("a"), 0).expect("ok").position.epoch;
        let error =
            ch.subscribe(1, &conn(), "room", Some(Position { epoch, offset: 2 }), usize::MAX, 0).expect_err("refused");
        assert_eq!(error, ChannelError::AheadOfHead { offset: 2, head: 1 });
        assert_eq!(ch.members("room").count(), 0);
    }

    #[test]
    fn history_expires_and_idle_channels_go() {
        let mut ch = Channels::new(ChannelsConfig { history_ttl_ms: 100, ..config() }, 1 << 20, 1);
        let epoch = ch.publish("room", text("a"), 0).expect("ok").position.epoch;
        assert_eq!(ch.len(), 1);
        ch.sweep(99);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch.history_bytes(), 1);
        ch.sweep(100);
        assert_eq!(ch.len(), 0);
        assert_eq!(ch.history_bytes(), 0, "the running total follows what the sweep freed");
        // Recreated: a new epoch, so a client of the old one learns it
        // lost the stream.
        let joined =
            ch.subscribe(1, &conn(), "room", Some(Position { epoch, offset: 1 }), usize::MAX, 200).expect("ok");
        assert!(!joined.subscribed.recovered);
        assert_ne!(joined.subscribed.epoch, epoch);
        // Without history a channel ends with its last member.
        let mut ch = Channels::new(ChannelsConfig { history_size: 0, ..config() }, 1 << 20, 1);
        ch.subscribe(1, &conn(), "room", None, usize::MAX, 0).expect("ok");
        ch.publish("room", text("a"), 0).expect("ok");
        assert_eq!(ch.len(), 1);
        assert_eq!(ch.leave_all(1).len(), 1);
        assert_eq!(ch.len(), 0);
    }

    #[test]
    fn limits_hold_at_the_edge() {
        let limits = ChannelsConfig { max_channels: 2, max_members: 2, max_channels_per_conn: 2, ..config() };
        let mut ch = Channels::new(limits, 8, 1);
        ch.subscribe(1, &conn(), "a", None, usize::MAX, 0).expect("ok");
        ch.subscribe(1, &conn(), "b", None, usize::MAX, 0).expect("ok");
        assert_eq!(
            ch.subscribe(1, &conn(), "c", None, usize::MAX, 0).expect_err("refused"),
            ChannelError::TooManyForConnection { max: 2 }
        );
        // Subscribing again to one it is in is no change, not a refusal.
        assert!(ch.subscribe(1, &conn(), "a", None, usize::MAX, 0).expect("ok").already);
        ch.subscribe(2, &conn(), "a", None, usize::MAX, 0).expect("ok");
        assert_eq!(
            ch.subscribe(3, &conn(), "a", None, usize::MAX, 0).expect_err("refused"),
            ChannelError::ChannelFull { max: 2 }
        );
        assert_eq!(
            ch.subscribe(3, &conn(), "c", None, usize::MAX, 0).expect_err("refused"),
            ChannelError::TooManyChannels { max: 2 }
        );
        assert_eq!(ch.publish("c", text("x"), 0).expect_err("refused"), ChannelError::TooManyChannels { max: 2 });
        assert!(ch.publish("a", text("12345678"), 0).is_ok());
        assert_eq!(
            ch.publish("a", text("123456789"), 0).expect_err("refused"),
            ChannelError::TooLarge { len: 9, max: 8 }
        );
        assert!(matches!(ch.subscribe(3, &conn(), "", None, usize::MAX, 0), Err(ChannelError::BadName(_))));
        assert!(matches!(ch.subscribe(3, &conn(), "a\nb", None, usize::MAX, 0), Err(ChannelError::BadName(_))));
        let long = "x".repeat(CHANNEL_NAME_MAX_BYTES + 1);
        assert!(matches!(ch.publish(&long, text("x"), 0), Err(ChannelError::BadName(_))));
        assert!(ch.publish(&long[1..], text("x"), 0).is_err(), "a third channel is over max_channels");
    }

    #[test]
    fn the_json_envelope_carries_what_recovery_needs() {
        let mut ch = Channels::new(ChannelsConfig { envelope: Envelope::Json, ..config() }, 1 << 20, 7);
        let joined = ch.subscribe(1, &conn(), "r\"1", None, usize::MAX, 0).expect("ok");
        let notice: serde_json::Value = serde_json::from_str(&body(&joined.queue[0])).expect("ok");
        assert_eq!(notice["type"], "subscribed");
        assert_eq!(notice["channel"], "r\"1");
        assert_eq!(notice["offset"], 0);
        assert_eq!(notice["recovered"], false);
        let published = ch.publish("r\"1", text("hé \"x\""), 0).expect("ok");
        let publication: serde_json::Value = serde_json::from_str(&body(&published.message)).expect("ok");
        assert_eq!(publication["type"], "publication");
        assert_eq!(publication["offset"], 1);
        assert_eq!(publication["epoch"], published.position.epoch_hex());
        assert_eq!(publication["data"], "hé \"x\"");
        let binary = ch.publish("r\"1", Outgoing::Binary(Bytes::from_static(&[0, 255])), 0).expect("ok");
        let publication: serde_json::Value = serde_json::from_str(&body(&binary.message)).expect("ok");
        assert_eq!(publication["data_b64"], "AP8=");
        // A recovery's notice names the position the stream continues after.
        let position = Position { epoch: published.position.epoch, offset: 1 };
        let joined = ch.subscribe(2, &conn(), "r\"1", Some(position), usize::MAX, 0).expect("ok");
        let notice: serde_json::Value = serde_json::from_str(&body(&joined.queue[0])).expect("ok");
        assert_eq!((notice["offset"].as_u64(), notice["recovered"].as_bool()), (Some(1), Some(true)));
        assert_eq!(joined.queue.len(), 2);
    }
}
