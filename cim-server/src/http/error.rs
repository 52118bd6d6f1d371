//! [`ApiError`]: every failure of the HTTP API as JSON `{"error": reason, "status": code}`
//! with a fitting status — from the handlers, from axum's own refusals ([`json_errors`]) and
//! from the connection itself ([`error_response_bytes`]).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A failed API call.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Why, for the caller.
    pub reason: String,
}

impl ApiError {
    /// An error with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// A `400 Bad Request`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }
}

fn error_body(status: StatusCode, reason: &str) -> serde_json::Value {
    serde_json::json!({ "error": reason, "status": status.as_u16() })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(error_body(self.status, &self.reason))).into_response()
    }
}

/// A whole HTTP/1.1 error response that closes the connection, for answers written straight
/// to a socket (a refused request head, a connection over the limit).
pub fn error_response_bytes(status: StatusCode, reason: &str) -> Bytes {
    let body = error_body(status, reason).to_string();
    Bytes::from(format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len(),
    ))
}

/// Longest text of an axum refusal kept as the reason.
const MAX_REASON: usize = 1024;

/// The answer `res` to a request of `method`, but an error response that is not JSON yet —
/// axum's own, such as `405` for a method a route does not take, or a path it cannot decode —
/// gets the JSON error body, with its text (or the status's name) as the reason. Its other
/// headers (`Allow`) are kept. Every answer of the router goes through it (the middleware that
/// counts requests calls it).
pub(super) async fn json_errors(method: &Method, res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_REASON)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .unwrap_or_default();
    let reason = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        format!("method {method} is not allowed here (allowed: {allowed})")
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text.trim().to_owned()
    };
    let body = error_body(status, &reason).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

impl From<cim_core::Error> for ApiError {
    fn from(e: cim_core::Error) -> Self {
        use cim_core::Error as E;
        match e {
            // A refusal whose code is an HTTP status answers with it, and its reason is the
            // message alone; one of another code answers 400 and keeps the code in the reason.
            E::Reply { code, message } => {
                match code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                {
                    Some(status) => ApiError::new(status, message),
                    None => ApiError::new(StatusCode::BAD_REQUEST, format!("{code}: {message}")),
                }
            }
            E::Unavailable { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// `Json<T>` whose rejections (bad JSON, wrong content type, body too large) are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The content type every client sends is recognised at once; any other goes through
        // axum's own check (which parses it as a MIME type), so what is accepted and refused,
        // and with which message, is axum's either way.
        if !plain_json(req.headers()) {
            return match Json::<T>::from_request(req, state).await {
                Ok(Json(v)) => Ok(ApiJson(v)),
                Err(r) => Err(json_rejection(r)),
            };
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        // Read without tracking where in the document it is; only a body that fails is read
        // again by axum, for its refusal naming the path to the fault.
        if let Ok(v) = serde_json::from_slice::<T>(&bytes) {
            return Ok(ApiJson(v));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

/// Whether the request says `Content-Type: application/json` exactly (in any case).
fn plain_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"))
}

fn json_rejection(r: JsonRejection) -> ApiError {
    ApiError::new(r.status(), r.body_text())
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::new(r.status(), r.body_text())
}
