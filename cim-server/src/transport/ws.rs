//! WebSocket: the upgrade handshake (done here, so that any request path under the configured
//! prefix is taken, offered subprotocols are answered and non-upgrade requests get `403`), and
//! [`WsTransport`], which carries CIM packets in protobuf or JSON mode.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cim_codec_binary::WsBinaryCodec;
use cim_codec_json::JsonCodec;
use cim_core::engine::{Outbound, Transport};
use cim_core::{CodecError, Error, Frame, Packet, PacketCodec, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::{debug, warn};

/// Bytes gathered before the WebSocket layer writes; a flush writes whatever is gathered, so a
/// batch of queued messages goes out in few writes.
const WRITE_BUFFER: usize = 16 * 1024;

/// How a WebSocket listener frames CIM packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WsMode {
    /// Per connection, from the first data message: binary means protobuf, text means JSON.
    #[default]
    Auto,
    /// Binary messages `[type][protobuf]`.
    Protobuf,
    /// Text messages with a JSON envelope.
    Json,
}

/// Settings of a WebSocket listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsSettings {
    /// Requests whose path starts with this are upgraded (default `/`).
    pub path: String,
    /// Protobuf, JSON, or detected per connection.
    pub mode: WsMode,
    /// Largest message (and frame) accepted, in bytes.
    pub max_message: usize,
    /// Time allowed for the upgrade request (default 10 s).
    pub handshake_timeout: Duration,
    /// Largest upgrade request head, in bytes (default 8 KiB).
    pub max_request_head: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            path: "/".into(),
            mode: WsMode::Auto,
            max_message: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_request_head: 8 * 1024,
        }
    }
}

impl WsSettings {
    /// The WebSocket library's settings: its large defaults (64 MiB messages, 128 KiB buffers,
    /// an unbounded write buffer) lowered to ours, so idle connections stay small and a peer
    /// cannot make us buffer much.
    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(WRITE_BUFFER + self.max_message.saturating_mul(4).max(64 * 1024))
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }
}

