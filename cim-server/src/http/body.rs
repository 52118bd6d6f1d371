//! [`read_body`]: a request's body is read whole before its handler runs, within the body
//! timeout and the body limit; a body that does not arrive in time, is too large or cannot be
//! decoded is answered with a JSON error, and the connection is closed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cim_core::engine::within;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::ApiError;

/// What a body is held to.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body, in bytes (`http.max_body`).
    pub max_body: usize,
    /// Time for the whole body once the head is in (`http.body_timeout_ms`).
    pub timeout: Duration,
}

/// A refusal that also ends the connection: the rest of the body is never read.
fn closing(status: StatusCode, reason: String) -> Response {
    let mut res = ApiError::new(status, reason).into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

fn too_large(limits: &BodyLimits) -> Response {
    closing(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body exceeds the limit of {} bytes (http.max_body)",
            limits.max_body
        ),
    )
}

/// Reads the body (see the module docs): the request with its body in memory, or the answer
/// that refuses it.
pub(crate) async fn read_body(limits: &BodyLimits, req: Request) -> Result<Request, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        // Refused before a byte of it is read (and before `100 Continue` is sent).
        return Err(too_large(limits));
    }
    let (parts, body) = req.into_parts();
    // A small body usually came with its head: taken at once, it needs no timer.
    let collected = within(
        limits.timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large(limits));
        }
        Ok(Err(e)) => {
            return Err(closing(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
        Err(_) => {
            return Err(closing(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not complete within {} ms (http.body_timeout_ms)",
                    limits.timeout.as_millis()
                ),
            ));
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
