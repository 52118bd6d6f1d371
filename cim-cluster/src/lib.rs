//! # cim-cluster
//!
//! cim-rs nodes sharing one Redis: a cluster-wide session registry with the kick policy applied
//! across nodes ([`ClusterSessions`]), routed delivery — a send goes, in one atomic script, to
//! the inboxes of the nodes that hold the receiver, or to the store — ([`ClusterRouter`]), one
//! message store on Redis streams ([`RedisStore`]), per-node inbox readers, heartbeats, the
//! reaping of dead nodes, the epoch check for a Redis that came back empty, tags and broadcasts
//! across nodes, and least-loaded dispatch ([`ClusterDispatch`]). Its series (inbox lag, reaps,
//! messages routed again, Redis errors, epoch losses) go through the `metrics` facade; see
//! [`metrics`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cim_cluster::{Cluster, ClusterConfig};
//!
//! let cluster = Cluster::connect(ClusterConfig::new("redis://127.0.0.1:6379", "node-a", 1)).await?;
//! let hub = cim_core::Hub::builder()
//!     .node("node-a", 1)
//!     .sessions(cluster.sessions())
//!     .router(cluster.router())
//!     .store(cluster.store())
//!     // Inbox entries are deleted once their messages are written to the connections.
//!     .listener(cluster.delivery_listener())
//!     .build();
//! hub.start().await?; // registers the node, starts its heartbeat and its inbox reader
//! # Ok(()) }
//! ```
//!
//! Keys (prefix `cim:` by default): `epoch`, `nodes` (node id → deadline), `conns` and `load`
//! (node id → sessions, and sessions plus dispatch reservations), `node:<nid>` (name, number,
//! addresses, draining), `s:<uid>` (the account's sessions), `n:<nid>:in` (the node's inbox
//! stream), `n:<nid>:u` and `n:<nid>:t` (its accounts and tags, for the reaper), `t:<tag>`
//! (node id → tagged connections), `q:<uid>`, `qn:<uid>` and `qidx` (the store), `ver`,
//! `reap:<nid>`.

mod cluster;
mod config;
mod dispatch;
mod error;
mod inbox;
mod lua;
pub mod metrics;
mod node;
mod router;
mod sessions;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod value;

use std::time::Duration;

pub use cluster::Cluster;
pub use config::ClusterConfig;
pub use dispatch::ClusterDispatch;
pub use error::ClusterError;
pub use inbox::DeliveryListener;
pub use router::ClusterRouter;
pub use sessions::ClusterSessions;
pub use store::RedisStore;

/// Opens a client and a reconnecting connection to the Redis at `url`. Commands not answered
/// within `timeout` fail; while Redis is unreachable they fail at once (and the connection is
/// made again in the background).
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<(redis::Client, redis::aio::ConnectionManager), ClusterError> {
    let client = redis::Client::open(url)
        .map_err(|e| ClusterError::Config(format!("redis URL {url:?}: {e}")))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    let manager = redis::aio::ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok((client, manager))
}

/// `n` random hexadecimal digits.
pub(crate) fn hex_id(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect()
}
