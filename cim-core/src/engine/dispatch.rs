//! The [`Dispatch`] seam: which node a client should connect to (`GET /api/v1/dispatch`), and
//! [`LocalDispatch`], a single node's answer — itself.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A node and the addresses clients reach it at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// The node's name.
    pub node: String,
    /// Its TCP (binary protocol) listener, as `host:port` (empty when it has none).
    pub tcp: String,
    /// Its WebSocket listener.
    pub websocket: String,
    /// Its HTTP API.
    pub http: String,
}

/// Picks the node a new client should connect to, and takes this node out of the choice
/// (draining) or back in.
#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    /// The node to connect to now. A cluster picks among its live nodes that are not draining
    /// (and reserves a slot on the one it names, so that a burst of requests spreads).
    async fn pick(&self) -> Result<NodeAddrs>;

    /// Marks this node as draining (no longer named by [`pick`](Self::pick), its connections
    /// kept), or not.
    async fn set_draining(&self, draining: bool) -> Result<()>;
}

/// One node: it always names itself.
#[derive(Debug)]
pub struct LocalDispatch {
    addrs: NodeAddrs,
    draining: AtomicBool,
}

impl LocalDispatch {
    /// A dispatch that names `addrs`.
    pub fn new(addrs: NodeAddrs) -> Self {
        Self {
            addrs,
            draining: AtomicBool::new(false),
        }
    }

    /// Whether [`set_draining`](Dispatch::set_draining) marked this node draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Dispatch for LocalDispatch {
    async fn pick(&self) -> Result<NodeAddrs> {
        Ok(self.addrs.clone())
    }

    async fn set_draining(&self, draining: bool) -> Result<()> {
        self.draining.store(draining, Ordering::Relaxed);
        Ok(())
    }
}
