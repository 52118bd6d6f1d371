//! The [`SessionManager`] seam: who is connected, and pushing to them.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::conn::ConnectionHandle;
use crate::engine::policy::KickPolicy;
use crate::engine::shared::SharedMessage;
use crate::error::Result;
use crate::session::Session;

/// What a bind did to the account's other connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindOutcome {
    /// Connections sent the kick notice and closed.
    pub kicked: Vec<Session>,
    /// Connections closed silently (the same device bound again).
    pub closed: Vec<Session>,
}

/// How far a push to this node's connections got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Live connections the message was queued to.
    pub delivered: usize,
    /// Live connections that could not take it (queue full or closing).
    pub failed: usize,
}

impl Delivery {
    /// Adds another delivery's counts.
    pub fn merge(&mut self, other: Delivery) {
        self.delivered += other.delivered;
        self.failed += other.failed;
    }
}

/// A page of the online list, with optional filters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Sessions to skip.
    pub offset: usize,
    /// Sessions to return at most.
    pub limit: usize,
    /// Only this account.
    pub uid: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
}

/// One page of online sessions and how many match in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlinePage {
    /// Sessions matching the filters, in all.
    pub total: usize,
    /// This page, ordered by node, then connection id.
    pub sessions: Vec<Session>,
}

/// Registers bound connections and pushes messages to them: in memory on one node
/// ([`LocalSessionManager`](crate::LocalSessionManager)) or across a cluster.
///
/// A connection is identified by its node and its connection id (`Session::node`,
/// `Session::nid`) wherever sessions are listed, matched or sorted. The views of sessions
/// ([`sessions`](Self::sessions), [`online`](Self::online), [`count`](Self::count),
/// [`kick`](Self::kick)) cover every node; the pushes ([`push`](Self::push) and the rest) reach
/// the connections this node holds — routing between nodes is the
/// [`Router`](crate::engine::Router)'s business.
#[async_trait]
pub trait SessionManager: Send + Sync + 'static {
    /// Registers `session` (its `node` and `nid` name `conn`) and applies `policy` to the
    /// account's other connections, on every node. Binding a connection again replaces its
    /// session.
    async fn bind(
        &self,
        session: Arc<Session>,
        conn: ConnectionHandle,
        policy: &dyn KickPolicy,
    ) -> Result<BindOutcome>;

    /// Forgets the connection of `session` (no-op when it is already gone, or when a newer
    /// session took its place).
    async fn unbind(&self, session: &Session) -> Result<()>;

    /// Queues `msg` to every connection of `msg.receiver` that this node holds.
    async fn push(&self, msg: Arc<SharedMessage>) -> Result<Delivery>;

    /// Queues `msg` to every connection tagged `tag` that this node holds.
    async fn push_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> Result<Delivery>;

    /// Queues `msg` to every connection this node holds.
    async fn broadcast(&self, msg: Arc<SharedMessage>) -> Result<Delivery>;

    /// Tags the connection of `session`.
    async fn set_tag(&self, session: &Session, tag: &str) -> Result<()>;

    /// Removes a tag from the connection of `session`.
    async fn remove_tag(&self, session: &Session, tag: &str) -> Result<()>;

    /// The live sessions of an account.
    async fn sessions(&self, uid: &str) -> Result<Vec<Session>>;

    /// Queues `msg` to this node's connections of its receiver, unless one of them acknowledges
    /// messages: then nothing is queued and `None` is returned, so that the caller stores the
    /// message before it pushes it. The default asks [`wants_receipts`](Self::wants_receipts)
    /// and then pushes; an implementation can answer both with one lookup.
    async fn push_unless_receipts(&self, msg: Arc<SharedMessage>) -> Result<Option<Delivery>> {
        if self.wants_receipts(&msg.message().receiver).await? {
            return Ok(None);
        }
        self.push(msg).await.map(Some)
    }

    /// Whether any live connection of `uid` acknowledges messages (so its messages are stored
    /// before they are pushed).
    async fn wants_receipts(&self, uid: &str) -> Result<bool> {
        Ok(self.sessions(uid).await?.iter().any(|s| s.client_ack))
    }

    /// A page of the live sessions.
    async fn online(&self, page: &Page) -> Result<OnlinePage>;

    /// An operator's kick: sends every connection of `uid` the kick notice with content
    /// [`OPERATOR`](crate::engine::OPERATOR) and closes them; returns how many.
    async fn kick(&self, uid: &str) -> Result<usize>;

    /// Number of live sessions.
    async fn count(&self) -> Result<usize>;

    /// Starts what the manager needs in the background (a registry's readers and heartbeats).
    /// Called once, by the server, before it accepts connections.
    async fn start(&self) -> Result<()> {
        Ok(())
    }

    /// Stops it and deregisters this node. Called once, by the server, after the connections
    /// have drained.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}
