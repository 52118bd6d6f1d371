//! WebSocket: the upgrade handshake (done here, so that any request path under the configured
//! prefix is taken, offered subprotocols are answered and non-upgrade requests get `403`), and
//! [`WsTransport`], which carries CIM packets in protobuf or JSON mode.
//!
//! Framing, fragmentation, masking, control frames and UTF-8 checks are tungstenite's; the close
//! handshake is completed here. A peer's close is answered with a close frame echoing its status
//! (1002 for a status that may not be sent), one of ours is followed by waiting for the peer's
//! answer, and either way the server then closes the TCP connection first and waits briefly for
//! the peer to close its side. A peer that breaks the protocol is closed with 1002, text that is
//! not UTF-8 with 1007, a message over the limit with 1009. `scripts/autobahn` runs the Autobahn
//! test suite against this transport (permessage-deflate is not negotiated).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cim_codec_binary::WsBinaryCodec;
use cim_codec_json::JsonCodec;
use cim_core::engine::{Closing, Outbound, Transport};
use cim_core::{CodecError, Error, Frame, OwnedPacket, Packet, PacketCodec, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::{debug, warn};

/// Bytes gathered before the WebSocket layer writes; a flush writes whatever is gathered, so a
/// batch of queued messages goes out in few writes.
const WRITE_BUFFER: usize = 16 * 1024;

/// How a WebSocket listener frames CIM packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum WsMode {
    /// Per connection, from the first data message: a binary one picks the binary codec
    /// (protobuf), a text one the text codec (JSON).
    #[default]
    Auto,
    /// Every packet through the binary codec: binary messages `[type][protobuf]`.
    Protobuf,
    /// Every packet through the text codec: text messages with a JSON envelope.
    Json,
}

impl std::str::FromStr for WsMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(WsMode::Auto),
            "protobuf" => Ok(WsMode::Protobuf),
            "json" => Ok(WsMode::Json),
            other => Err(format!("{other:?}: expected one of auto, protobuf, json")),
        }
    }
}

impl TryFrom<String> for WsMode {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// The packet codecs of a WebSocket listener: one for the binary mode and one for the text mode.
#[derive(Clone, Default)]
pub enum WsCodecs {
    /// CIM's: protobuf in binary messages, the JSON envelope in text messages, taking `data`
    /// maps of up to the listener's limit of entries.
    #[default]
    Cim,
    /// A listener's own (their limits are theirs).
    Custom {
        /// Decodes and encodes packets in the binary mode.
        binary: Arc<dyn PacketCodec>,
        /// Decodes and encodes packets in the text mode.
        text: Arc<dyn PacketCodec>,
    },
}

impl WsCodecs {
    /// One codec of a listener's own for both modes (a codec that tells packets apart by
    /// itself).
    pub fn single(codec: Arc<dyn PacketCodec>) -> Self {
        WsCodecs::Custom {
            binary: Arc::clone(&codec),
            text: codec,
        }
    }

    /// The codecs to use, CIM's built with `max_entries` as their limit of entries per map.
    pub(crate) fn resolve(&self, max_entries: usize) -> Self {
        match self {
            WsCodecs::Cim => WsCodecs::Custom {
                binary: Arc::new(WsBinaryCodec::new().with_max_entries(max_entries)),
                text: Arc::new(JsonCodec::new().with_max_entries(max_entries)),
            },
            custom => custom.clone(),
        }
    }

    /// The codec of the text mode (`text`) or of the binary mode.
    fn get(&self, text: bool) -> &dyn PacketCodec {
        match self {
            WsCodecs::Custom { text: t, .. } if text => &**t,
            WsCodecs::Custom { binary, .. } => &**binary,
            WsCodecs::Cim if text => &CIM_TEXT,
            WsCodecs::Cim => &CIM_BINARY,
        }
    }
}

/// CIM's codecs with the default limits, for a transport made with [`WsCodecs::Cim`] unresolved.
static CIM_BINARY: WsBinaryCodec = WsBinaryCodec::new();
static CIM_TEXT: JsonCodec = JsonCodec::new();

impl std::fmt::Debug for WsCodecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsCodecs::Cim => f.write_str("Cim"),
            WsCodecs::Custom { .. } => f.write_str("Custom"),
        }
    }
}

