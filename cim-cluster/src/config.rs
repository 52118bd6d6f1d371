//! [`ClusterConfig`]: what a node needs to join a cluster.

use std::sync::Arc;
use std::time::Duration;

use cim_core::engine::{CimKickPolicy, KickPolicy, NodeAddrs};

use crate::error::ClusterError;

/// How a node joins the cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The Redis server, as `redis://host:port[/db]` (with `user:password@` if it needs them).
    pub redis: String,
    /// Prefix of every key (default `cim:`), so that clusters can share a Redis.
    pub prefix: String,
    /// This node's name: unique among the live nodes, letters, digits, `.`, `_` and `-`. It is
    /// the `node` of the sessions bound here.
    pub node: String,
    /// This node's number (0-1023), unique among the live nodes (message ids carry it).
    pub node_id: u16,
    /// How often the node moves its deadline forward and looks for dead nodes.
    pub heartbeat: Duration,
    /// How long a node that stopped beating counts as live: after it, its sessions vanish and
    /// it is reaped. At least twice the heartbeat.
    pub deadline: Duration,
    /// Where clients reach this node (what `GET /api/v1/dispatch` names; see also
    /// [`Cluster::advertise`](crate::Cluster::advertise)).
    pub advertised: NodeAddrs,
    /// Messages kept per account; the oldest are dropped beyond it.
    pub max_per_account: usize,
    /// What a bind does to the account's other connections, on every node (the same policy as
    /// the hub's). Also applied when sessions are asserted again after Redis lost them.
    pub kick_policy: Arc<dyn KickPolicy>,
    /// A Redis command that has not been answered after this long fails (the send answers
    /// `503`).
    pub response_timeout: Duration,
    /// An inbox entry whose messages were queued to connections here but not reported written
    /// after this long is deleted anyway (the connection's write failed).
    pub handover_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("node_id", &self.node_id)
            .field("heartbeat", &self.heartbeat)
            .field("deadline", &self.deadline)
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// A configuration for node `node` (number `node_id`) on the Redis at `redis`, with the
    /// defaults: prefix `cim:`, a heartbeat every second and a deadline of five, 10 000 messages
    /// per account, CIM's kick policy.
    pub fn new(redis: impl Into<String>, node: impl Into<String>, node_id: u16) -> Self {
        let node = node.into();
        Self {
            redis: redis.into(),
            prefix: "cim:".into(),
            advertised: NodeAddrs {
                node: node.clone(),
                ..NodeAddrs::default()
            },
            node,
            node_id,
            heartbeat: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
            max_per_account: 10_000,
            kick_policy: Arc::new(CimKickPolicy),
            response_timeout: Duration::from_secs(2),
            handover_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the names and the timers.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !name_ok(&self.node) {
            return Err(ClusterError::Config(format!(
                "node name {:?}: in a cluster a node's name is 1 to 64 letters, digits, '.', '_' \
                 or '-'",
                self.node
            )));
        }
        if self.node_id > 1023 {
            return Err(ClusterError::Config(format!(
                "node_id {} must be 0 to 1023",
                self.node_id
            )));
        }
        if self.heartbeat.is_zero() || self.deadline < self.heartbeat * 2 {
            return Err(ClusterError::Config(format!(
                "the node deadline ({:?}) must be at least twice the heartbeat ({:?})",
                self.deadline, self.heartbeat
            )));
        }
        Ok(())
    }
}
