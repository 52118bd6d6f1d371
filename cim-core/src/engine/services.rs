//! [`Services`]: what handlers, event listeners and the rest of a server act through — this
//! node's name, the session manager, the router, the store and the message ids. Cheap to clone
//! (a handful of `Arc`s), so work can be handed to a task of its own.

use std::sync::Arc;

use ecow::EcoString;

use tracing::debug;

use crate::engine::ids::MessageIds;
use crate::engine::metrics::{EngineMetrics, Target};
use crate::engine::router::{Router, Sent};
use crate::engine::sessions::SessionManager;
use crate::engine::shared::SharedMessage;
use crate::engine::store::MessageStore;
use crate::error::{Error, Result};
use crate::message::Message;

/// Checks a message before it is routed or stored. A server refuses at the door what its
/// connections could not be sent — a message too large for one of its listeners would be
/// accepted, then skipped on every delivery and never arrive — with an
/// [`Error::Reply`](crate::Error::Reply) of code `413` that names the limit.
pub trait Admission: Send + Sync + 'static {
    /// `Ok` when the message may be sent; the refusal otherwise.
    fn admit(&self, message: &Message) -> Result<()>;
}

/// The node's shared services. Part of every [`Hub`](crate::engine::Hub), and what a
/// [`RequestContext`](crate::engine::RequestContext) or an
/// [`EventContext`](crate::engine::EventContext) hands to handlers and listeners.
#[derive(Clone)]
pub struct Services {
    /// Shared by the sessions of the node's connections (a clone of a long name is a count).
    node: EcoString,
    sessions: Arc<dyn SessionManager>,
    router: Arc<dyn Router>,
    store: Option<Arc<dyn MessageStore>>,
    ids: Arc<MessageIds>,
    admission: Option<Arc<dyn Admission>>,
    metrics: Arc<EngineMetrics>,
}

