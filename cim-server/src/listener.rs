//! Listeners: a socket, the protocol spoken on it, and the settings of its connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_codec_xml::XmlCodec;
use cim_core::engine::{ConnectionConfig, serve_connection};
use cim_core::{Hub, StreamCodec};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::tls::{self, TlsConfig};
use crate::transport::ws::HandshakeCheck;
use crate::transport::{StreamTransport, WsSettings, WsTransport, ws};

/// The protocol a listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// CIM's binary frames over TCP.
    Binary {
        /// Largest frame body accepted and sent (at most 65535).
        max_frame: usize,
    },
    /// WebSocket, in protobuf or JSON mode.
    WebSocket(WsSettings),
    /// The MINA-era XML documents over TCP.
    Xml {
        /// Largest document accepted and sent.
        max_document: usize,
        /// Answer a Flash client's policy request before anything else.
        flash_policy: bool,
    },
}

impl Protocol {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Binary { .. } => "tcp",
            Protocol::WebSocket(_) => "websocket",
            Protocol::Xml { .. } => "xml",
        }
    }
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// What is spoken there.
    pub protocol: Protocol,
    /// Timers and queue limits of its connections.
    pub connection: ConnectionConfig,
}

impl Listener {
    /// CIM's binary protocol on `addr`, frames up to 65535 bytes.
    pub fn binary(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::Binary {
                max_frame: cim_codec_binary::MAX_BODY,
            },
            connection: ConnectionConfig::default(),
        }
    }

    /// WebSocket on `addr` with default settings (path `/`, mode detected per connection).
    pub fn websocket(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::WebSocket(WsSettings::default()),
            connection: ConnectionConfig::default(),
        }
    }

    /// The XML protocol on `addr`, documents up to 64 KiB.
    pub fn xml(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::Xml {
                max_document: cim_codec_xml::DEFAULT_MAX_DOCUMENT,
                flash_policy: false,
            },
            connection: ConnectionConfig::default(),
        }
    }

    /// The listener's name in logs and address lists: its protocol's, or over TLS `tls`, `wss`
    /// or `xml+tls`.
    pub fn name(&self, tls: bool) -> &'static str {
        match (&self.protocol, tls) {
            (protocol, false) => protocol.name(),
            (Protocol::Binary { .. }, true) => "tls",
            (Protocol::WebSocket(_), true) => "wss",
            (Protocol::Xml { .. }, true) => "xml+tls",
        }
    }

    /// Replaces the connection settings.
    pub fn with_connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }
}

/// Starts the task of one accepted connection on `stream` (a TCP stream, or TLS over one).
/// Each protocol gets a task of its own shape, so that a TCP connection's task is not as large
/// as a WebSocket one's.
fn spawn_connection<S>(
    hub: Arc<Hub>,
    protocol: &Protocol,
    conf: ConnectionConfig,
    check: Option<Arc<dyn HandshakeCheck>>,
    stream: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        &Protocol::Binary { max_frame } => {
            let codec = BinaryCodec::with_max_body(max_frame);
            spawn_stream(hub, StreamTransport::new(stream, codec), conf, peer, permit);
        }
        &Protocol::Xml {
            max_document,
            flash_policy,
        } => {
            let codec = XmlCodec::with_max_document(max_document);
            if flash_policy {
                crate::flash::spawn(hub, stream, codec, conf, peer, permit);
            } else {
                spawn_stream(hub, StreamTransport::new(stream, codec), conf, peer, permit);
            }
        }
        Protocol::WebSocket(settings) => {
            let settings = settings.clone();
            tokio::spawn(async move {
                // The handshake's future is boxed: it is done before the connection idles.
                match Box::pin(ws::accept(stream, &settings)).await {
                    Ok(Some((socket, request))) => {
                        let transport = WsTransport::new(socket, &settings);
                        if let Some(Err(why)) = check.as_ref().map(|c| c.check(&request)) {
                            info!(%peer, reason = %why, "websocket handshake refused");
                            transport.refuse(settings.handshake_timeout).await;
                        } else {
                            serve_connection(hub, transport, conf, peer).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => debug!(%peer, error = %e, "websocket upgrade failed"),
                }
                drop(permit);
            });
        }
    }
}

/// Starts the task of a TLS connection: the handshake, in a task of its own, bounded by the bind
/// timeout (and counted against it); then the connection's own task, the size of a plain one
/// plus the TLS stream.
fn spawn_tls(
    hub: Arc<Hub>,
    protocol: Arc<Protocol>,
    mut conf: ConnectionConfig,
    check: Option<Arc<dyn HandshakeCheck>>,
    (stream, peer, permit): (TcpStream, SocketAddr, OwnedSemaphorePermit),
    tls: Arc<rustls::ServerConfig>,
) {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let limit = conf.timers.bind_timeout;
        match tokio::time::timeout(limit, tls::accept(stream, tls)).await {
            Ok(Ok(stream)) => {
                conf.timers.bind_timeout = limit.saturating_sub(started.elapsed());
                spawn_connection(hub, &protocol, conf, check, stream, peer, permit);
            }
            Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed; connection closed"),
            Err(_) => info!(
                %peer,
                bind_timeout_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                "TLS handshake not done within the bind timeout; connection closed"
            ),
        }
    });
}

/// Starts the task of a connection on a stream protocol; the permit goes with the connection.
fn spawn_stream<S, C>(
    hub: Arc<Hub>,
    transport: StreamTransport<S, C>,
    conf: ConnectionConfig,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: StreamCodec + Sync,
{
    let conn = serve_connection(hub, transport, conf, peer);
    // `map`, not an async block: a block would hold the future twice over.
    tokio::spawn(conn.map(move |()| drop(permit)));
}

/// Accepts connections until `stop` turns true. Each connection holds a permit of `slots`;
/// with none left, a new connection is closed at once (and logged). With `tls`, every
/// connection starts with a TLS handshake.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    listener: Listener,
    tls: Option<TlsConfig>,
    hub: Arc<Hub>,
    slots: Arc<Semaphore>,
    check: Option<Arc<dyn HandshakeCheck>>,
    mut stop: watch::Receiver<bool>,
) {
    let local = socket.local_addr().ok();
    let protocol = Arc::new(listener.protocol);
    loop {
        let accepted = tokio::select! {
            res = socket.accept() => res,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit: OwnedSemaphorePermit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                warn!(%peer, "connection limit reached; connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => spawn_connection(
                Arc::clone(&hub),
                &protocol,
                listener.connection,
                check.clone(),
                stream,
                peer,
                permit,
            ),
            Some(tls) => spawn_tls(
                Arc::clone(&hub),
                Arc::clone(&protocol),
                listener.connection,
                check.clone(),
                (stream, peer, permit),
                Arc::clone(tls.server_config()),
            ),
        }
    }
    info!(listener = ?local, "stopped accepting");
}
