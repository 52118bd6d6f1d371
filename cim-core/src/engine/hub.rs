//! [`Hub`]: the services a server's connections share — sessions, handlers, policies, ids —
//! and the way other parts (the HTTP API, a custom handler) push messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::engine::builtin::{ClientAck, ClientMessage, GetOfflineMessages, RemoveTag, SetTag};
use crate::engine::conn::ConnIds;
use crate::engine::deadlines::Deadlines;
use crate::engine::handler::{EventListener, RequestHandler};
use crate::engine::local::LocalSessionManager;
use crate::engine::policy::{AllowAll, BindAuthenticator};
use crate::engine::registry::Registry;
use crate::engine::sessions::{Delivery, SessionManager};
use crate::engine::shared::SharedMessage;
use crate::engine::store::MessageStore;
use crate::error::Result;
use crate::message::Message;
use crate::protocol::key;

/// Message ids: milliseconds since the Unix epoch in the high bits, a 10-bit node number and a
/// 12-bit counter below, strictly increasing within a node even if the clock steps back.
#[derive(Debug)]
pub struct MessageIds {
    last: AtomicI64,
    node: i64,
}

impl MessageIds {
    /// Ids for node number `node` (its low 10 bits are used).
    pub fn new(node: u16) -> Self {
        Self {
            last: AtomicI64::new(0),
            node: i64::from(node & 0x3ff),
        }
    }

    /// The next id.
    pub fn next(&self) -> i64 {
        let floor = (crate::now_ms() << 22) | (self.node << 12);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            // Within one millisecond (or after a clock step back) count up from the last id;
            // the node bits are kept by stepping over them.
            let mut next = floor.max(prev + 1);
            if (next >> 12) & 0x3ff != self.node {
                next = ((next >> 22) + 1) << 22 | (self.node << 12);
            }
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

/// A message that was sent: its id and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message's id.
    pub id: i64,
    /// Where it went.
    pub delivery: Delivery,
    /// Whether it was stored for later delivery (no live connection took it, or the account
    /// acknowledges messages).
    pub stored: bool,
}

/// Shared services of a server. Build one with [`Hub::builder`].
pub struct Hub {
    node: String,
    sessions: Arc<dyn SessionManager>,
    store: Option<Arc<dyn MessageStore>>,
    handlers: HashMap<String, Arc<dyn RequestHandler>>,
    authenticator: Arc<dyn BindAuthenticator>,
    listeners: Vec<Arc<dyn EventListener>>,
    ids: MessageIds,
    pub(crate) conn_ids: ConnIds,
    /// Every live connection, for the shutdown.
    pub(crate) live: Registry,
    /// The heartbeat deadlines of every live connection.
    pub(crate) deadlines: Arc<Deadlines>,
    /// Per-account send locks (striped): a send to a stored account holds its lock from the
    /// push to the append, so a connection that reads the store's last sequence under the same
    /// lock knows that every message refused before is in the store.
    account_locks: Box<[tokio::sync::Mutex<()>]>,
    lock_hasher: std::hash::RandomState,
}

/// Number of stripes of [`Hub`]'s account locks.
const ACCOUNT_LOCK_STRIPES: usize = 256;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.node)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A builder with the defaults: local sessions, the built-in handlers, every bind allowed.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The session manager.
    pub fn sessions(&self) -> &Arc<dyn SessionManager> {
        &self.sessions
    }

    /// The offline message store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn MessageStore>> {
        self.store.as_ref()
    }

    /// The handler registered for `key`.
    pub fn handler(&self, key: &str) -> Option<&Arc<dyn RequestHandler>> {
        self.handlers.get(key)
    }

    /// The bind authenticator.
    pub fn authenticator(&self) -> &Arc<dyn BindAuthenticator> {
        &self.authenticator
    }

    /// The event listeners.
    pub fn listeners(&self) -> &[Arc<dyn EventListener>] {
        &self.listeners
    }

    /// A new message id.
    pub fn next_message_id(&self) -> i64 {
        self.ids.next()
    }

    /// Gives `message` an id and a timestamp where it has none.
    fn stamp(&self, message: &mut Message) {
        if message.id == 0 {
            message.id = self.ids.next();
        }
        if message.timestamp == 0 {
            message.timestamp = crate::now_ms();
        }
    }

    /// Sends `message` to every live connection of its receiver. With a store: when no live
    /// connection takes it (none, or their queues are full) it is stored for the next bind; when
    /// the account acknowledges messages it is stored first and kept until acknowledged. Returns
    /// once the message is queued to a connection or stored as durably as the store's policy
    /// says; a store failure is an [`Error::Unavailable`](crate::Error::Unavailable).
    pub async fn send(&self, mut message: Message) -> Result<Sent> {
        self.stamp(&mut message);
        let id = message.id;
        let Some(store) = &self.store else {
            let delivery = self
                .sessions
                .push(Arc::new(SharedMessage::new(message)))
                .await?;
            return Ok(Sent {
                id,
                delivery,
                stored: false,
            });
        };
        let shared = Arc::new(SharedMessage::new(message));
        let uid = shared.message().receiver.as_str();
        let _serialised = self.lock_account(uid).await;
        if let Some(delivery) = self
            .sessions
            .push_unless_receipts(Arc::clone(&shared))
            .await?
        {
            let stored = delivery.delivered == 0;
            if stored {
                store.append(uid, shared.message()).await?;
            }
            return Ok(Sent {
                id,
                delivery,
                stored,
            });
        }
        // The account acknowledges messages: stored first, kept until acknowledged.
        store.append(uid, shared.message()).await?;
        let delivery = self.sessions.push(Arc::clone(&shared)).await?;
        Ok(Sent {
            id,
            delivery,
            stored: true,
        })
    }

    /// Sends `message` to every live connection tagged `tag`.
    pub async fn send_to_tag(&self, tag: &str, mut message: Message) -> Result<Sent> {
        self.stamp(&mut message);
        let id = message.id;
        let delivery = self
            .sessions
            .push_tag(tag, Arc::new(SharedMessage::new(message)))
            .await?;
        Ok(Sent {
            id,
            delivery,
            stored: false,
        })
    }

    /// Sends `message` to every live connection.
    pub async fn broadcast(&self, mut message: Message) -> Result<Sent> {
        self.stamp(&mut message);
        let id = message.id;
        let delivery = self
            .sessions
            .broadcast(Arc::new(SharedMessage::new(message)))
            .await?;
        Ok(Sent {
            id,
            delivery,
            stored: false,
        })
    }

    /// Holds `uid`'s send lock (see the field's note) until the guard drops.
    #[allow(clippy::indexing_slicing)] // reduced modulo the (non-zero) length
    pub(crate) async fn lock_account(&self, uid: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let i = (self.lock_hasher.hash_one(uid) as usize) % self.account_locks.len();
        self.account_locks[i].lock().await
    }

    /// Asks every connection (and every one accepted from now on) to write what is queued and
    /// close.
    pub fn shutdown(&self) {
        self.live.close_all();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.live.is_closing()
    }
}

