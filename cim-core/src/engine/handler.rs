//! Request handlers, routed by `SentBody.key`, and event listeners.

use std::net::SocketAddr;

use async_trait::async_trait;

use crate::engine::conn::{ConnId, ConnectionHandle};
use crate::engine::hub::Hub;
use crate::error::Result;
use crate::message::{ReplyBody, SentBody};
use crate::session::Session;

/// What a handler knows about the request's connection, and the server it runs in.
pub struct RequestContext<'a> {
    /// The connection's id.
    pub conn: ConnId,
    /// Its session, when it is bound.
    pub session: Option<&'a Session>,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The connection's outbound queue, to send it frames besides the reply.
    pub handle: &'a ConnectionHandle,
    /// The server: sessions, pushes, ids.
    pub hub: &'a Hub,
}

impl RequestContext<'_> {
    /// The bound session, or a `403` refusal for a connection that has not bound.
    pub fn bound(&self) -> Result<&Session> {
        self.session.ok_or_else(|| {
            crate::Error::reply(crate::protocol::code::FORBIDDEN, "bind before this request")
        })
    }
}

/// Handles the requests of one key. Returns the reply to send (its key and timestamp are
/// filled in when empty), or `None` to send none. An [`Error::Reply`](crate::Error::Reply) is
/// answered with its code; any other error with `500`. Handlers never touch the socket.
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request.
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>>;
}

/// Told about connection events. Methods run on the connection's task: keep them quick (hand
/// slow work to a task of your own).
pub trait EventListener: Send + Sync + 'static {
    /// A connection bound.
    fn on_bound(&self, _session: &Session) {}
    /// A connection was closed because its account bound elsewhere.
    fn on_kicked(&self, _session: &Session) {}
    /// A connection closed, bound or not, for `reason`.
    fn on_closed(&self, _conn: ConnId, _session: Option<&Session>, _reason: &str) {}
}

/// A shared handler is a handler, so one value can serve several keys or stay reachable.
#[async_trait]
impl<H: RequestHandler + ?Sized> RequestHandler for std::sync::Arc<H> {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        (**self).handle(ctx, body).await
    }
}
