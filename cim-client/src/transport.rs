//! One connection to a server: connect, write a frame, read the next frame.

use bytes::BytesMut;
use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::{Frame, OwnedPacket, Packet, PacketCodec, StreamCodec};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::{ClientConfig, Endpoint, WsMode};
use crate::error::{ClientError, Result};

/// A TCP stream, or TLS over one.
pub(crate) enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, data),
            Socket::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connected socket and its codec.
pub(crate) enum Conn {
    Stream {
        stream: Socket,
        codec: Box<dyn StreamCodec>,
        buf: BytesMut,
        out: BytesMut,
    },
    Ws {
        ws: Box<WebSocketStream<Socket>>,
        codec: Box<dyn PacketCodec>,
    },
}

impl Conn {
    /// Connects (and for WebSocket, upgrades) to `endpoint`.
    pub(crate) async fn connect(endpoint: &Endpoint, cfg: &ClientConfig) -> Result<Conn> {
        let failed = |reason: String| ClientError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let stream = TcpStream::connect(endpoint.addr())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let stream = if endpoint.is_tls() {
            let tls = crate::tls::connect(stream, endpoint.host(), cfg.ca_file.as_deref())
                .await
                .map_err(failed)?;
            Socket::Tls(Box::new(tls))
        } else {
            Socket::Plain(stream)
        };
        let max = cfg.max_frame;
        Ok(match endpoint {
            Endpoint::Tcp(_) | Endpoint::Tls(_) => Conn::stream(
                stream,
                Box::new(BinaryCodec::with_max_body(max.min(u16::MAX as usize))),
            ),
            Endpoint::Xml(_) => Conn::stream(stream, Box::new(XmlCodec::with_max_document(max))),
            Endpoint::WebSocket {
                addr,
                path,
                mode,
                tls,
            } => {
                let scheme = if *tls { "wss" } else { "ws" };
                let mut url = format!("{scheme}://{addr}{path}");
                if let Some(token) = &cfg.bind.token {
                    let sep = if path.contains('?') { '&' } else { '?' };
                    url = format!("{url}{sep}uid={}&token={}", cfg.bind.uid, token);
                }
                let config = WebSocketConfig::default()
                    .read_buffer_size(4 * 1024)
                    .max_message_size(Some(max))
                    .max_frame_size(Some(max));
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                        .await
                        .map_err(|e| failed(format!("WebSocket handshake: {e}")))?;
                let codec: Box<dyn PacketCodec> = match mode {
                    WsMode::Protobuf => Box::new(WsBinaryCodec),
                    WsMode::Json => Box::new(JsonCodec),
                };
                Conn::Ws {
                    ws: Box::new(ws),
                    codec,
                }
            }
        })
    }

    fn stream(stream: Socket, codec: Box<dyn StreamCodec>) -> Conn {
        Conn::Stream {
            stream,
            codec,
            buf: BytesMut::new(),
            out: BytesMut::new(),
        }
    }

    /// Writes one frame.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<()> {
        let protocol = |e: cim_core::CodecError| ClientError::Protocol(e.to_string());
        match self {
            Conn::Stream {
                stream, codec, out, ..
            } => {
                out.clear();
                codec.encode(frame, out).map_err(protocol)?;
                stream.write_all(out).await?;
                if out.capacity() > 64 * 1024 {
                    *out = BytesMut::new();
                }
            }
            Conn::Ws { ws, codec } => {
                let msg = match codec.encode(frame).map_err(protocol)? {
                    OwnedPacket::Binary(b) => WsMessage::Binary(b),
                    OwnedPacket::Text(t) => WsMessage::Text(t.into()),
                };
                ws.send(msg).await.map_err(ws_error)?;
            }
        }
        Ok(())
    }

    /// The next frame; `None` when the server closed the connection. Cancel-safe: bytes read
    /// before a cancellation are kept for the next call.
    pub(crate) async fn recv(&mut self) -> Result<Option<Frame>> {
        let protocol = |e: cim_core::CodecError| ClientError::Protocol(e.to_string());
        match self {
            Conn::Stream {
                stream, codec, buf, ..
            } => loop {
                if let Some(frame) = codec.decode(buf).map_err(protocol)? {
                    return Ok(Some(frame));
                }
                if buf.capacity() == 0 {
                    buf.reserve(4 * 1024);
                }
                if stream.read_buf(buf).await? == 0 {
                    return match codec.decode_eof(buf).map_err(protocol)? {
                        Some(frame) => Ok(Some(frame)),
                        None => Ok(None),
                    };
                }
            },
            Conn::Ws { ws, codec } => loop {
                let Some(msg) = ws.next().await else {
                    return Ok(None);
                };
                let frame = match msg.map_err(ws_error)? {
                    WsMessage::Binary(b) => codec.decode(Packet::Binary(&b)),
                    WsMessage::Text(t) => codec.decode(Packet::Text(t.as_str())),
                    WsMessage::Close(_) => return Ok(None),
                    // Answered by the library; not heartbeats.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                };
                return frame.map(Some).map_err(protocol);
            },
        }
    }

    /// Closes the connection politely (WebSocket close, TCP shutdown).
    pub(crate) async fn close(&mut self) {
        match self {
            Conn::Stream { stream, .. } => {
                let _ = stream.shutdown().await;
            }
            Conn::Ws { ws, .. } => {
                // The stream's own close (with a close frame), not the `Sink` of its box.
                let _ = WebSocketStream::close(ws, None).await;
            }
        }
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => ClientError::Io(e),
        other => ClientError::Protocol(other.to_string()),
    }
}