/// Builds a [`Hub`].
pub struct HubBuilder {
    node: String,
    node_number: u16,
    sessions: Option<Arc<dyn SessionManager>>,
    store: Option<Arc<dyn MessageStore>>,
    handlers: HashMap<String, Arc<dyn RequestHandler>>,
    authenticator: Arc<dyn BindAuthenticator>,
    listeners: Vec<Arc<dyn EventListener>>,
}

impl Default for HubBuilder {
    fn default() -> Self {
        let mut handlers: HashMap<String, Arc<dyn RequestHandler>> = HashMap::new();
        handlers.insert(key::CLIENT_MESSAGE.into(), Arc::new(ClientMessage));
        handlers.insert(key::CLIENT_SET_TAG.into(), Arc::new(SetTag));
        handlers.insert(key::CLIENT_REMOVE_TAG.into(), Arc::new(RemoveTag));
        handlers.insert(key::CLIENT_ACK.into(), Arc::new(ClientAck));
        handlers.insert(
            key::CLIENT_GET_OFFLINE_MESSAGE.into(),
            Arc::new(GetOfflineMessages),
        );
        Self {
            node: "node-0".into(),
            node_number: 0,
            sessions: None,
            store: None,
            handlers,
            authenticator: Arc::new(AllowAll),
            listeners: Vec::new(),
        }
    }
}

impl HubBuilder {
    /// Names this node (shown in sessions) and numbers it (in message ids; 0 to 1023).
    pub fn node(mut self, name: impl Into<String>, number: u16) -> Self {
        self.node = name.into();
        self.node_number = number;
        self
    }

    /// Uses `sessions` instead of a [`LocalSessionManager`].
    pub fn sessions(mut self, sessions: Arc<dyn SessionManager>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Keeps messages for offline accounts in `store` (default: none; messages to an account
    /// with no live connection are then dropped, as in CIM).
    pub fn store(mut self, store: Arc<dyn MessageStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Routes requests with `key` to `handler`, replacing any handler of that key (the
    /// built-in ones included). `client_bind` is handled by the engine itself; a handler
    /// registered for `client_closed` is called on every disconnect.
    pub fn handler(mut self, key: impl Into<String>, handler: impl RequestHandler) -> Self {
        self.handlers.insert(key.into(), Arc::new(handler));
        self
    }

    /// Checks binds with `auth`.
    pub fn authenticator(mut self, auth: Arc<dyn BindAuthenticator>) -> Self {
        self.authenticator = auth;
        self
    }

    /// Adds an event listener.
    pub fn listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// The hub.
    pub fn build(self) -> Hub {
        Hub {
            node: self.node,
            sessions: self
                .sessions
                .unwrap_or_else(|| Arc::new(LocalSessionManager::new())),
            store: self.store,
            handlers: self.handlers,
            authenticator: self.authenticator,
            listeners: self.listeners,
            ids: MessageIds::new(self.node_number),
            conn_ids: ConnIds::default(),
            live: Registry::default(),
            deadlines: Arc::default(),
            account_locks: (0..ACCOUNT_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            lock_hasher: std::hash::RandomState::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_keep_the_node() {
        let ids = MessageIds::new(5);
        let mut prev = 0;
        for _ in 0..100_000 {
            let id = ids.next();
            assert!(id > prev);
            assert_eq!((id >> 12) & 0x3ff, 5);
            prev = id;
        }
    }
}
