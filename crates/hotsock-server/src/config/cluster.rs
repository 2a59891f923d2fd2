//! `[cluster]`: many nodes on one Redis acting as one server. Without the
//! section nothing here is used and nothing external is needed.

use serde::Deserialize;

/// Longest `cluster.node_id`: it is part of Redis keys and of every
/// presence entry.
pub(crate) const NODE_ID_MAX_BYTES: usize = 64;
/// The shortest heartbeat: more often only loads Redis.
pub(crate) const CLUSTER_HEARTBEAT_MS_MIN: u64 = 50;
/// A node's registration must survive a few missed heartbeats.
pub(crate) const NODE_TTL_HEARTBEATS_MIN: u64 = 3;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `redis+unix:///path`): the one Redis every
    /// node of the cluster uses.
    pub redis: String,
    /// This node's name in the cluster; default: hostname, `:`, listen port.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and Pub/Sub channel hotsock uses, so
    /// several clusters (or other users) can share one Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How often the node renews its registration.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a registration lives without renewal: a node that died
    /// without stopping (SIGKILL, power loss) leaves presence this long.
    #[serde(default = "default_node_ttl_ms")]
    pub node_ttl_ms: u64,
    /// Requests to Redis waiting to be sent; past it a request fails at
    /// once (a typed error to the worker, or counted as dropped).
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// Entries kept in each node's inbox stream: how many cross-node sends
    /// a node can catch up on after a lost Pub/Sub message or a
    /// reconnection.
    #[serde(default = "default_inbox_size")]
    pub inbox_size: usize,
    /// How long connecting to Redis may take (at start: the node refuses to
    /// start past it).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_prefix() -> String {
    "hotsock".into()
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_node_ttl_ms() -> u64 {
    5_000
}
fn default_queue_max() -> usize {
    65_536
}
fn default_inbox_size() -> usize {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}

impl ClusterConfig {
    /// The checks that need no Redis: `(key, problem)` of the first failure.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(error) = redis::Client::open(self.redis.as_str()) {
            return Err(("cluster.redis", format!("is not a Redis URL ({error}); e.g. \"redis://127.0.0.1:6379/0\"")));
        }
        if let Some(id) = &self.node_id {
            check_name(id).map_err(|problem| ("cluster.node_id", problem))?;
        }
        check_name(&self.prefix).map_err(|problem| ("cluster.prefix", problem))?;
        if self.heartbeat_ms < CLUSTER_HEARTBEAT_MS_MIN {
            let problem = format!("is {}; it must be at least {CLUSTER_HEARTBEAT_MS_MIN}", self.heartbeat_ms);
            return Err(("cluster.heartbeat_ms", problem));
        }
        if self.node_ttl_ms < self.heartbeat_ms.saturating_mul(NODE_TTL_HEARTBEATS_MIN) {
            let problem = format!(
                "is {}; it must be at least {NODE_TTL_HEARTBEATS_MIN} x cluster.heartbeat_ms ({})",
                self.node_ttl_ms, self.heartbeat_ms
            );
            return Err(("cluster.node_ttl_ms", problem));
        }
        for (key, value) in [("cluster.queue_max", self.queue_max), ("cluster.inbox_size", self.inbox_size)] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.connect_timeout_ms == 0 {
            return Err(("cluster.connect_timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }

    /// This node's id: `node_id`, else the hostname and the listen port.
    pub(crate) fn node_id(&self, listen_port: u16) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into());
        let id = format!("{host}:{listen_port}");
        // A hostname with characters a key part may not hold is rare; keep
        // the id usable rather than refuse to start.
        id.chars().map(|c| if c.is_ascii_graphic() && c != '|' && c != ',' { c } else { '_' }).collect()
    }
}

/// A node id or prefix: printable ASCII without `|` and `,` (the presence
/// entries' separators), 1 to `NODE_ID_MAX_BYTES` bytes.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NODE_ID_MAX_BYTES {
        return Err(format!("must be 1 to {NODE_ID_MAX_BYTES} bytes"));
    }
    if !name.chars().all(|c| c.is_ascii_graphic() && c != '|' && c != ',') {
        return Err(format!("is {name:?}; it may hold printable ASCII except `|` and `,`, no spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_validate() {
        let config = parse("redis = \"redis://127.0.0.1:6379/0\"");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.prefix, "hotsock");
        assert!(config.node_id(9001).ends_with(":9001"));
    }

    #[test]
    fn each_bound_names_its_key() {
        let cases = [
            ("redis = \"http://x\"", "cluster.redis"),
            ("redis = \"redis://h\"\nnode_id = \"a b\"", "cluster.node_id"),
            ("redis = \"redis://h\"\nnode_id = \"\"", "cluster.node_id"),
            ("redis = \"redis://h\"\nprefix = \"p|q\"", "cluster.prefix"),
            ("redis = \"redis://h\"\nheartbeat_ms = 10", "cluster.heartbeat_ms"),
            ("redis = \"redis://h\"\nheartbeat_ms = 1000\nnode_ttl_ms = 2000", "cluster.node_ttl_ms"),
            ("redis = \"redis://h\"\nqueue_max = 0", "cluster.queue_max"),
            ("redis = \"redis://h\"\ninbox_size = 0", "cluster.inbox_size"),
            ("redis = \"redis://h\"\nconnect_timeout_ms = 0", "cluster.connect_timeout_ms"),
        ];
        for (text, key) in cases {
            let (got, _) = parse(text).validate().expect_err(text);
            assert_eq!(got, key, "{text}");
        }
    }
}
