//! The [`Router`] seam: the send rule — route a message to the live connections of its receiver,
//! or store it — as one step, atomic with respect to binds and replays of the same account.
//!
//! On a single node it is [`LocalRouter`](crate::engine::LocalRouter): the in-memory sessions,
//! the store and a per-account fence. A cluster implements it as one script on a shared backend
//! that stores or routes to the nodes that hold the receiver; every caller (the HTTP API,
//! `client_message`, a handler of your own) only sees [`Sent`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::engine::shared::SharedMessage;
use crate::engine::store::Seq;
use crate::error::Result;
use crate::session::Session;

/// A message that was sent: its id and how far it got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// The message's id.
    pub id: i64,
    /// Live connections it was handed to (queued on this node, or routed to the node that holds
    /// them).
    pub delivered: usize,
    /// Whether it was stored for later delivery: no live connection took it, or the account
    /// acknowledges messages (then it stays stored until acknowledged).
    pub stored: bool,
}

/// Routes messages to live connections or stores them. Every message handed to it is stamped
/// (id and timestamp set).
///
/// Guarantees an implementation keeps:
/// - a `send` returns once the message is queued to a live connection of its receiver (here or
///   on the node that holds it) or stored as durably as the store's policy says; a failure to do
///   either is an error ([`Error::Unavailable`](crate::Error::Unavailable)), never a silent loss;
/// - a message that no live connection can take (none, or their queues are full) is stored,
///   wherever the refusing queue is;
/// - an account that acknowledges messages (`clientAck`) has every message stored before it is
///   pushed;
/// - [`replay_boundary`](Self::replay_boundary) fences replays: every message refused by the
///   account's connections before it was called is stored at or below the sequence it returns.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Sends `msg` to every live connection of `msg.receiver`, or stores it (see above).
    async fn send(&self, msg: Arc<SharedMessage>) -> Result<Sent>;

    /// Sends each of `msgs` as [`send`](Self::send) does, in order; returns what became of
    /// each, in the same order. The default sends them one by one; a cluster routes a batch
    /// with one round trip.
    async fn send_many(&self, msgs: Vec<Arc<SharedMessage>>) -> Vec<Result<Sent>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.send(m).await);
        }
        out
    }

    /// Sends `msg` to every live connection tagged `tag`. Nothing is stored.
    async fn send_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> Result<Sent>;

    /// Sends `msg` to every live connection. Nothing is stored.
    async fn broadcast(&self, msg: Arc<SharedMessage>) -> Result<Sent>;

    /// The last stored sequence of `uid` that a replay must reach: called after a connection of
    /// `uid` is bound (so every later send reaches its queue, or is stored above the boundary)
    /// and before its stored messages are written. `0` without a store.
    async fn replay_boundary(&self, uid: &str) -> Result<Seq>;

    /// Messages `session`'s connection did not write — still queued when it ended, or too large
    /// for its listener: stores them unless another live connection of the account (not this
    /// one) took them. Returns how many were stored.
    async fn keep_undelivered(
        &self,
        session: &Session,
        messages: Vec<Arc<SharedMessage>>,
    ) -> Result<usize>;

    /// Starts what the router needs in the background (readers, heartbeats). Called once, by the
    /// server, before it accepts connections.
    async fn start(&self) -> Result<()> {
        Ok(())
    }

    /// Stops it. Called once, by the server, after the connections have drained.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}