/// CIM's are equal; a listener's own are equal when they hold the same codec values.
impl PartialEq for WsCodecs {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (WsCodecs::Cim, WsCodecs::Cim) => true,
            (
                WsCodecs::Custom { binary, text },
                WsCodecs::Custom {
                    binary: b2,
                    text: t2,
                },
            ) => Arc::ptr_eq(binary, b2) && Arc::ptr_eq(text, t2),
            _ => false,
        }
    }
}

impl Eq for WsCodecs {}

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
    /// The packet codecs (default: CIM's protobuf and JSON).
    pub codecs: WsCodecs,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            path: "/".into(),
            mode: WsMode::Auto,
            max_message: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_request_head: 8 * 1024,
            codecs: WsCodecs::default(),
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

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, why: &str) {
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

/// Reads and checks the upgrade request head; a valid one is then put to `check`, whose
/// `Err(reason)` refuses it with `403` and the reason.
async fn read_head<S, F>(stream: &mut S, settings: &WsSettings, check: F) -> Result<Head>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&HandshakeRequest) -> std::result::Result<(), String>,
{
    let mut check = Some(check);
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
        if let Some(Err(why)) = check.take().map(|c| c(&request)) {
            refuse(stream, "403 Forbidden", &why).await;
            return Ok(Head::Refused);
        }
        let accept = derive_accept_key(key.trim().as_bytes());
        let rest = buf.get(used..).unwrap_or_default().to_vec();
        return Ok(Head::Complete(request, accept, rest));
    }
}

/// Performs the upgrade on `stream`. `None` when the request was refused (the refusal has been
/// answered) or the peer went away.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    settings: &WsSettings,
) -> Result<Option<(WebSocketStream<S>, HandshakeRequest)>> {
    accept_checked(stream, settings, |_| Ok(())).await
}