/// The debug line of a send, named by its sender and receiver: a send has no connection's span
/// around it.
fn log_sent(message: &SharedMessage, sent: &Sent) {
    debug!(
        id = sent.id,
        sender = %message.message().sender,
        receiver = %message.message().receiver,
        delivered = sent.delivered,
        stored = sent.stored,
        "sent"
    );
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("node", &self.node)
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Services {
    pub(crate) fn new(
        node: String,
        sessions: Arc<dyn SessionManager>,
        router: Arc<dyn Router>,
        store: Option<Arc<dyn MessageStore>>,
        ids: MessageIds,
        admission: Option<Arc<dyn Admission>>,
        metrics: Arc<EngineMetrics>,
    ) -> Self {
        Self {
            node: node.into(),
            sessions,
            router,
            store,
            ids: Arc::new(ids),
            admission,
            metrics,
        }
    }

    /// The handles of the engine's series.
    pub(crate) fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's name, for a session.
    pub(crate) fn node_name(&self) -> &EcoString {
        &self.node
    }

    /// The session manager.
    pub fn sessions(&self) -> &Arc<dyn SessionManager> {
        &self.sessions
    }

    /// The router: how messages reach connections or the store.
    pub fn router(&self) -> &Arc<dyn Router> {
        &self.router
    }

    /// The offline message store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn MessageStore>> {
        self.store.as_ref()
    }

    /// A new message id.
    pub fn next_message_id(&self) -> i64 {
        self.ids.next()
    }

    /// Refuses what [`Admission`] refuses; `Ok` without one.
    pub fn admit(&self, message: &Message) -> Result<()> {
        match &self.admission {
            Some(a) => a.admit(message),
            None => Ok(()),
        }
    }

    /// Gives `message` an id and a timestamp where it has none, and wraps it for fan-out.
    pub fn stamp(&self, mut message: Message) -> Arc<SharedMessage> {
        if message.id == 0 {
            message.id = self.ids.next();
        }
        if message.timestamp == 0 {
            message.timestamp = crate::now_ms();
        }
        Arc::new(SharedMessage::new(message))
    }

    /// Sends `message` to every live connection of its receiver, or stores it (see
    /// [`Router`]): returns once it is queued to a connection or stored as durably as the
    /// store's policy says; a store failure is an [`Error::Unavailable`](crate::Error::Unavailable).
    /// A message the server's connections could not be sent is refused first (see
    /// [`Admission`]).
    pub async fn send(&self, message: Message) -> Result<Sent> {
        self.admit(&message)?;
        let message = self.stamp(message);
        let sent = self.router.send(Arc::clone(&message)).await?;
        self.metrics.sent(Target::Account).increment(1);
        if sent.stored {
            self.metrics.stored.increment(1);
        }
        log_sent(&message, &sent);
        Ok(sent)
    }

    /// Sends each of `messages` as [`send`](Self::send) does, in order (through
    /// [`Router::send_many`], which a cluster routes in one round trip): each is admitted
    /// first, a refused one has its refusal in its place and the others are sent, and what is
    /// sent and stored is counted as `send` counts it.
    pub async fn send_many(&self, messages: Vec<Message>) -> Vec<Result<Sent>> {
        let mut refusals: Vec<Option<Error>> = Vec::with_capacity(messages.len());
        let mut admitted = Vec::with_capacity(messages.len());
        for m in messages {
            match self.admit(&m) {
                Ok(()) => {
                    refusals.push(None);
                    admitted.push(self.stamp(m));
                }
                Err(e) => refusals.push(Some(e)),
            }
        }
        let expected = admitted.len();
        // Kept for the debug line of each send, which names its sender and receiver, only when
        // that line is shown.
        let logged: Vec<Arc<SharedMessage>> = if tracing::enabled!(tracing::Level::DEBUG) {
            admitted.clone()
        } else {
            Vec::new()
        };
        let mut logged = logged.iter();
        let mut routed = self.router.send_many(admitted).await.into_iter();
        let (mut sent, mut stored) = (0, 0);
        let results = refusals
            .into_iter()
            .map(|refusal| match refusal {
                Some(e) => Err(e),
                None => {
                    let r = routed.next().unwrap_or_else(|| {
                        Err(Error::unavailable(
                            "router",
                            format!("it answered fewer than the {expected} messages sent"),
                        ))
                    });
                    let message = logged.next();
                    if let Ok(s) = &r {
                        sent += 1;
                        stored += u64::from(s.stored);
                        if let Some(m) = message {
                            log_sent(m, s);
                        }
                    }
                    r
                }
            })
            .collect();
        self.metrics.sent(Target::Account).increment(sent);
        if stored > 0 {
            self.metrics.stored.increment(stored);
        }
        results
    }

    /// Sends `message` to every live connection tagged `tag`.
    pub async fn send_to_tag(&self, tag: &str, message: Message) -> Result<Sent> {
        self.admit(&message)?;
        let sent = self.router.send_tag(tag, self.stamp(message)).await?;
        self.metrics.sent(Target::Tag).increment(1);
        debug!(
            id = sent.id,
            tag,
            delivered = sent.delivered,
            "sent to a tag"
        );
        Ok(sent)
    }

    /// Sends `message` to every live connection.
    pub async fn broadcast(&self, message: Message) -> Result<Sent> {
        self.admit(&message)?;
        let sent = self.router.broadcast(self.stamp(message)).await?;
        self.metrics.sent(Target::Everyone).increment(1);
        debug!(id = sent.id, delivered = sent.delivered, "broadcast");
        Ok(sent)
    }

    /// An operator's kick (the HTTP API, a handler, an event listener): sends every connection
    /// of `uid` the kick notice and closes them (see
    /// [`SessionManager::kick`](crate::engine::SessionManager::kick)); returns how many.
    pub async fn kick(&self, uid: &str) -> Result<usize> {
        let kicked = self.sessions.kick(uid).await?;
        self.metrics.kicks_by_operator.increment(kicked as u64);
        Ok(kicked)
    }
}
