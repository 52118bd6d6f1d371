//! [`ClusterError`]: what goes wrong talking to Redis, and how it reaches the engine.

/// A failure of the cluster's backend.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or answered an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something this crate did not expect.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// The node's name or number is taken by a live node.
    #[error(
        "node {name:?} (node_id {number}) cannot join the cluster: the live node {other:?} \
         (node {other_name:?}, node_id {other_number}) has the same name or node_id; give each \
         node its own `node` and `node_id`, or wait until the other one's deadline has passed"
    )]
    Taken {
        /// This node's name.
        name: String,
        /// This node's number.
        number: u16,
        /// The live node's id.
        other: String,
        /// Its name.
        other_name: String,
        /// Its number.
        other_number: String,
    },
    /// The configuration is unusable.
    #[error("cluster configuration: {0}")]
    Config(String),
}

impl ClusterError {
    pub(crate) fn reply(expected: &str, got: &redis::Value) -> Self {
        ClusterError::Reply(format!("expected {expected}, got {got:?}"))
    }
}

impl From<ClusterError> for cim_core::Error {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Taken { .. } | ClusterError::Config(_) => {
                cim_core::Error::Conflict(e.to_string())
            }
            other => cim_core::Error::unavailable("redis", other),
        }
    }
}