/// Performs the upgrade on `stream` as [`accept`] does, once `check` has taken the request:
/// its `Err(reason)` refuses the upgrade with `403` and the reason (a client address denied
/// once the forwarding headers are read, say).
pub async fn accept_checked<S, F>(
    mut stream: S,
    settings: &WsSettings,
    check: F,
) -> Result<Option<(WebSocketStream<S>, HandshakeRequest)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&HandshakeRequest) -> std::result::Result<(), String>,
{
    let read = read_head(&mut stream, settings, check);
    let head = match timeout(settings.handshake_timeout, read).await {
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

/// CIM packets over a WebSocket on any stream `S`, each packet through the codec of the
/// connection's mode.
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    codecs: WsCodecs,
    fixed: WsMode,
    /// The mode in use: fixed, or detected from the first data message.
    text: Option<bool>,
    /// The largest message sent, as the listener's limit says for both directions.
    max_message: usize,
    /// The close status the peer is owed, when something more precise than the engine's
    /// reason is known (a message too large).
    status: Option<CloseCode>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WsTransport<S> {
    /// Wraps an upgraded stream.
    pub fn new(ws: WebSocketStream<S>, settings: &WsSettings) -> Self {
        let text = match settings.mode {
            WsMode::Auto => None,
            WsMode::Protobuf => Some(false),
            WsMode::Json => Some(true),
        };
        Self {
            ws,
            codecs: settings.codecs.clone(),
            fixed: settings.mode,
            text,
            max_message: settings.max_message,
            status: None,
        }
    }

    /// Sends the `client_handshake` / `401` refusal and closes (1008). In automatic mode the
    /// client's first message (its bind, for the stock SDKs) is awaited for up to `wait`, so
    /// the refusal goes out in the mode the client speaks; the refusal and the close handshake
    /// then get up to `wait` again.
    pub async fn refuse(mut self, wait: Duration) {
        if self.text.is_none() {
            let _ = timeout(wait, self.recv()).await;
        }
        let refusal = Outbound::Frame(Box::new(Frame::Reply(cim_core::handshake_refused())));
        let _ = timeout(wait, async {
            let _ = self.send(std::slice::from_ref(&refusal)).await;
            self.close(Closing::Refused).await;
        })
        .await;
    }

    /// The codec of the mode in use (binary until something is detected).
    fn codec(&self) -> &dyn PacketCodec {
        self.codecs.get(self.text == Some(true))
    }

    fn encode(&self, item: &Outbound) -> std::result::Result<Message, CodecError> {
        match item {
            Outbound::Frame(frame) => self.codec().encode(frame).map(packet_message),
            Outbound::Message(shared) => self.encode_shared(shared),
        }
    }

    /// A pushed message, from its encoding shared with every connection of the same format.
    fn encode_shared(
        &self,
        shared: &cim_core::engine::SharedMessage,
    ) -> std::result::Result<Message, CodecError> {
        let codec = self.codec();
        let Some(format) = codec.wire_format() else {
            return codec.encode(shared.frame()).map(packet_message);
        };
        // The shared encoding is kept as bytes, with the packet's kind in the first byte.
        let bytes = shared.encoded(format, |f| {
            Ok(match codec.encode(f)? {
                OwnedPacket::Binary(b) => [&[0u8][..], &b].concat().into(),
                OwnedPacket::Text(t) => [&[1u8][..], t.as_bytes()].concat().into(),
            })
        })?;
        Ok(match bytes.first() {
            Some(1) => Message::Text(
                Utf8Bytes::try_from(bytes.slice(1..))
                    .map_err(|e| CodecError::Unencodable(e.to_string()))?,
            ),
            _ => Message::Binary(bytes.slice(1..)),
        })
    }

    fn decode(&mut self, packet: Packet<'_>) -> Result<Frame> {
        if self.fixed == WsMode::Auto && self.text.is_none() {
            self.text = Some(matches!(packet, Packet::Text(_)));
        }
        Ok(self.codec().decode(packet)?)
    }
}

fn packet_message(packet: OwnedPacket) -> Message {
    match packet {
        OwnedPacket::Binary(b) => Message::Binary(b),
        OwnedPacket::Text(t) => Message::Text(t.into()),
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

fn message_len(m: &Message) -> usize {
    match m {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        _ => 0,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    fn can_carry(&mut self, message: &cim_core::engine::SharedMessage) -> bool {
        self.encode_shared(message)
            .is_ok_and(|m| message_len(&m) <= self.max_message)
    }

    async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            let msg = match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    self.status = failure_status(&e);
                    return ws_error(e).map_or(Ok(None), Err);
                }
                Some(Ok(msg)) => msg,
            };
            return match msg {
                Message::Binary(b) => self.decode(Packet::Binary(&b)).map(Some),
                Message::Text(t) => self.decode(Packet::Text(t.as_str())).map(Some),
                // The peer closed: the WebSocket layer has queued the answering close frame
                // (echoing the peer's status), which the next read writes before it reports
                // the end; so read on rather than end here.
                Message::Close(_) => continue,
                // Control frames are the WebSocket layer's business, not heartbeats.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
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

    async fn close(&mut self, why: Closing) {
        let code = self.status.unwrap_or(match why {
            Closing::Normal => CloseCode::Normal,
            Closing::Shutdown => CloseCode::Away,
            Closing::Refused => CloseCode::Policy,
            Closing::ProtocolError => CloseCode::Protocol,
        });
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::default(),
        };
        // Our close frame; refused by the WebSocket layer (and not needed) when the peer
        // closed first, since its close has been answered already.
        let _ = self.ws.close(Some(frame)).await;
        // The peer's answering close frame: read (and drop) whatever it still sends before it.
        // This ends at once when the stream has ended already (the peer closed first, or it
        // broke the protocol, after which the layer reads no more).
        while let Some(Ok(_)) = self.ws.next().await {}
        // The server closes the TCP connection first (RFC 6455, section 7.1.1), then waits
        // for the peer to close its side, dropping what arrives meanwhile: a socket closed
        // with unread bytes, or that bytes reach after it closed, would answer with a reset,
        // which can destroy the close frame before the peer has read it. The engine bounds
        // the whole close in time.
        let stream = self.ws.get_mut();
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 512];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// The close status a failed read owes the peer, when it is more precise than the engine's
/// protocol-error status (1002): 1007 for text that is not UTF-8, 1009 for a message or frame
/// over the limit.
fn failure_status(e: &tungstenite::Error) -> Option<CloseCode> {
    match e {
        tungstenite::Error::Utf8(_) => Some(CloseCode::Invalid),
        tungstenite::Error::Capacity(_) => Some(CloseCode::Size),
        _ => None,
    }
}
