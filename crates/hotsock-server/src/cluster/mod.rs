//! Cluster mode (`[cluster]`): nodes sharing one Redis act as one server.
//! The hub queues what must cross nodes (`link`); one task per node talks
//! to Redis (`node`); `keys` names the keys and holds the Lua scripts;
//! `cursor` decides, without I/O, what of a log is next. The design, its
//! costs and its failure modes are in `docs/scaling.md`.

pub(crate) mod cursor;
mod inflight;
pub(crate) mod keys;
pub(crate) mod link;
mod node;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ServerError;
use crate::shared::Shared;
use crate::wire::ClusterStatus;
use link::{ClusterLink, ClusterShared};

/// Joins the cluster if `[cluster]` is set: connects to Redis, registers
/// the node and starts its task. Unreachable Redis at start is an error:
/// a node that starts without its cluster would serve a split view.
pub(crate) async fn start(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>, ServerError> {
    let config = shared.config();
    let Some(cluster) = config.cluster.clone() else { return Ok(None) };
    let id: Arc<str> = Arc::from(cluster.node_id(shared.listen.port()));
    let epoch = fresh_epoch();
    let (tx, rx) = mpsc::channel(cluster.queue_max);
    let state = Arc::new(ClusterShared::default());
    let at = config.locate("cluster.redis");
    let mut node = node::Node::new(shared.clone(), cluster, id.clone(), epoch, state.clone(), rx)
        .map_err(|e| ServerError::Cluster(format!("{at}: {e}")))?;
    let conns = node.connect().await.map_err(|e| ServerError::Cluster(format!("{at}: {e}")))?;
    tracing::info!(node = %id, epoch, redis = %config.cluster.as_ref().map_or("", |c| c.redis.as_str()), "joined the cluster");
    shared.hub.set_cluster(ClusterLink::new(tx, id, epoch, state));
    Ok(Some(tokio::spawn(node.run(conns))))
}

/// What `status` shows of the cluster.
pub(crate) fn status(link: &ClusterLink) -> ClusterStatus {
    let s = &link.shared;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    ClusterStatus {
        node: link.node.to_string(),
        epoch: link.epoch,
        redis_connected: link.connected(),
        last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
        nodes: load(&s.nodes),
        routed: load(&s.routed),
        received: load(&s.received),
        dropped: load(&s.dropped),
        refetched: load(&s.refetched),
        lost: load(&s.lost),
        outages: load(&s.outages),
    }
}

/// Milliseconds since the Unix epoch (stream entries carry it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A value for a new epoch (of a node's boot, or a log's run) that no
/// other is likely to have picked: the clock, the pid and a counter,
/// mixed. Never 0.
pub(crate) fn fresh_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = nanos ^ (u64::from(std::process::id()) << 40) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}
