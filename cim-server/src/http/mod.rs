//! The HTTP API: CIM's `POST /api/message/send`, a JSON API under `/api/v1`, `GET /health`,
//! `GET /metrics` (Prometheus's text format) and the admin console at `/console`.
//!
//! Served through hyper, with limits on everything a client controls: a header-read timeout (a
//! client that trickles its headers, or idles on a keep-alive connection, is cut off), a body
//! timeout and a body limit ([`body`]), a limit on the request head and its header fields
//! (checked before hyper parses it, [`framing`]), and a limit on the connections open at once.
//! Every error answer, whoever produces it, is JSON `{"error": reason, "status": code}`.
//!
//! Beyond `max_connections` a new connection is answered `503` at once, without reading its
//! request, and closed: no task, no timer, the descriptor freed at once — hardly more work than
//! closing it unanswered, and the client learns why (an HTTP client reports a `503`, which it
//! may retry later, where a bare close reads as a broken server).

mod api;
mod body;
mod client;
mod compat;
mod console;
mod error;
mod framed_io;
mod framing;
mod observe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cim_core::Hub;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::{debug, info};

pub use client::ClientAddr;
pub use compat::{FormError, parse_send_form};
pub use error::ApiError;

use body::BodyLimits;
use framed_io::FramedIo;
use framing::HeadLimits;

use crate::access::{self, Access, Refused};
use crate::auth::TokenSigner;
use crate::metrics::HttpMetrics;
use crate::refusal::{Reason, RefusalLog, Refusals, refuse_busy};
use client::{ClientCheck, WithConn};

/// What the HTTP handlers share.
pub struct HttpState {
    /// The server's hub.
    pub hub: Arc<Hub>,
    /// Required API key, if any.
    pub api_key: Option<String>,
    /// Token minting, if a secret is configured.
    pub signer: Option<TokenSigner>,
    /// Default token lifetime.
    pub token_ttl_secs: u64,
    /// Messages per batch at most.
    pub max_batch: usize,
    /// Longest account id, in bytes.
    pub max_uid_bytes: usize,
    /// The process's metrics, rendered by `GET /metrics` and summed by `GET /api/v1/stats`;
    /// `None`: both answer `404`.
    pub metrics: Option<PrometheusHandle>,
    /// A key `GET /metrics` takes besides the API key.
    pub metrics_key: Option<String>,
    /// Whether `GET /metrics` answers a client connecting from a loopback address without a
    /// key.
    pub metrics_open_on_loopback: bool,
    /// The store's directory, whose size `GET /metrics` reports; `None` for a store in memory.
    pub store_path: Option<PathBuf>,
    /// Whether to serve the admin console at `/console`.
    pub console: bool,
    /// Which node a client should connect to.
    pub dispatch: Arc<dyn cim_core::engine::Dispatch>,
    /// Flipped by `POST /api/v1/admin/drain`.
    pub drain: crate::drain::DrainSwitch,
}

/// Settings of the HTTP listener.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed for a request's headers (and an idle keep-alive connection).
    pub header_timeout: Duration,
    /// Time allowed for a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Largest request head (request line and header fields), in bytes.
    pub max_head: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Who may connect, and where the client's address comes from (a PROXY header, forwarding
    /// headers).
    pub access: Access,
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The answer to a request without the API key, when one is set.
fn key_refusal(st: &HttpState, headers: &axum::http::HeaderMap) -> Option<Response> {
    let key = st.api_key.as_ref()?;
    match presented_key(headers) {
        None => Some(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "API key required (X-API-Key header)",
            )
            .into_response(),
        ),
        Some(k) if !same_secret(k.as_bytes(), key.as_bytes()) => {
            Some(ApiError::new(StatusCode::UNAUTHORIZED, "wrong API key").into_response())
        }
        Some(_) => None,
    }
}

