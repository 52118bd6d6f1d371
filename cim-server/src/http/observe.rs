//! What an operator watches: `GET /metrics` in Prometheus's text format, and `GET
//! /api/v1/stats`, the few totals the console's live figures need, as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cim_core::engine::metrics as engine;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use super::HttpState;
use super::error::ApiError;
use crate::metrics::{STORE_SIZE, dir_size, total};

/// The content type of Prometheus's text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn recorder(st: &HttpState) -> Result<&PrometheusHandle, ApiError> {
    st.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server records no metrics (another recorder is installed in its process)",
        )
    })
}

/// `GET /metrics`: every series of the process, the store's size measured now.
pub async fn metrics(State(st): State<Arc<HttpState>>) -> Result<Response, ApiError> {
    let handle = recorder(&st)?;
    if let Some(path) = st.store_path.clone() {
        // A walk of the store's directory: a few files, but the disk may be slow.
        let bytes = tokio::task::spawn_blocking(move || dir_size(&path))
            .await
            .unwrap_or(0);
        metrics::gauge!(STORE_SIZE).set(bytes as f64);
    }
    let text = handle.render();
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

/// `GET /api/v1/stats`: this node's open connections and message totals (the console turns two
/// of them into rates), and the sessions of every node.
pub async fn stats(State(st): State<Arc<HttpState>>) -> Result<Json<Value>, ApiError> {
    let text = recorder(&st)?.render();
    let sum = |name: &str| total(&text, name).unwrap_or(0.0).max(0.0) as u64;
    let sessions = st.hub.sessions().count().await?;
    Ok(Json(json!({
        "node": st.hub.node(),
        "connections": sum(engine::CONNECTIONS),
        "sessions": sessions,
        "messages": {
            "sent": sum(engine::MESSAGES_SENT),
            "delivered": sum(engine::MESSAGES_DELIVERED),
            "stored": sum(engine::MESSAGES_STORED),
        },
        "time_ms": cim_core::now_ms(),
    })))
}
