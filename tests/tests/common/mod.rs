//! Helpers shared by the end-to-end tests: a server on ephemeral ports, and raw clients.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod browser;
pub mod certs;
pub mod clients;
pub mod cluster;
pub mod haproxy;
pub mod process;
pub mod scrape;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::engine::{ConnId, ConnectionConfig, EventContext, EventListener};
use cim_core::{Frame, Message, Packet, PacketCodec, ReplyBody, SentBody, Session, StreamCodec};
use cim_server::{Listener, Protocol, RunningServer, Server, ServerBuilder, WsSettings};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it holds; fails, naming `what`, after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `uid` has no session left on `server`.
pub async fn no_session(server: &RunningServer, uid: &str) -> bool {
    server
        .hub()
        .sessions()
        .sessions(uid)
        .await
        .unwrap()
        .is_empty()
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cim_core=debug,cim_server=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Records every close, with its reason.
#[derive(Default)]
pub struct Closes(pub Mutex<Vec<(ConnId, Option<String>, String)>>);

impl EventListener for Closes {
    fn on_closed(
        &self,
        _: &EventContext<'_>,
        conn: ConnId,
        session: Option<&Session>,
        reason: &str,
    ) {
        self.0
            .lock()
            .unwrap()
            .push((conn, session.map(|s| s.uid.to_string()), reason.to_owned()));
    }
}

impl Closes {
    /// Waits until a close whose reason contains `needle` is recorded; returns the reason.
    pub async fn wait_for(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((_, _, r)) = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(_, _, r)| r.contains(needle))
            {
                return r.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no close with {needle:?}; closes: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server with TCP, WebSocket and XML listeners on ephemeral ports, every listener using
/// `conn`, and `configure` applied to the builder.
pub async fn start_with(
    conn: ConnectionConfig,
    ws: WsSettings,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (RunningServer, Arc<Closes>) {
    init_logs();
    let closes = Arc::new(Closes::default());
    let builder = Server::builder()
        .listener(Listener::binary(loopback()).with_connection(conn))
        .listener(Listener {
            addr: loopback(),
            protocol: Protocol::WebSocket(ws),
            connection: conn,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Default::default(),
        })
        .listener(Listener::xml(loopback()).with_connection(conn))
        .event_listener(closes.clone());
    let server = configure(builder).start().await.unwrap();
    (server, closes)
}

pub async fn start() -> (RunningServer, Arc<Closes>) {
    start_with(ConnectionConfig::default(), WsSettings::default(), |b| b).await
}

pub fn bind_body(uid: &str, channel: &str, device: &str) -> SentBody {
    SentBody::new("client_bind")
        .with("uid", uid)
        .with("channel", channel)
        .with("deviceId", device)
        .with("deviceName", format!("{device}-name"))
}

pub fn message_to(uid: &str, content: &str) -> Message {
    Message {
        action: "2".into(),
        sender: "system".into(),
        receiver: uid.into(),
        content: content.into(),
        format: "txt".into(),
        ..Message::default()
    }
}

/// `client_message` requests (receiver, content), their `requestId`s `r0`, `r1`, …, encoded for
/// the binary protocol back to back, to be written at once (so that the server reads them
/// together).
pub fn pipelined_sends(sends: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    for (i, (to, content)) in sends.iter().enumerate() {
        let body = SentBody::new("client_message")
            .with("receiver", *to)
            .with("content", *content)
            .with("requestId", format!("r{i}"));
        BinaryCodec::new()
            .encode(&Frame::Sent(body), &mut out)
            .unwrap();
    }
    out
}

/// A raw client of a stream protocol.
pub struct StreamClient<C> {
    pub stream: TcpStream,
    codec: C,
    buf: BytesMut,
}

pub type TcpClient = StreamClient<BinaryCodec>;
pub type XmlClient = StreamClient<XmlCodec>;

impl<C: StreamCodec> StreamClient<C> {
    pub async fn connect(addr: SocketAddr, codec: C) -> Self {
        Self::on(TcpStream::connect(addr).await.unwrap(), codec)
    }

    /// A client on a stream connected already.
    pub fn on(stream: TcpStream, codec: C) -> Self {
        Self {
            stream,
            codec,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` if the server closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("timed out waiting for a frame")
    }

    /// The next frame, read as a slow reader reads: at most `chunk` bytes a millisecond.
    pub async fn next_slowly(&mut self, chunk: usize) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            let mut bytes = vec![0; chunk];
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                match self.stream.read(&mut bytes).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&bytes[..n]),
                }
            }
        })
        .await
        .expect("timed out waiting for a frame")
    }

    /// The next frame that is not a PING.
    pub async fn next_data(&mut self) -> Option<Frame> {
        loop {
            match self.next().await {
                Some(Frame::Ping) => continue,
                other => return other,
            }
        }
    }

    pub async fn reply(&mut self) -> ReplyBody {
        match self.next_data().await {
            Some(Frame::Reply(r)) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    pub async fn message(&mut self) -> Message {
        match self.next_data().await {
            Some(Frame::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn bind(&mut self, uid: &str, channel: &str, device: &str) {
        self.send(Frame::Sent(bind_body(uid, channel, device)))
            .await;
        let r = self.reply().await;
        assert_eq!(
            (r.key.as_str(), r.code.as_str()),
            ("client_bind", "200"),
            "{r:?}"
        );
    }

    /// Reads until the server closes, skipping whatever arrives; panics if it never does.
    pub async fn expect_closed(&mut self) -> Vec<Frame> {
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(f)) => {
                        seen.push(f);
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => self.buf.clear(),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server did not close the connection");
        seen
    }
}

pub async fn tcp(server: &RunningServer) -> TcpClient {
    StreamClient::connect(server.addr("tcp").unwrap(), BinaryCodec::new()).await
}

pub async fn xml(server: &RunningServer) -> XmlClient {
    StreamClient::connect(server.addr("xml").unwrap(), XmlCodec::new()).await
}

/// A bound TCP client for `uid`.
pub async fn bound_tcp(server: &RunningServer, uid: &str) -> TcpClient {
    let mut c = tcp(server).await;
    c.bind(uid, "android", &format!("dev-{uid}")).await;
    c
}

/// Pushes a message to `uid` through the hub and checks `client` receives it.
pub async fn assert_receives(
    server: &RunningServer,
    client: &mut TcpClient,
    uid: &str,
    content: &str,
) {
    let sent = server.hub().send(message_to(uid, content)).await.unwrap();
    assert_eq!(sent.delivered, 1, "not delivered to {uid}");
    let m = client.message().await;
    assert_eq!(
        (m.receiver.as_str(), m.content.as_str(), m.id),
        (uid, content, sent.id)
    );
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket client connected to `path`, offering `protocols` if any.
pub async fn ws_connect(
    server: &RunningServer,
    path: &str,
    protocols: Option<&str>,
) -> (Ws, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = server.addr("websocket").unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// The next CIM frame on a WebSocket, decoded by the codec matching the message kind.
pub async fn ws_next(ws: &mut Ws) -> Option<Frame> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(WsMessage::Binary(b))) => {
                    return Some(WsBinaryCodec.decode(Packet::Binary(&b)).unwrap());
                }
                Some(Ok(WsMessage::Text(t))) => {
                    return Some(JsonCodec.decode(Packet::Text(t.as_str())).unwrap());
                }
                Some(Ok(WsMessage::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("timed out waiting for a websocket frame")
}

pub async fn ws_send_binary(ws: &mut Ws, frame: &Frame) {
    ws.send(WsMessage::Binary(WsBinaryCodec.encode_payload(frame)))
        .await
        .unwrap();
}

pub async fn ws_send_json(ws: &mut Ws, frame: &Frame) {
    ws.send(WsMessage::Text(
        JsonCodec.encode_text(frame).unwrap().into(),
    ))
    .await
    .unwrap();
}
