//! [`ClusterRouter`]: the send rule across nodes — one script routes each message to the
//! inboxes of the live nodes that hold its receiver, or stores it (also first, when a session
//! of the account acknowledges messages). A send is answered after the script, so under
//! `appendfsync always` what is answered is on Redis's disk.

use std::sync::Arc;

use async_trait::async_trait;
use cim_core::Session;
use cim_core::engine::{Router, Sent, Seq, SharedMessage};

use crate::cluster::{Inner, Stopped};
use crate::value::{count, int};

/// The cluster's router for one node.
pub struct ClusterRouter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRouter")
            .field("nid", &self.inner.nid)
            .finish_non_exhaustive()
    }
}

impl ClusterRouter {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Router for ClusterRouter {
    async fn send(&self, msg: Arc<SharedMessage>) -> cim_core::Result<Sent> {
        let id = msg.message().id;
        let r = self.inner.route_one(msg).await?;
        Ok(Sent {
            id,
            delivered: r.delivered,
            stored: r.stored,
        })
    }

    /// One script call per 256 messages, in order, each atomic. When one fails, the messages
    /// of the calls before it are reported sent and the others not (a failed call sent none of
    /// its messages, or, when the answer was lost, all of them).
    async fn send_many(&self, msgs: Vec<Arc<SharedMessage>>) -> Vec<cim_core::Result<Sent>> {
        let ids: Vec<i64> = msgs.iter().map(|m| m.message().id).collect();
        let batch: Vec<_> = msgs.into_iter().map(|m| (m, String::new())).collect();
        let (routed, failed) = Stopped::split(self.inner.route(&batch).await);
        let mut ids = ids.into_iter();
        // The routed first: a zip that ran out of them takes no id with it.
        let mut out: Vec<cim_core::Result<Sent>> = routed
            .into_iter()
            .zip(ids.by_ref())
            .map(|(r, id)| {
                Ok(Sent {
                    id,
                    delivered: r.delivered,
                    stored: r.stored,
                })
            })
            .collect();
        if let Some(e) = failed.map(|e| e.to_string()) {
            out.extend(ids.map(|_| Err(cim_core::Error::unavailable("redis", &e))));
        }
        out
    }

    async fn send_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> cim_core::Result<Sent> {
        let inner = &self.inner;
        let mut inv = inner.invocation(&inner.scripts.send_tag);
        inv.arg(tag)
            .arg(crate::store::encode_message(msg.message()));
        let delivered = count(inner.call(&inv).await?)?;
        Ok(Sent {
            id: msg.message().id,
            delivered,
            stored: false,
        })
    }

    async fn broadcast(&self, msg: Arc<SharedMessage>) -> cim_core::Result<Sent> {
        let inner = &self.inner;
        let mut inv = inner.invocation(&inner.scripts.broadcast);
        inv.arg(crate::store::encode_message(msg.message()));
        let delivered = count(inner.call(&inv).await?)?;
        Ok(Sent {
            id: msg.message().id,
            delivered,
            stored: false,
        })
    }

    /// The account's last sequence, read after its bind committed: a message sent before the
    /// commit was stored (below this) or routed by the registry as it then was; one sent or
    /// re-routed after it is routed to this connection's node (the script is atomic with
    /// respect to the commit).
    async fn replay_boundary(&self, uid: &str) -> cim_core::Result<Seq> {
        let inner = &self.inner;
        let v = inner
            .cmd(redis::cmd("GET").arg(inner.key(&format!("qn:{uid}"))))
            .await?;
        Ok(u64::try_from(int(v)?).unwrap_or(0))
    }

    /// Routes what was still queued for the ended connection to the account's other live
    /// connections, on any node, or stores it when there is none.
    async fn keep_undelivered(
        &self,
        session: &Session,
        messages: Vec<Arc<SharedMessage>>,
    ) -> cim_core::Result<usize> {
        if messages.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let skip = inner.sid(session.nid);
        let ids: Vec<i64> = messages.iter().map(|m| m.message().id).collect();
        let batch: Vec<_> = messages.into_iter().map(|m| (m, skip.clone())).collect();
        let (routed, failed) = Stopped::split(inner.route(&batch).await);
        // Handed on: their inbox entries need not wait for this connection any more. (Those
        // not routed wait, to be routed again from the inbox.)
        {
            let mut t = crate::inbox::lock(&inner.tracker);
            for id in ids.into_iter().take(routed.len()) {
                t.settle(id);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(routed.iter().filter(|r| r.stored).count()),
        }
    }
}
