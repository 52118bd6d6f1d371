//! A small HTTP/1.1 client for the server's API.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, ToSocketAddrs};

/// `http://host:port` → `host:port`.
pub fn authority(base: &str) -> anyhow::Result<&str> {
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("bad --http address {base:?}: expected http://host:port");
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        bail!("bad --http address {base:?}: expected http://host:port");
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
) -> anyhow::Result<serde_json::Value> {
    let mut api = Api::connect(authority(base)?)
        .await
        .with_context(|| format!("cannot connect to the HTTP API at {base}"))?;
    api.request(method, path, api_key, body.as_ref()).await
}

/// One keep-alive HTTP/1.1 connection to the API.
pub struct Api {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Api {
    /// Connects to `host:port`.
    pub async fn connect(host: impl ToSocketAddrs + std::fmt::Display) -> anyhow::Result<Api> {
        let name = host.to_string();
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
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
    ) -> anyhow::Result<serde_json::Value> {
        self.sender.ready().await?;
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
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let resp = self
            .sender
            .send_request(req.body(Full::new(payload))?)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        if !status.is_success() {
            let reason = value
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{method} {path}: {status}: {reason}");
        }
        Ok(value)
    }
}
