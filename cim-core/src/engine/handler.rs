//! Request handlers, routed by `SentBody.key`, and event listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use crate::engine::conn::{ConnId, ConnectionHandle};
use crate::engine::router::Sent;
use crate::engine::services::Services;
use crate::error::Result;
use crate::message::{Message, ReplyBody, SentBody};
use crate::session::Session;

/// What a handler knows about the request's connection, and the server it runs in.
pub struct RequestContext<'a> {
    /// The connection's id (unique on this node).
    pub conn: ConnId,
    /// Its session, when it is bound.
    pub session: Option<&'a Session>,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The connection's outbound queue, to send it frames besides the reply.
    pub handle: &'a ConnectionHandle,
    /// The server: sessions, the router, the store, ids. (Cheap to clone, so a handler can
    /// hand it to a task.)
    pub services: &'a Services,
}

impl RequestContext<'_> {
    /// The connection's span, `conn{id uid}`: what a handler logs inside it names the
    /// connection and its account. The engine enters it around every handler whose
    /// [`in_connection_span`](RequestHandler::in_connection_span) says so.
    pub fn span(&self) -> tracing::Span {
        connection_span(self.conn, self.session)
    }

    /// The bound session, or a `403` refusal for a connection that has not bound.
    pub fn bound(&self) -> Result<&Session> {
        self.session.ok_or_else(|| {
            crate::Error::reply(crate::protocol::code::FORBIDDEN, "bind before this request")
        })
    }
}

/// The span of connection `conn` (with its account, when bound): `conn{id uid}`.
pub(crate) fn connection_span(conn: ConnId, session: Option<&Session>) -> tracing::Span {
    let uid = session.map_or("", |s| s.uid.as_str());
    tracing::info_span!("conn", id = conn.0, uid)
}

/// Handles the requests of one key. Returns the reply to send (its key and timestamp are
/// filled in when empty), or `None` to send none. An [`Error::Reply`](crate::Error::Reply) is
/// answered with its code; any other error with `500`. Handlers never touch the socket.
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request.
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>>;

    /// Handles a run of requests of this handler's key that arrived together on one
    /// connection, in order; returns one result per request, in the same order. The default
    /// handles them one by one; the built-in `client_message` sends a run with one
    /// [`Router::send_many`](crate::engine::Router::send_many) (one round trip in a cluster).
    async fn handle_many(
        &self,
        ctx: &RequestContext<'_>,
        bodies: Vec<SentBody>,
    ) -> Vec<Result<Option<ReplyBody>>> {
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            out.push(self.handle(ctx, body).await);
        }
        out
    }

    /// Whether the engine runs this handler inside the connection's span
    /// ([`RequestContext::span`]), so that what it logs names the connection. Yes by default.
    /// Making the span costs about a microsecond with a formatting subscriber (some 3 400
    /// instructions), once per burst of requests: a handler of requests that arrive by the
    /// thousand and that logs little may say no, and enter `ctx.span()` itself where it logs.
    /// (The built-in `client_message` says no; a handler's error is logged in the span either
    /// way.)
    fn in_connection_span(&self) -> bool {
        true
    }
}

/// A shared handler is a handler, so one value can serve several keys or stay reachable.
#[async_trait]
impl<H: RequestHandler + ?Sized> RequestHandler for Arc<H> {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        (**self).handle(ctx, body).await
    }

    async fn handle_many(
        &self,
        ctx: &RequestContext<'_>,
        bodies: Vec<SentBody>,
    ) -> Vec<Result<Option<ReplyBody>>> {
        (**self).handle_many(ctx, bodies).await
    }

    fn in_connection_span(&self) -> bool {
        (**self).in_connection_span()
    }
}

/// What an event listener can act through: the server it runs in. Its methods start the work
/// on a task of its own, since listeners must return at once.
pub struct EventContext<'a> {
    services: &'a Services,
}

impl<'a> EventContext<'a> {
    pub(crate) fn new(services: &'a Services) -> Self {
        Self { services }
    }

    /// The server: sessions, the router, the store, ids.
    pub fn services(&self) -> &Services {
        self.services
    }

    /// Sends `message` (see [`Services::send`]) on a task of its own.
    pub fn send(&self, message: Message) -> JoinHandle<Result<Sent>> {
        let services = self.services.clone();
        tokio::spawn(async move { services.send(message).await })
    }

    /// Kicks every connection of `uid` (see [`Services::kick`]) on a task of its own.
    pub fn kick(&self, uid: &str) -> JoinHandle<Result<usize>> {
        let services = self.services.clone();
        let uid = uid.to_owned();
        tokio::spawn(async move { services.kick(&uid).await })
    }
}

/// Told about connection events. Methods run on the connection's task (`on_delivered`, for a
/// parked connection, on the node's parking thread, which writes for every parked connection):
/// keep them quick, never block, and hand slow work to [`EventContext::send`],
/// [`EventContext::kick`] or a task of your own.
pub trait EventListener: Send + Sync + 'static {
    /// A connection bound.
    fn on_bound(&self, _ctx: &EventContext<'_>, _session: &Session) {}
    /// A connection was closed because its account bound elsewhere.
    fn on_kicked(&self, _ctx: &EventContext<'_>, _session: &Session) {}
    /// A connection closed, bound or not, for `reason`.
    fn on_closed(
        &self,
        _ctx: &EventContext<'_>,
        _conn: ConnId,
        _session: Option<&Session>,
        _reason: &str,
    ) {
    }
    /// A pushed message was written to the socket of `session`'s connection. Called only when
    /// [`wants_delivered`](Self::wants_delivered) says so (it costs a call per message and
    /// connection).
    fn on_delivered(&self, _ctx: &EventContext<'_>, _session: &Session, _message: &Message) {}
    /// Whether this listener wants [`on_delivered`](Self::on_delivered); asked once, when the
    /// hub is built. Default `false`.
    fn wants_delivered(&self) -> bool {
        false
    }
}
