//! The client of an HTTP API request: the connection's address (the PROXY header's client when
//! `http.proxy_protocol` is on), or, from a trusted proxy, the client its forwarding header
//! names; checked against `http.allow` and `http.deny` before anything else is done.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::Incoming;
use tower::Service;

use super::ApiError;
use crate::access::{Access, Refused};
use crate::refusal::{Reason, Refusals};

/// The client of a request, once the forwarding headers of a trusted proxy are read: a request
/// extension every handler may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The router of one connection: it gives every request the connection's address (the client
/// a PROXY header named, when there was one) as its [`ClientAddr`], which the router's
/// outermost layer replaces with the client a trusted proxy's forwarding header names.
#[derive(Clone)]
pub(crate) struct WithConn {
    pub(crate) router: Router,
    pub(crate) addr: SocketAddr,
}

impl Service<Request<Incoming>> for WithConn {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<Incoming>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.addr));
        self.router.call(req)
    }
}

/// What the client middleware holds.
#[derive(Clone)]
pub(crate) struct ClientCheck {
    pub(crate) access: Arc<Access>,
    pub(crate) refusals: Arc<Refusals>,
}

/// Finds the request's client and hands it on as [`ClientAddr`]; or the `403` refusal when
/// the lists deny it. (Called by the router's outermost layer, which also counts the answer.)
pub(crate) fn check_client(check: &ClientCheck, req: &mut Request) -> Result<(), ApiError> {
    // Until now the connection's address (see `WithConn`).
    let Some(ClientAddr(conn)) = req.extensions().get::<ClientAddr>().copied() else {
        return Ok(());
    };
    let client = check.access.forwarded_client(
        conn,
        req.headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    );
    if client == conn {
        return Ok(());
    }
    if let Err(why) = check.access.admits(client.ip()) {
        let refused = Refused::Denied { addr: client, why };
        check.refusals.refuse(Reason::Denied, conn, &refused);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not allowed here (http.allow, http.deny)",
                client.ip()
            ),
        ));
    }
    req.extensions_mut().insert(ClientAddr(client));
    Ok(())
}