/// The check of `GET /metrics`: the API key or the metrics key (open when neither is set), or
/// no key at all for a client on a loopback address with `http.metrics_open_on_loopback`.
async fn metrics_access(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    // The client, not the connection: behind a proxy on this host every connection is from
    // loopback, but the client a trusted proxy names is who asks.
    let from_loopback = req
        .extensions()
        .get::<ClientAddr>()
        .is_some_and(|ClientAddr(client)| client.ip().to_canonical().is_loopback());
    if st.metrics_open_on_loopback && from_loopback {
        return next.run(req).await;
    }
    let keys = [st.api_key.as_deref(), st.metrics_key.as_deref()];
    if keys.iter().all(Option::is_none) {
        return next.run(req).await;
    }
    match presented_key(req.headers()) {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "API key or metrics key required (X-API-Key header or Authorization: Bearer)",
        )
        .into_response(),
        Some(k)
            if keys
                .iter()
                .flatten()
                .any(|key| same_secret(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong key").into_response(),
    }
}

/// The routes, as the `route` label of `cim_http_requests_total` names them (anything else is
/// `other`).
mod routes {
    pub const COMPAT_SEND: &str = "/api/message/send";
    pub const MESSAGES: &str = "/api/v1/messages";
    pub const BATCH: &str = "/api/v1/messages/batch";
    pub const BROADCAST: &str = "/api/v1/broadcast";
    pub const TAG_MESSAGES: &str = "/api/v1/tags/{tag}/messages";
    pub const SESSIONS: &str = "/api/v1/sessions";
    pub const ACCOUNT_SESSIONS: &str = "/api/v1/accounts/{uid}/sessions";
    pub const PENDING: &str = "/api/v1/accounts/{uid}/pending";
    pub const TOKENS: &str = "/api/v1/tokens";
    pub const DISPATCH: &str = "/api/v1/dispatch";
    pub const DRAIN: &str = "/api/v1/drain";
    pub const ADMIN_DRAIN: &str = "/api/v1/admin/drain";
    pub const STATS: &str = "/api/v1/stats";
    pub const HEALTH: &str = "/health";
    pub const METRICS: &str = "/metrics";
    pub const CONSOLE: &str = "/console";
    pub const CONSOLE_SLASH: &str = "/console/";
    pub const CONSOLE_SCRIPT: &str = "/console/console.js";
    pub const CONSOLE_STYLE: &str = "/console/console.css";

    /// The routes open to all: no API key, and their bodies are not read ahead (they take
    /// none). `GET /metrics` has its own check. Every other route is gated: a new route is
    /// behind the key unless it is named here.
    pub const OPEN: &[&str] = &[
        HEALTH,
        DISPATCH,
        METRICS,
        CONSOLE,
        CONSOLE_SLASH,
        CONSOLE_SCRIPT,
        CONSOLE_STYLE,
    ];

    /// Whether a request of `route` (`None`: no route matched) is held to the API key and has
    /// its body read ahead.
    pub fn gated(route: Option<&str>) -> bool {
        route.is_some_and(|r| !OPEN.contains(&r))
    }

    pub const ALL: &[&str] = &[
        COMPAT_SEND,
        MESSAGES,
        BATCH,
        BROADCAST,
        TAG_MESSAGES,
        SESSIONS,
        ACCOUNT_SESSIONS,
        PENDING,
        TOKENS,
        DISPATCH,
        DRAIN,
        ADMIN_DRAIN,
        STATS,
        HEALTH,
        METRICS,
        CONSOLE,
        CONSOLE_SLASH,
        CONSOLE_SCRIPT,
        CONSOLE_STYLE,
    ];
}

/// What the router's one layer holds.
#[derive(Clone)]
struct Finish {
    state: Arc<HttpState>,
    metrics: Arc<HttpMetrics>,
    client: ClientCheck,
    limits: BodyLimits,
}

/// Every request of the router, in one layer (each layer costs every request a clone of the
/// services below it):
/// 1. its client is found and checked against the access lists ([`client::check_client`]);
/// 2. on every route but the open ones ([`routes::OPEN`]), the API key is checked, then the
///    body is read whole within its limits ([`body::read_body`]) — nobody reads a body for a
///    caller without the key;
/// 3. the answer is given its JSON body when it is an error without one
///    ([`error::json_errors`]), then counted in `cim_http_requests_total`.
async fn finish(State(f): State<Finish>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str);
    let answer = match client::check_client(&f.client, &mut req) {
        Err(refusal) => refusal.into_response(),
        Ok(()) if !routes::gated(route) => next.run(req).await,
        Ok(()) => match key_refusal(&f.state, req.headers()) {
            Some(refusal) => refusal,
            None => match body::read_body(&f.limits, req).await {
                Ok(req) => next.run(req).await,
                Err(refusal) => refusal,
            },
        },
    };
    let res = error::json_errors(&method, answer).await;
    f.metrics
        .request(method.as_str(), route, res.status().as_u16());
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The API's routes.
pub fn router(state: Arc<HttpState>, config: &HttpConfig) -> Router {
    let api = Router::new()
        .route(routes::COMPAT_SEND, post(compat::send))
        .route(routes::MESSAGES, post(api::send))
        .route(routes::BATCH, post(api::send_batch))
        .route(routes::BROADCAST, post(api::broadcast))
        .route(routes::TAG_MESSAGES, post(api::send_to_tag))
        .route(routes::SESSIONS, get(api::online))
        .route(
            routes::ACCOUNT_SESSIONS,
            get(api::account_sessions).delete(api::kick),
        )
        .route(
            routes::PENDING,
            get(api::pending_count).delete(api::pending_clear),
        )
        .route(routes::TOKENS, post(api::mint_token))
        .route(routes::DRAIN, post(api::drain))
        .route(routes::ADMIN_DRAIN, post(api::admin_drain))
        .route(routes::STATS, get(observe::stats));
    let metrics = Router::new()
        .route(routes::METRICS, get(observe::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics_access,
        ));
    // Open to all, as /health is: clients ask dispatch, and an API key is not theirs to hold.
    let mut open = Router::new()
        .route(routes::HEALTH, get(api::health))
        .route(routes::DISPATCH, get(api::dispatch));
    if state.console {
        open = open
            .route(routes::CONSOLE, get(console::page))
            .route(routes::CONSOLE_SLASH, get(console::page))
            .route(routes::CONSOLE_SCRIPT, get(console::script))
            .route(routes::CONSOLE_STYLE, get(console::style));
    }
    open.merge(api)
        .merge(metrics)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body))
        .layer(middleware::from_fn_with_state(
            Finish {
                state: Arc::clone(&state),
                metrics: Arc::new(HttpMetrics::new(routes::ALL)),
                limits: BodyLimits {
                    max_body: config.max_body,
                    timeout: config.body_timeout,
                },
                client: ClientCheck {
                    access: Arc::new(config.access.clone()),
                    refusals: Arc::new(Refusals::new("http")),
                },
            },
            finish,
        ))
        .with_state(state)
}

