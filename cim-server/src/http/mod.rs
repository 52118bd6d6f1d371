//! The HTTP API: CIM's `POST /api/message/send`, a JSON API under `/api/v1`, and `GET /health`.
//! Served through hyper with a header-read timeout (a client that trickles its headers, or
//! idles on a keep-alive connection, is cut off) and a request body limit.

mod api;
mod compat;
mod error;

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

pub use compat::{FormError, parse_send_form};
pub use error::ApiError;

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
}

/// Settings of the HTTP listener.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body.
    pub max_body: usize,
    /// Time allowed for a request's headers (and an idle keep-alive connection).
    pub header_timeout: Duration,
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
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended");
            }
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
