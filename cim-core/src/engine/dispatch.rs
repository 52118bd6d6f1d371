//! The [`Dispatch`] seam: which node a client should connect to (`GET /api/v1/dispatch`), and
//! [`LocalDispatch`], a single node's answer — itself, unless it is draining.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::error::{Error, Result};

pub use crate::node::NodeAddrs;

/// Picks the node a new client should connect to, and takes this node out of the choice
/// (draining) or back in.
#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    /// The node to connect to now. A cluster picks among its live nodes that are not draining
    /// (and reserves a slot on the one it names, so that a burst of requests spreads). A
    /// draining node is never named; node `avoid` (one the client just lost, or could not
    /// reach) only when no other qualifies.
    async fn pick(&self, avoid: Option<&str>) -> Result<NodeAddrs>;

    /// Marks this node as draining (no longer named by [`pick`](Self::pick), its connections
    /// kept), or not.
    async fn set_draining(&self, draining: bool) -> Result<()>;
}

/// One node: it names itself, unless it is draining (then no node qualifies).
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
    /// `avoid` changes nothing: this node is the only one.
    async fn pick(&self, _avoid: Option<&str>) -> Result<NodeAddrs> {
        if self.is_draining() {
            return Err(Error::unavailable(
                "dispatch",
                format!(
                    "node {:?} is draining and no other node is known",
                    self.addrs.node
                ),
            ));
        }
        Ok(self.addrs.clone())
    }

    async fn set_draining(&self, draining: bool) -> Result<()> {
        self.draining.store(draining, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_draining_single_node_names_nobody() {
        let d = LocalDispatch::new(NodeAddrs {
            node: "solo".into(),
            tcp: "127.0.0.1:1".into(),
            ..NodeAddrs::default()
        });
        assert_eq!(d.pick(None).await.unwrap().node, "solo");
        assert_eq!(
            d.pick(Some("solo")).await.unwrap().node,
            "solo",
            "the only node"
        );
        d.set_draining(true).await.unwrap();
        let e = d.pick(None).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("draining"), "{e}");
        d.set_draining(false).await.unwrap();
        assert_eq!(d.pick(None).await.unwrap().node, "solo");
    }
}