type HttpConnection = http1::Connection<TokioIo<FramedIo>, TowerToHyperService<WithConn>>;

/// Drives one connection to its end; shuts it down gracefully when its framer refuses a head
/// or the server stops. Holds `_slot` (of `max_connections`) until then.
async fn drive(
    conn: HttpConnection,
    refused: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    tokio::pin!(conn);
    let mut refused = Some(refused);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "http connection ended");
                }
                return;
            }
            fired = async {
                match refused.as_mut() {
                    Some(rx) => rx.await.is_ok(),
                    None => std::future::pending().await,
                }
            }, if !closing => {
                refused = None;
                if fired {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// What every connection of the HTTP listener starts with.
struct Accepting {
    http: http1::Builder,
    router: Router,
    limits: HeadLimits,
    header_timeout: Duration,
    access: Access,
    refusals: Refusals,
}

impl Accepting {
    /// Serves the connection `stream` of `client` (holding `slot`) until it ends.
    fn start(
        &self,
        stream: tokio::net::TcpStream,
        client: SocketAddr,
        stop: watch::Receiver<bool>,
        slot: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (io, refused) = FramedIo::new(stream, self.limits, self.header_timeout);
        let service = TowerToHyperService::new(WithConn {
            router: self.router.clone(),
            addr: client,
        });
        let conn = self.http.serve_connection(TokioIo::new(io), service);
        drive(conn, refused, stop, client, slot)
    }
}

/// Reads the PROXY header of a connection (within the header timeout), checks the client it
/// names, and serves the connection.
async fn start_proxied(
    acc: Arc<Accepting>,
    (mut stream, peer): (tokio::net::TcpStream, SocketAddr),
    stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
    denied: Arc<bytes::Bytes>,
) {
    let read = access::client_of(&mut stream, peer, &acc.access);
    let refused = match tokio::time::timeout(acc.header_timeout, read).await {
        Ok(Ok(client)) => {
            if client != peer {
                debug!(%peer, %client, "client address from the PROXY header");
            }
            return acc.start(stream, client, stop, slot).await;
        }
        Ok(Err(refused)) => refused,
        Err(_) if acc.access.trusts(peer.ip()) => {
            let why = "PROXY header not whole within http.header_timeout_ms";
            return acc.refusals.refuse(Reason::ProxyHeader, peer, &why);
        }
        Err(_) => return,
    };
    let reason = match &refused {
        Refused::Denied { .. } => Reason::Denied,
        Refused::Untrusted(_) => Reason::UntrustedProxy,
        Refused::Header(_) => Reason::ProxyHeader,
        Refused::Gone(_) => return,
    };
    acc.refusals.refuse(reason, peer, &refused);
    let answer: &[u8] = if reason == Reason::Denied {
        &denied
    } else {
        b""
    };
    refuse_busy(stream, answer);
}

/// Serves `router` on `socket` until `stop` turns true, then lets requests in flight finish
/// (for up to `grace`).
pub async fn serve(
    socket: TcpListener,
    router: Router,
    config: HttpConfig,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers)
        .keep_alive(true);
    let limits = HeadLimits {
        max_head: config.max_head,
        max_headers: config.max_headers,
    };
    let max_connections = config.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max_connections));
    let busy = error::error_response_bytes(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "too many HTTP connections: the limit is {max_connections} (http.max_connections)"
        ),
    );
    let denied = Arc::new(error::error_response_bytes(
        StatusCode::FORBIDDEN,
        "this address is not allowed here (http.allow, http.deny)",
    ));
    let mut refusals = RefusalLog::new(
        "HTTP connections refused with 503: http.max_connections reached",
        max_connections,
    );
    let acc = Arc::new(Accepting {
        http,
        router,
        limits,
        header_timeout: config.header_timeout,
        access: config.access,
        refusals: Refusals::new("http"),
    });
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            res = socket.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        if !acc.access.proxy_protocol
            && let Err(why) = acc.access.admits(peer.ip())
        {
            let refused = Refused::Denied { addr: peer, why };
            acc.refusals.refuse(Reason::Denied, peer, &refused);
            refuse_busy(stream, &denied);
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Counted before the close (a client that sees it finds the refusal counted).
            acc.refusals.count(Reason::MaxConnections);
            refuse_busy(stream, &busy);
            refusals.refused();
            continue;
        };
        if acc.access.proxy_protocol {
            let (acc, denied) = (Arc::clone(&acc), Arc::clone(&denied));
            tokio::spawn(start_proxied(
                acc,
                (stream, peer),
                stop.clone(),
                slot,
                denied,
            ));
        } else {
            tokio::spawn(acc.start(stream, peer, stop.clone(), slot));
        }
    }
    drop(socket);
    // Every connection holds a slot until it ends: all slots back means all ended.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        info!("http requests still running after the grace period");
    }
}
