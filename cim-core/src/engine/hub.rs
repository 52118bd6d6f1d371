//! [`Hub`]: the services a server's connections share — sessions, the router, the store,
//! handlers, policies, ids — and the way other parts (the HTTP API, a custom handler) push
//! messages. Built by [`HubBuilder`](crate::engine::HubBuilder).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::engine::conn::{ConnIds, ConnectionHandle, Outbound};
use crate::engine::deadlines::Deadlines;
use crate::engine::handler::{EventContext, EventListener, RequestContext, RequestHandler};
use crate::engine::policy::{BindAuthenticator, KickPolicy};
use crate::engine::registry::Registry;
use crate::engine::router::{Router, Sent};
use crate::engine::services::Services;
use crate::engine::sessions::SessionManager;
use crate::engine::shared::SharedMessage;
use crate::engine::store::MessageStore;
use crate::error::{Error, Result};
use crate::message::{Message, ReplyBody, SentBody};
use crate::protocol::{code, key};
use crate::session::Session;

/// A server's connection engine: its [`Services`] (sessions, router, store, ids), the request
/// handlers by key, the policies and the event listeners, and the book-keeping of its live
/// connections. Build one with [`Hub::builder`](crate::engine::Hub::builder).
pub struct Hub {
    pub(crate) services: Services,
    pub(crate) handlers: HashMap<String, Arc<dyn RequestHandler>>,
    pub(crate) authenticator: Arc<dyn BindAuthenticator>,
    pub(crate) kick_policy: Arc<dyn KickPolicy>,
    /// The longest account id a bind may use, in bytes.
    pub(crate) max_uid_bytes: usize,
    pub(crate) listeners: Vec<Arc<dyn EventListener>>,
    /// Whether any listener wants [`EventListener::on_delivered`] (asked once, at build).
    pub(crate) wants_delivered: bool,
    pub(crate) conn_ids: ConnIds,
    /// Every live connection, for the shutdown.
    pub(crate) live: Registry,
    /// The heartbeat deadlines of every live connection.
    pub(crate) deadlines: Arc<Deadlines>,
    /// The parked connections, made at the first park (`None`: the node cannot park).
    #[cfg(unix)]
    pub(crate) parker: std::sync::OnceLock<Option<Arc<crate::engine::park::Parker>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.node())
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// The node's parked connections, made at the first park; `None` when the node cannot
    /// park (it could not make the set that watches them).
    #[cfg(unix)]
    pub(crate) fn parker(&self) -> Option<&Arc<crate::engine::park::Parker>> {
        self.parker
            .get_or_init(|| match crate::engine::park::Parker::start() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot park idle connections");
                    None
                }
            })
            .as_ref()
    }

    /// Connections parked now: idle, without a task (see
    /// [`ConnectionConfig::park_after`](crate::engine::ConnectionConfig::park_after)).
    pub fn parked_connections(&self) -> usize {
        #[cfg(unix)]
        if let Some(Some(p)) = self.parker.get() {
            return p.len();
        }
        0
    }

    /// The services handlers and listeners act through.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.services.node()
    }

    /// The session manager.
    pub fn sessions(&self) -> &Arc<dyn SessionManager> {
        self.services.sessions()
    }

    /// The router: how messages reach connections or the store.
    pub fn router(&self) -> &Arc<dyn Router> {
        self.services.router()
    }

    /// The offline message store, if there is one.
    pub fn store(&self) -> Option<&Arc<dyn MessageStore>> {
        self.services.store()
    }

    /// The handler registered for `key`.
    pub fn handler(&self, key: &str) -> Option<&Arc<dyn RequestHandler>> {
        self.handlers.get(key)
    }

    /// The bind authenticator.
    pub fn authenticator(&self) -> &Arc<dyn BindAuthenticator> {
        &self.authenticator
    }

    /// The multi-device kick policy, applied by the session manager at every bind.
    pub fn kick_policy(&self) -> &Arc<dyn KickPolicy> {
        &self.kick_policy
    }

    /// The event listeners.
    pub fn listeners(&self) -> &[Arc<dyn EventListener>] {
        &self.listeners
    }

    /// A new message id.
    pub fn next_message_id(&self) -> i64 {
        self.services.next_message_id()
    }

    /// Gives `message` an id and a timestamp where it has none, and wraps it for fan-out.
    pub fn stamp(&self, message: Message) -> Arc<SharedMessage> {
        self.services.stamp(message)
    }

    /// Sends `message` to every live connection of its receiver, or stores it: see
    /// [`Services::send`].
    pub async fn send(&self, message: Message) -> Result<Sent> {
        self.services.send(message).await
    }

    /// Sends each of `messages` in order: see [`Services::send_many`].
    pub async fn send_many(&self, messages: Vec<Message>) -> Vec<Result<Sent>> {
        self.services.send_many(messages).await
    }

    /// Sends `message` to every live connection tagged `tag`.
    pub async fn send_to_tag(&self, tag: &str, message: Message) -> Result<Sent> {
        self.services.send_to_tag(tag, message).await
    }

    /// Sends `message` to every live connection.
    pub async fn broadcast(&self, message: Message) -> Result<Sent> {
        self.services.broadcast(message).await
    }

    /// Hands a run of requests of one key (not binds) that arrived together to the handler of
    /// their key — one request to [`RequestHandler::handle`], more to
    /// [`RequestHandler::handle_many`] — and turns what it returns into the replies to send, one
    /// per request, in order: `404` for a key nobody handles, the code of an
    /// [`Error::Reply`](crate::Error::Reply), `500` (logged) for any other error; `None` when
    /// the handler sends no reply.
    pub(crate) async fn dispatch_many(
        &self,
        ctx: &RequestContext<'_>,
        bodies: Vec<SentBody>,
    ) -> Vec<Option<ReplyBody>> {
        let Some(request_key) = bodies.first().map(|b| b.key.clone()) else {
            return Vec::new();
        };
        if request_key == key::CLIENT_CLOSED {
            return bodies
                .iter()
                .map(|_| {
                    Some(
                        ReplyBody::new(key::CLIENT_CLOSED, code::FORBIDDEN)
                            .with_message("client_closed is reserved for the server"),
                    )
                })
                .collect();
        }
        let Some(handler) = self.handler(&request_key).cloned() else {
            debug!(key = %request_key, "no handler");
            let message = format!("no handler for key {request_key:?}");
            return bodies
                .iter()
                .map(|_| {
                    Some(
                        ReplyBody::new(request_key.clone(), code::NOT_FOUND).with_message(&message),
                    )
                })
                .collect();
        };
        let results = if bodies.len() == 1 {
            let mut bodies = bodies;
            match bodies.pop() {
                Some(body) => vec![handler.handle(ctx, body).await],
                None => Vec::new(),
            }
        } else {
            handler.handle_many(ctx, bodies).await
        };
        // The connection task runs a handler that asks for it inside the connection's span;
        // a failure of one that does not is logged in the span all the same.
        let in_span = handler.in_connection_span();
        results
            .into_iter()
            .map(|r| match r {
                Ok(reply) => reply,
                Err(Error::Reply { code, message }) => {
                    Some(ReplyBody::new(request_key.clone(), code).with_message(message))
                }
                Err(e) => {
                    let failed = || warn!(key = %request_key, error = %e, "handler failed");
                    if in_span {
                        failed();
                    } else {
                        ctx.span().in_scope(failed);
                    }
                    Some(
                        ReplyBody::new(request_key.clone(), code::SERVER_ERROR)
                            .with_message(e.to_string()),
                    )
                }
            })
            .collect()
    }

    /// Tells the listeners that want it which pushed messages of `items` were just written to
    /// `session`'s connection.
    pub(crate) fn delivered(&self, session: &Session, items: &[Outbound]) {
        if !self.wants_delivered {
            return;
        }
        let ctx = EventContext::new(&self.services);
        for item in items {
            if let Outbound::Message(m) = item {
                for l in &self.listeners {
                    l.on_delivered(&ctx, session, m.message());
                }
            }
        }
    }

    /// Registers the open-connections series of a listener, `cim_connections{listener,
    /// protocol}` (see [`metrics`](crate::engine::metrics)), so that it is there before the
    /// first connection; `name` is the listener's
    /// [`ConnectionConfig::protocol`](crate::engine::ConnectionConfig::protocol). A listener not
    /// registered is counted from its first connection, with its name as its protocol.
    pub fn register_listener(&self, name: &'static str, protocol: &'static str) {
        drop(self.services.metrics().listener(name, protocol));
    }

    /// Starts the session manager and the router (their readers and heartbeats, if they have
    /// any). The server calls this once, before it accepts connections.
    pub async fn start(&self) -> Result<()> {
        self.sessions().start().await?;
        self.router().start().await
    }

    /// Asks every connection (and every one accepted from now on) to write what is queued and
    /// close.
    pub fn shutdown(&self) {
        self.live.close_all();
    }

    /// Starts a drain: every connection accepted from now on is asked to close at once, and the
    /// live ones are returned (oldest first) for the caller to close at its own pace with
    /// [`ConnectionHandle::close`] — each writes what is queued first, and its session ends as
    /// in any close (what is still queued for it is kept by the router). A later
    /// [`shutdown`](Self::shutdown) closes whatever is left.
    pub fn begin_drain(&self) -> Vec<ConnectionHandle> {
        self.live.begin_drain()
    }

    /// Whether [`shutdown`](Self::shutdown) (or [`begin_drain`](Self::begin_drain)) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.live.is_closing()
    }

    /// Stops the router and the session manager and makes the store durable. The server calls
    /// this once, after the connections have drained. Every part is stopped even if one fails;
    /// the first failure is returned.
    pub async fn stop(&self) -> Result<()> {
        let router = self.router().shutdown().await;
        let sessions = self.sessions().shutdown().await;
        let store = match self.store() {
            Some(store) => store.flush().await,
            None => Ok(()),
        };
        router.and(sessions).and(store)
    }
}
