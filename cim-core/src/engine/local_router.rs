//! [`LocalRouter`]: the send rule of a single node — push to the connections this node holds,
//! store what none of them took, and fence replays with a per-account lock.

use std::hash::BuildHasher;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};

use crate::engine::metrics::{MESSAGES_DROPPED, StoreMetrics};
use crate::engine::router::{Router, Sent};
use crate::engine::sessions::SessionManager;
use crate::engine::shared::SharedMessage;
use crate::engine::store::{MessageStore, Seq};
use crate::error::Result;
use crate::session::Session;

/// Number of stripes of the account locks.
const STRIPES: usize = 256;

/// Routes to the connections of one node's [`SessionManager`] and keeps what they refuse in a
/// [`MessageStore`] (when there is one; without a store, a message nobody takes is dropped, as in
/// CIM).
///
/// The fence: a send to an account that is stored holds the account's lock (striped) from the
/// push to the append, and [`replay_boundary`](Router::replay_boundary) reads the store's last
/// sequence under the same lock, so a replay that starts at the boundary misses nothing that
/// was refused before it.
pub struct LocalRouter {
    sessions: Arc<dyn SessionManager>,
    store: Option<Arc<dyn MessageStore>>,
    locks: Box<[Mutex<()>]>,
    hasher: std::hash::RandomState,
    metrics: StoreMetrics,
    /// Messages nobody took, without a store to keep them.
    dropped_no_store: metrics::Counter,
}

impl std::fmt::Debug for LocalRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRouter")
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalRouter {
    /// A router over `sessions`, storing in `store`. Its series (the store's append time, the
    /// messages it drops) are registered with the metrics recorder installed now.
    pub fn new(sessions: Arc<dyn SessionManager>, store: Option<Arc<dyn MessageStore>>) -> Self {
        Self {
            sessions,
            store,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
            metrics: StoreMetrics::register(),
            dropped_no_store: metrics::counter!(MESSAGES_DROPPED, "reason" => "no_store"),
        }
    }

    /// Holds `uid`'s lock until the guard drops.
    #[allow(clippy::indexing_slicing)] // reduced modulo the (non-zero) length
    async fn lock(&self, uid: &str) -> MutexGuard<'_, ()> {
        let i = (self.hasher.hash_one(uid) as usize) % self.locks.len();
        self.locks[i].lock().await
    }
}

impl LocalRouter {
    /// [`Router::send`], as a plain method: a batch calls it for each message without a boxed
    /// future each.
    async fn route(&self, msg: Arc<SharedMessage>) -> Result<Sent> {
        let id = msg.message().id;
        let Some(store) = &self.store else {
            let d = self.sessions.push(msg).await?;
            if d.delivered == 0 {
                self.dropped_no_store.increment(1);
            }
            return Ok(Sent {
                id,
                delivered: d.delivered,
                stored: false,
            });
        };
        let uid = msg.message().receiver.as_str();
        let _fence = self.lock(uid).await;
        if let Some(d) = self.sessions.push_unless_receipts(Arc::clone(&msg)).await? {
            let stored = d.delivered == 0;
            if stored {
                self.metrics.append(&**store, uid, msg.message()).await?;
            }
            return Ok(Sent {
                id,
                delivered: d.delivered,
                stored,
            });
        }
        // The account acknowledges messages: stored first, kept until acknowledged.
        self.metrics.append(&**store, uid, msg.message()).await?;
        let d = self.sessions.push(Arc::clone(&msg)).await?;
        Ok(Sent {
            id,
            delivered: d.delivered,
            stored: true,
        })
    }
}

#[async_trait]
impl Router for LocalRouter {
    async fn send(&self, msg: Arc<SharedMessage>) -> Result<Sent> {
        self.route(msg).await
    }

    async fn send_many(&self, msgs: Vec<Arc<SharedMessage>>) -> Vec<Result<Sent>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.route(m).await);
        }
        out
    }

    async fn send_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> Result<Sent> {
        let id = msg.message().id;
        let d = self.sessions.push_tag(tag, msg).await?;
        Ok(Sent {
            id,
            delivered: d.delivered,
            stored: false,
        })
    }

    async fn broadcast(&self, msg: Arc<SharedMessage>) -> Result<Sent> {
        let id = msg.message().id;
        let d = self.sessions.broadcast(msg).await?;
        Ok(Sent {
            id,
            delivered: d.delivered,
            stored: false,
        })
    }

    async fn replay_boundary(&self, uid: &str) -> Result<Seq> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let _fence = self.lock(uid).await;
        store.last_seq(uid).await
    }

    async fn keep_undelivered(
        &self,
        session: &Session,
        messages: Vec<Arc<SharedMessage>>,
    ) -> Result<usize> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        if messages.is_empty() {
            return Ok(0);
        }
        let others = self.sessions.sessions(&session.uid).await?;
        if others
            .iter()
            .any(|s| s.nid != session.nid || s.node != session.node)
        {
            return Ok(0);
        }
        // Every message is tried, whatever happens to the others.
        let mut first_error = None;
        let mut stored = 0;
        for m in &messages {
            match self
                .metrics
                .append(&**store, &session.uid, m.message())
                .await
            {
                Ok(_) => stored += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(stored), Err)
    }
}
