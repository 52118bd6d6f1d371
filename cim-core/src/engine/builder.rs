//! [`HubBuilder`]: composes a [`Hub`] from its parts, each with a default beside it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::builtin;
use crate::engine::conn::ConnIds;
use crate::engine::handler::{EventListener, RequestHandler};
use crate::engine::hub::Hub;
use crate::engine::ids::MessageIds;
use crate::engine::local::LocalSessionManager;
use crate::engine::local_router::LocalRouter;
use crate::engine::metrics::EngineMetrics;
use crate::engine::policy::{AllowAll, BindAuthenticator, CimKickPolicy, KickPolicy};
use crate::engine::registry::Registry;
use crate::engine::router::Router;
use crate::engine::services::{Admission, Services};
use crate::engine::sessions::SessionManager;
use crate::engine::store::MessageStore;

impl Hub {
    /// A builder with the defaults: in-memory sessions, the local router, no store, the built-in
    /// handlers, CIM's kick policy, every bind allowed.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }
}

/// Builds a [`Hub`].
pub struct HubBuilder {
    node: String,
    node_number: u8,
    ids: Option<MessageIds>,
    sessions: Option<Arc<dyn SessionManager>>,
    router: Option<Arc<dyn Router>>,
    store: Option<Arc<dyn MessageStore>>,
    handlers: HashMap<String, Arc<dyn RequestHandler>>,
    authenticator: Arc<dyn BindAuthenticator>,
    kick_policy: Arc<dyn KickPolicy>,
    listeners: Vec<Arc<dyn EventListener>>,
    admission: Option<Arc<dyn Admission>>,
    max_uid_bytes: usize,
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            node: "node-0".into(),
            node_number: 0,
            ids: None,
            sessions: None,
            router: None,
            store: None,
            handlers: builtin::defaults()
                .into_iter()
                .map(|(k, h)| (k.to_owned(), h))
                .collect(),
            authenticator: Arc::new(AllowAll),
            kick_policy: Arc::new(CimKickPolicy),
            listeners: Vec::new(),
            admission: None,
            max_uid_bytes: crate::DEFAULT_MAX_UID_BYTES,
        }
    }
}

impl HubBuilder {
    /// Names this node (shown in sessions) and numbers it (the low bits of every message id,
    /// so nodes of a cluster never give the same id; see [`MessageIds`]).
    pub fn node(mut self, name: impl Into<String>, number: u8) -> Self {
        self.node = name.into();
        self.node_number = number;
        self
    }

    /// Gives message ids from `ids` instead of a [`MessageIds::new`] for the node's number: one
    /// opened with a high-water mark ([`MessageIds::open`]), so that ids keep increasing across
    /// restarts. Its node number is the one it was made with.
    pub fn message_ids(mut self, ids: MessageIds) -> Self {
        self.ids = Some(ids);
        self
    }

    /// Uses `sessions` instead of a [`LocalSessionManager`].
    pub fn sessions(mut self, sessions: Arc<dyn SessionManager>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Routes messages with `router` instead of a [`LocalRouter`] over the session manager and
    /// the store (a cluster brings its own).
    pub fn router(mut self, router: Arc<dyn Router>) -> Self {
        self.router = Some(router);
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

    /// Decides with `policy` what a bind does to the account's other connections (default:
    /// [`CimKickPolicy`]). Whichever session manager is in use applies it.
    pub fn kick_policy(mut self, policy: Arc<dyn KickPolicy>) -> Self {
        self.kick_policy = policy;
        self
    }

    /// Checks every message with `admission` before it is routed or stored (a server refuses
    /// what its listeners could not carry; default: no check).
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// The longest account id a bind may use, in bytes (default 128; see
    /// [`check_uid`](crate::check_uid)).
    pub fn max_uid_bytes(mut self, max: usize) -> Self {
        self.max_uid_bytes = max;
        self
    }

    /// Adds an event listener.
    pub fn listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// The hub. Its series are registered with the metrics recorder installed now (see
    /// [`metrics`](crate::engine::metrics)).
    pub fn build(self) -> Hub {
        let sessions = self
            .sessions
            .unwrap_or_else(|| Arc::new(LocalSessionManager::new()));
        let router = self.router.unwrap_or_else(|| {
            Arc::new(LocalRouter::new(Arc::clone(&sessions), self.store.clone()))
        });
        let wants_delivered = self.listeners.iter().any(|l| l.wants_delivered());
        Hub {
            services: Services::new(
                self.node,
                sessions,
                router,
                self.store,
                self.ids
                    .unwrap_or_else(|| MessageIds::new(self.node_number)),
                self.admission,
                Arc::new(EngineMetrics::register()),
            ),
            max_uid_bytes: self.max_uid_bytes,
            handlers: self.handlers,
            authenticator: self.authenticator,
            kick_policy: self.kick_policy,
            listeners: self.listeners,
            wants_delivered,
            conn_ids: ConnIds::default(),
            live: Registry::default(),
            deadlines: Arc::default(),
            #[cfg(unix)]
            parker: std::sync::OnceLock::new(),
        }
    }
}
