//! [`ClusterDispatch`]: least-loaded dispatch — of the live nodes that are not draining, the
//! least loaded, or, when the next one is within a connection of it, one of the two at random;
//! a slot is reserved on the node named, so a burst of clients (a reconnect storm after a
//! node's death) spreads instead of piling onto one.

use std::sync::Arc;

use async_trait::async_trait;
use cim_core::engine::{Dispatch, NodeAddrs};

use crate::cluster::Inner;
use crate::value::{array, text};

/// Dispatch across the cluster's nodes.
pub struct ClusterDispatch {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDispatch").finish_non_exhaustive()
    }
}

impl ClusterDispatch {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Dispatch for ClusterDispatch {
    async fn pick(&self, avoid: Option<&str>) -> cim_core::Result<NodeAddrs> {
        let inner = &self.inner;
        let mut inv = inner.invocation(&inner.scripts.dispatch);
        inv.arg(if fastrand::bool() { "1" } else { "0" })
            .arg(avoid.unwrap_or(""));
        let mut it = array(inner.call(&inv).await?)?.into_iter().map(text);
        let mut next = || it.next().transpose().map(Option::unwrap_or_default);
        let nid = next()?;
        if nid.is_empty() {
            return Err(cim_core::Error::unavailable(
                "cluster",
                "no live node that is not draining",
            ));
        }
        Ok(NodeAddrs {
            node: next()?,
            tcp: next()?,
            websocket: next()?,
            http: next()?,
            tls: next()?,
            wss: next()?,
            xml: next()?,
        })
    }

    /// Also remembered here: a node that registers again (after Redis lost its data, or after
    /// it was taken for dead) stays out of dispatch while it drains.
    async fn set_draining(&self, draining: bool) -> cim_core::Result<()> {
        let inner = &self.inner;
        inner
            .draining
            .store(draining, std::sync::atomic::Ordering::Release);
        let mut inv = inner.invocation(&inner.scripts.drain);
        inv.arg(inner.nid.as_str())
            .arg(if draining { "1" } else { "0" });
        inner.call(&inv).await?;
        Ok(())
    }
}
