//! CIM's own HTTP API (docs/protocol.md section 7), so existing back-ends keep working.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cim_core::Message;
use serde_json::json;

use super::HttpState;

fn cim_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "code": status.as_u16(), "message": message.into() });
    (status, Json(body)).into_response()
}

/// `POST /api/message/send` with form or query fields `sender`, `receiver`, `action` (required),
/// `title`, `content`, `format`, `extra`, and the attachment `file`, `fileType`: answers
/// `{"code":200,"data":<message id>}`.
pub async fn send(
    State(st): State<Arc<HttpState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut fields: Vec<(String, String)> =
        match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
            Ok(f) => f,
            Err(e) => return cim_error(StatusCode::BAD_REQUEST, format!("bad query string: {e}")),
        };
    if !body.is_empty() {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(f) => fields.extend(f),
            Err(e) => return cim_error(StatusCode::BAD_REQUEST, format!("bad form body: {e}")),
        }
    }
    // Body fields come last, so they win over the query.
    let get = |name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for required in ["sender", "receiver", "action"] {
        if get(required).is_empty() {
            return cim_error(StatusCode::BAD_REQUEST, format!("{required} is required"));
        }
    }
    for account in ["sender", "receiver"] {
        if let Err(e) = cim_core::check_uid(&get(account), st.max_uid_bytes) {
            return cim_error(StatusCode::BAD_REQUEST, format!("{account} {e}"));
        }
    }
    let message = Message {
        sender: get("sender"),
        receiver: get("receiver"),
        action: get("action"),
        title: get("title"),
        content: get("content"),
        format: get("format"),
        extra: get("extra"),
        file: get("file"),
        file_type: get("fileType"),
        ..Message::default()
    };
    match st.hub.send(message).await {
        Ok(sent) => Json(json!({ "code": 200, "data": sent.id })).into_response(),
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}
