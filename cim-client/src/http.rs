//! A small HTTP/1.1 client for the server's JSON API (feature `http`): what the `cim`
//! command-line client and the `cim-bench` load generator use to send, list and kick.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cim_client::ClientError> {
//! let sessions = cim_client::http::call("http://127.0.0.1:8080", "GET", "/api/v1/sessions", None, None).await?;
//! println!("{} online", sessions["total"]);
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::{ClientError, Result};

fn http_error(reason: impl std::fmt::Display) -> ClientError {
    ClientError::Http(reason.to_string())
}

/// `http://host:port` → `host:port`.
pub fn authority(base: &str) -> Result<&str> {
    let bad = || ClientError::BadEndpoint {
        endpoint: base.to_owned(),
        reason: "expected http://host:port".into(),
    };
    let rest = base.strip_prefix("http://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(bad());
    }
    Ok(rest)
}

/// Sends one request on a fresh connection; returns the body parsed as JSON. A non-2xx answer is
/// an error carrying the server's reason.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut api = Api::connect(authority(base)?).await.map_err(|e| match e {
        ClientError::Io(e) => ClientError::Connect {
            endpoint: base.to_owned(),
            reason: e.to_string(),
        },
        other => other,
    })?;
    api.request(method, path, api_key, body.as_ref()).await
}

/// One keep-alive HTTP/1.1 connection to the API.
pub struct Api {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Api {
    /// Connects to `host:port`.
    pub async fn connect(host: impl ToSocketAddrs + std::fmt::Display) -> Result<Api> {
        let name = host.to_string();
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_error(format!("handshake: {e}")))?;
        tokio::spawn(conn);
        Ok(Api { sender, host: name })
    }

    /// Sends one request and returns the body parsed as JSON (or as a JSON string when it is
    /// not JSON). A non-2xx answer is an error carrying the server's reason.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        api_key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        self.sender.ready().await.map_err(http_error)?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(k) = api_key {
            req = req.header("x-api-key", k);
        }
        let payload = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(http_error)?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(http_error)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| http_error(format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        if !status.is_success() {
            let reason = value
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| value.to_string(), str::to_owned);
            return Err(http_error(format!("{method} {path}: {status}: {reason}")));
        }
        Ok(value)
    }
}