/// What the upgrade request asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?` (empty when none).
    pub query: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl HandshakeRequest {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// Decides whether an upgrade request may proceed (a token check, say). A refused connection
/// is sent `ReplyBody{key="client_handshake", code="401"}` in its mode and closed, which makes
/// the stock JS SDK stop reconnecting.
pub trait HandshakeCheck: Send + Sync + 'static {
    /// `Ok(())` to accept; `Err(reason)` to refuse (the reason is logged).
    fn check(&self, request: &HandshakeRequest) -> std::result::Result<(), String>;
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

async fn refuse(stream: &mut TcpStream, status: &str, why: &str) {
    debug!(status, why, "websocket upgrade refused");
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

enum Head {
    Complete(HandshakeRequest, String, Vec<u8>),
    Refused,
}

/// Reads and checks the upgrade request head.
async fn read_head(stream: &mut TcpStream, settings: &WsSettings) -> Result<Head> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= settings.max_request_head {
            refuse(
                stream,
                "431 Request Header Fields Too Large",
                "request head too large",
            )
            .await;
            return Ok(Head::Refused);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(Head::Refused);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(&buf) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => {
                refuse(stream, "400 Bad Request", &format!("bad request: {e}")).await;
                return Ok(Head::Refused);
            }
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = HandshakeRequest {
            path: path.to_owned(),
            query: query.to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        };
        if req.method != Some("GET")
            || !has_token(request.header("upgrade"), "websocket")
            || !has_token(request.header("connection"), "upgrade")
        {
            refuse(stream, "403 Forbidden", "this port speaks WebSocket only").await;
            return Ok(Head::Refused);
        }
        if !request.path.starts_with(&settings.path) {
            refuse(
                stream,
                "404 Not Found",
                "no WebSocket endpoint at this path",
            )
            .await;
            return Ok(Head::Refused);
        }
        if request.header("sec-websocket-version") != Some("13") {
            let _ = stream
                .write_all(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")
                .await;
            return Ok(Head::Refused);
        }
        let Some(key) = request.header("sec-websocket-key") else {
            refuse(stream, "400 Bad Request", "missing Sec-WebSocket-Key").await;
            return Ok(Head::Refused);
        };
        let accept = derive_accept_key(key.trim().as_bytes());
        let rest = buf.get(used..).unwrap_or_default().to_vec();
        return Ok(Head::Complete(request, accept, rest));
    }
}

/// Performs the upgrade on `stream`. `None` when the request was refused (the refusal has been
/// answered) or the peer went away.
pub async fn accept(
    mut stream: TcpStream,
    settings: &WsSettings,
) -> Result<Option<(WebSocketStream<TcpStream>, HandshakeRequest)>> {
    let head = match timeout(settings.handshake_timeout, read_head(&mut stream, settings)).await {
        Ok(head) => head?,
        Err(_) => {
            refuse(
                &mut stream,
                "408 Request Timeout",
                "upgrade request too slow",
            )
            .await;
            return Ok(None);
        }
    };
    let Head::Complete(request, accept_key, rest) = head else {
        return Ok(None);
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept_key}\r\n"
    );
    // Answer an offer of subprotocols with the first one, so browsers do not fail the handshake.
    if let Some(first) = request
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
    {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(first);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    stream.write_all(resp.as_bytes()).await?;
    let ws =
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(settings.config()))
            .await;
    Ok(Some((ws, request)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Protobuf,
    Json,
}

/// CIM packets over a WebSocket.
pub struct WsTransport {
    ws: WebSocketStream<TcpStream>,
    fixed: WsMode,
    mode: Option<Resolved>,
    binary: WsBinaryCodec,
    json: JsonCodec,
}

impl WsTransport {
    /// Wraps an upgraded stream.
    pub fn new(ws: WebSocketStream<TcpStream>, mode: WsMode) -> Self {
        let resolved = match mode {
            WsMode::Auto => None,
            WsMode::Protobuf => Some(Resolved::Protobuf),
            WsMode::Json => Some(Resolved::Json),
        };
        Self {
            ws,
            fixed: mode,
            mode: resolved,
            binary: WsBinaryCodec::new(),
            json: JsonCodec::new(),
        }
    }

    /// Refuses `data` maps of more than `max` entries (see [`JsonCodec::with_max_entries`]).
    pub fn with_max_data_entries(mut self, max: usize) -> Self {
        self.binary = self.binary.with_max_entries(max);
        self.json = self.json.with_max_entries(max);
        self
    }

    /// Sends the `client_handshake` / `401` refusal and closes. In automatic mode the client's
    /// first message (its bind, for the stock SDKs) is awaited for up to `wait`, so the refusal
    /// goes out in the mode the client speaks.
    pub async fn refuse(mut self, wait: Duration) {
        if self.mode.is_none() {
            let _ = timeout(wait, self.recv()).await;
        }
        let refusal = Outbound::Frame(Box::new(Frame::Reply(cim_core::handshake_refused())));
        let _ = self.send(std::slice::from_ref(&refusal)).await;
        self.close().await;
    }

    /// The mode in use: fixed, detected, or protobuf until something is detected.
    fn mode(&self) -> Resolved {
        self.mode.unwrap_or(Resolved::Protobuf)
    }

    fn encode(&self, item: &Outbound) -> std::result::Result<Message, CodecError> {
        let shared = match item {
            Outbound::Frame(frame) => {
                return Ok(match self.mode() {
                    Resolved::Protobuf => Message::Binary(WsBinaryCodec.encode_payload(frame)),
                    Resolved::Json => Message::Text(JsonCodec.encode_text(frame)?.into()),
                });
            }
            Outbound::Message(shared) => shared,
        };
        Ok(match self.mode() {
            Resolved::Protobuf => {
                Message::Binary(shared.encoded(cim_core::WireFormat::BinaryPacket, |f| {
                    Ok(WsBinaryCodec.encode_payload(f))
                })?)
            }
            Resolved::Json => {
                let bytes = shared.encoded(cim_core::WireFormat::JsonPacket, |f| {
                    Ok(Bytes::from(JsonCodec.encode_text(f)?))
                })?;
                Message::Text(
                    Utf8Bytes::try_from(bytes)
                        .map_err(|e| CodecError::Unencodable(e.to_string()))?,
                )
            }
        })
    }
}

fn ws_error(e: tungstenite::Error) -> Option<Error> {
    use tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => None,
        E::Io(e) => Some(Error::Io(e)),
        E::Capacity(e) => Some(Error::Transport(format!("websocket: {e}"))),
        other => Some(Error::Transport(format!("websocket: {other}"))),
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            let msg = match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return ws_error(e).map_or(Ok(None), Err),
                Some(Ok(msg)) => msg,
            };
            let frame = match msg {
                Message::Binary(b) => {
                    if self.fixed == WsMode::Auto && self.mode.is_none() {
                        self.mode = Some(Resolved::Protobuf);
                    }
                    match self.mode() {
                        Resolved::Protobuf => self.binary.decode(Packet::Binary(&b))?,
                        Resolved::Json => self.json.decode(Packet::Binary(&b))?,
                    }
                }
                Message::Text(t) => {
                    if self.fixed == WsMode::Auto && self.mode.is_none() {
                        self.mode = Some(Resolved::Json);
                    }
                    match self.mode() {
                        Resolved::Json => self.json.decode(Packet::Text(t.as_str()))?,
                        Resolved::Protobuf => {
                            return Err(CodecError::WrongPacketKind { expected: "binary" }.into());
                        }
                    }
                }
                Message::Close(_) => return Ok(None),
                // Control frames are the WebSocket layer's business, not heartbeats.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Ok(Some(frame));
        }
    }

    async fn send(&mut self, items: &[Outbound]) -> Result<()> {
        for item in items {
            match self.encode(item) {
                Ok(msg) => self
                    .ws
                    .feed(msg)
                    .await
                    .map_err(|e| ws_error(e).unwrap_or(Error::Transport("closed".into())))?,
                Err(e) => warn!(error = %e, "cannot encode an outbound item; skipped"),
            }
        }
        self.ws
            .flush()
            .await
            .map_err(|e| ws_error(e).unwrap_or(Error::Transport("closed".into())))
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
