//! The HTTP API: CIM's `POST /api/message/send`, a JSON API under `/api/v1`, and `GET /health`.
//!
//! Served through hyper, with limits on everything a client controls: a header-read timeout (a
//! client that trickles its headers, or idles on a keep-alive connection, is cut off), a body
//! timeout and a body limit ([`body`]), and a limit on the connections open at once.
//!
//! Beyond `max_connections` a new connection is answered `503` at once, without reading its
//! request, and closed: no task, no timer, the descriptor freed at once — hardly more work than
//! closing it unanswered, and the client learns why (an HTTP client reports a `503`, which it
//! may retry later, where a bare close reads as a broken server).

mod api;
mod body;
mod compat;
mod error;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cim_core::Hub;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use error::ApiError;

use body::BodyLimits;

use crate::auth::TokenSigner;

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
    /// Connections open at once.
    pub max_connections: usize,
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

async fn require_key(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        match presented_key(req.headers()) {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "API key required (X-API-Key header)",
                )
                .into_response();
            }
            Some(k) if !same_secret(k.as_bytes(), key.as_bytes()) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "wrong API key").into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The API's routes.
pub fn router(state: Arc<HttpState>, config: &HttpConfig) -> Router {
    let api = Router::new()
        .route("/api/message/send", post(compat::send))
        .route("/api/v1/messages", post(api::send))
        .route("/api/v1/messages/batch", post(api::send_batch))
        .route("/api/v1/broadcast", post(api::broadcast))
        .route("/api/v1/tags/{tag}/messages", post(api::send_to_tag))
        .route("/api/v1/sessions", get(api::online))
        .route(
            "/api/v1/accounts/{uid}/sessions",
            get(api::account_sessions).delete(api::kick),
        )
        .route(
            "/api/v1/accounts/{uid}/pending",
            get(api::pending_count).delete(api::pending_clear),
        )
        .route("/api/v1/tokens", post(api::mint_token))
        // The key is checked first: nobody reads a body for a caller without the key.
        .route_layer(middleware::from_fn_with_state(
            BodyLimits {
                max_body: config.max_body,
                timeout: config.body_timeout,
            },
            body::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ));
    Router::new()
        .route("/health", get(api::health))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body))
        .with_state(state)
}

/// How often refusals over `max_connections` are logged at most (with their count).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts refused connections and logs the count at most once per [`REFUSAL_LOG_EVERY`], so a
/// flood of connections writes a few log lines, not one per connection.
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, limit: usize) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            warn!(
                refused = self.unlogged,
                limit, "HTTP connections refused with 503: http.max_connections reached"
            );
            self.unlogged = 0;
            self.last = Some(now);
        }
    }
}

/// Answers a connection over the limit and closes it, without a task: what has arrived of its
/// request is read (so the close is less likely to reset the connection before the client
/// reads the answer), the answer is written to the empty send buffer, and the socket closed.
fn refuse_busy(stream: TcpStream, answer: &[u8]) {
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let mut arrived = [0u8; 4096];
    let _ = stream.read(&mut arrived);
    let _ = stream.write(answer);
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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let max_connections = config.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max_connections));
    let busy = error::error_response_bytes(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "too many HTTP connections: the limit is {max_connections} (http.max_connections)"
        ),
    );
    let mut refusals = RefusalLog {
        last: None,
        unlogged: 0,
    };
    let graceful = GracefulShutdown::new();
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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refuse_busy(stream, &busy);
            refusals.refused(max_connections);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended");
            }
            // Held until the connection ends.
            drop(slot);
        });
    }
    drop(socket);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        info!("http requests still running after the grace period");
    }
}
