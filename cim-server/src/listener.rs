//! Listeners: a socket, the protocol spoken on it, and the settings of its connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_codec_xml::XmlCodec;
use cim_core::engine::{
    ConnectionConfig, serve_connection, spawn_connection as spawn_connection_task,
};
use cim_core::{Hub, StreamCodec};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::access::{self, Access, Refused};
use crate::refusal::{Reason, RefusalLog, Refusals, refuse_busy};
use crate::tls::{self, TlsConfig};
use crate::transport::ws::HandshakeCheck;
use crate::transport::{StreamTransport, TcpTransport, WsSettings, WsTransport, ws};

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
    /// Entries accepted in one decoded `data` map by the codecs the listener makes (default
    /// [`DataMap::DEFAULT_MAX_ENTRIES`](cim_core::DataMap::DEFAULT_MAX_ENTRIES)); a frame with
    /// more closes its connection. (A WebSocket listener's codecs of its own,
    /// [`WsCodecs::Custom`](crate::WsCodecs::Custom), keep their own limits.)
    pub max_data_entries: usize,
    /// Who may connect, and where the client's real address comes from (a PROXY header,
    /// forwarding headers): see [`access`](crate::access). Default: everyone, as they connect.
    pub access: Access,
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
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Access::default(),
        }
    }

    /// WebSocket on `addr` with default settings (path `/`, mode detected per connection).
    pub fn websocket(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::WebSocket(WsSettings::default()),
            connection: ConnectionConfig::default(),
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Access::default(),
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
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Access::default(),
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

    /// Sets the limit of entries in one decoded `data` map.
    pub fn with_max_data_entries(mut self, max: usize) -> Self {
        self.max_data_entries = max;
        self
    }

    /// Sets who may connect and where the client's address comes from.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
}

/// What every connection of one listener is started with.
struct Accepting {
    hub: Arc<Hub>,
    /// The protocol, a WebSocket listener's codecs made.
    protocol: Protocol,
    /// Entries accepted in one decoded `data` map.
    max_entries: usize,
    /// The connections' settings, the listener's name among them.
    conf: ConnectionConfig,
    check: Option<Arc<dyn HandshakeCheck>>,
    access: Access,
    refusals: Refusals,
}

/// Starts the task of one accepted connection on `stream` (a TCP stream, or TLS over one).
/// Each protocol gets a task of its own shape, so that a TCP connection's task is not as large
/// as a WebSocket one's.
fn spawn_connection<S: Accepted>(
    acc: &Arc<Accepting>,
    conf: ConnectionConfig,
    stream: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let hub = Arc::clone(&acc.hub);
    match &acc.protocol {
        &Protocol::Binary { max_frame } => {
            let codec = BinaryCodec::with_max_body(max_frame).with_max_entries(acc.max_entries);
            stream.spawn_stream(codec, Launch(hub, conf, peer, permit));
        }
        &Protocol::Xml {
            max_document,
            flash_policy,
        } => {
            let codec = XmlCodec::with_max_document(max_document).with_max_entries(acc.max_entries);
            if flash_policy {
                crate::flash::spawn(hub, stream, codec, conf, peer, permit);
            } else {
                stream.spawn_stream(codec, Launch(hub, conf, peer, permit));
            }
        }
        Protocol::WebSocket(_) => {
            let acc = Arc::clone(acc);
            tokio::spawn(async move {
                serve_websocket(&acc, conf, stream, peer).await;
                drop(permit);
            });
        }
    }
}

/// The upgrade of a WebSocket connection from `peer`, then the connection. Forwarding headers
/// from a trusted proxy name the client; it is checked against the lists before the upgrade is
/// answered.
async fn serve_websocket<S>(acc: &Accepting, conf: ConnectionConfig, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Protocol::WebSocket(settings) = &acc.protocol else {
        return;
    };
    let mut client = peer;
    let forwarded = |request: &ws::HandshakeRequest| {
        client = acc.access.forwarded_client(
            peer,
            request
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        if client == peer {
            return Ok(());
        }
        debug!(%peer, %client, "client address from the forwarding headers");
        acc.access.admits(client.ip()).map_err(|why| {
            let refused = Refused::Denied { addr: client, why };
            acc.refusals.refuse(Reason::Denied, peer, &refused);
            "address not allowed".to_owned()
        })
    };
    // The handshake's future is boxed: it is done before the connection idles.
    match Box::pin(ws::accept_checked(stream, settings, forwarded)).await {
        Ok(Some((socket, request))) => {
            let transport = WsTransport::new(socket, settings);
            if let Some(Err(why)) = acc.check.as_ref().map(|c| c.check(&request)) {
                info!(peer = %client, reason = %why, "websocket handshake refused");
                transport.refuse(settings.handshake_timeout).await;
            } else {
                serve_connection(Arc::clone(&acc.hub), transport, conf, client).await;
            }
        }
        Ok(None) => {}
        Err(e) => debug!(peer = %client, error = %e, "websocket upgrade failed"),
    }
}

/// Starts the task of a connection that needs something done before its protocol starts: its
/// PROXY header read (or looked for), then its address checked; then, with `tls`, the TLS
/// handshake. It is bounded by the bind timeout (and counted against it), in a task of its own;
/// then the connection's own task starts, the size of a plain one (plus the TLS stream).
fn spawn_prelude(
    acc: Arc<Accepting>,
    (mut stream, peer, permit): (TcpStream, SocketAddr, OwnedSemaphorePermit),
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut conf = acc.conf;
        let limit = conf.timers.bind_timeout;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let client = if acc.access.proxy_protocol {
            let read = access::client_of(&mut stream, peer, &acc.access);
            match tokio::time::timeout(limit, read).await {
                Ok(Ok(client)) => client,
                Ok(Err(refused)) => return refuse(&acc, stream, peer, &refused),
                Err(_) if acc.access.trusts(peer.ip()) => {
                    let why =
                        format!("PROXY header not whole within the bind timeout ({limit_ms} ms)");
                    acc.refusals.refuse(Reason::ProxyHeader, peer, &why);
                    return;
                }
                Err(_) => {
                    debug!(%peer, bind_timeout_ms = limit_ms, "nothing sent within the bind timeout; connection closed");
                    return;
                }
            }
        } else {
            peer
        };
        if client != peer {
            debug!(%peer, %client, "client address from the PROXY header");
        }
        let Some(tls) = tls else {
            conf.timers.bind_timeout = limit.saturating_sub(started.elapsed());
            return spawn_connection(&acc, conf, stream, client, permit);
        };
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tls::accept(stream, tls)).await {
            Ok(Ok(stream)) => {
                conf.timers.bind_timeout = limit.saturating_sub(started.elapsed());
                spawn_connection(&acc, conf, stream, client, permit);
            }
            Ok(Err(e)) => {
                info!(peer = %client, error = %e, "TLS handshake failed; connection closed")
            }
            Err(_) => info!(
                peer = %client,
                bind_timeout_ms = limit_ms,
                "TLS handshake not done within the bind timeout; connection closed"
            ),
        }
    });
}

/// Closes a connection refused before its protocol started, counted and logged (rate-limited);
/// a denied WebSocket client is told why, as HTTP.
fn refuse(acc: &Accepting, stream: TcpStream, peer: SocketAddr, refused: &Refused) {
    let reason = match refused {
        Refused::Denied { .. } => Reason::Denied,
        Refused::Untrusted(_) => Reason::UntrustedProxy,
        Refused::Header(_) => Reason::ProxyHeader,
        Refused::Gone(e) => {
            debug!(%peer, error = %e, "connection closed before sending anything");
            return;
        }
    };
    acc.refusals.refuse(reason, peer, refused);
    let answer = match (refused, &acc.protocol) {
        (Refused::Denied { .. }, Protocol::WebSocket(_)) => DENIED_HTTP,
        _ => b"",
    };
    refuse_busy(stream, answer);
}

/// What a WebSocket client whose address is denied is answered.
const DENIED_HTTP: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\naddress not allowed\n";

/// What a stream connection's task starts with: its node, its settings, its peer and its
/// permit (which goes with the connection).
struct Launch(Arc<Hub>, ConnectionConfig, SocketAddr, OwnedSemaphorePermit);

/// A stream a listener accepted: plain TCP, or TLS over it.
trait Accepted: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Starts the task of a connection on a stream protocol over this stream.
    fn spawn_stream<C: StreamCodec + Sync>(self, codec: C, launch: Launch);
}

/// Plain TCP: the connection parks when it idles.
impl Accepted for TcpStream {
    fn spawn_stream<C: StreamCodec + Sync>(self, codec: C, launch: Launch) {
        let Launch(hub, conf, peer, permit) = launch;
        let slot = Slot::of(permit);
        spawn_connection_task(hub, TcpTransport::new(self, codec), conf, peer, slot);
    }
}

/// A connection's place under `max_connections`, as one pointer (a permit is two words, and a
/// parked connection keeps its own): given back when dropped.
struct Slot(Arc<Semaphore>);

impl Slot {
    /// The slot of `permit`, one of the accept loop's (each holds one).
    fn of(permit: OwnedSemaphorePermit) -> Self {
        let slots = Arc::clone(permit.semaphore());
        debug_assert_eq!(permit.num_permits(), 1);
        permit.forget();
        Slot(slots)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// TLS: the connection keeps its task (its TLS state is the stream's).
impl<S> Accepted for crate::tls::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn spawn_stream<C: StreamCodec + Sync>(self, codec: C, launch: Launch) {
        let Launch(hub, conf, peer, permit) = launch;
        let conn = serve_connection(hub, StreamTransport::new(self, codec), conf, peer);
        // `map`, not an async block: a block would hold the future twice over.
        tokio::spawn(conn.map(move |()| drop(permit)));
    }
}

/// Accepts connections until `stop` turns true. Each connection holds a permit of `slots`;
/// with none left, a new connection is closed at once (and logged). With `tls`, every
/// connection starts with a TLS handshake.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    (listener, tls, refused): (Listener, Option<TlsConfig>, Refusals),
    hub: Arc<Hub>,
    slots: Arc<Semaphore>,
    check: Option<Arc<dyn HandshakeCheck>>,
    refusals: Arc<std::sync::Mutex<RefusalLog>>,
    mut stop: watch::Receiver<bool>,
) {
    let local = socket.local_addr().ok();
    let name = listener.name(tls.is_some());
    let acc = Arc::new(Accepting {
        hub,
        // A WebSocket listener's codecs are made once, with the listener's limit of entries.
        protocol: match listener.protocol {
            Protocol::WebSocket(ws) => Protocol::WebSocket(WsSettings {
                codecs: ws.codecs.resolve(listener.max_data_entries),
                ..ws
            }),
            other => other,
        },
        max_entries: listener.max_data_entries,
        conf: ConnectionConfig {
            protocol: name,
            ..listener.connection
        },
        check,
        access: listener.access,
        refusals: refused,
    });
    // A WebSocket client is told why, as HTTP; a stream client is closed (its protocol has no
    // way to say it).
    let busy: &[u8] = match acc.protocol {
        Protocol::WebSocket(_) => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nmax_connections reached; retry\r\n",
        _ => b"",
    };
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
        // Without a PROXY header to wait for, the address is the client's: checked at once.
        if !acc.access.proxy_protocol
            && let Err(why) = acc.access.admits(peer.ip())
        {
            refuse(&acc, stream, peer, &Refused::Denied { addr: peer, why });
            continue;
        }
        let permit: OwnedSemaphorePermit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                debug!(%peer, "connection limit reached; connection refused");
                // Counted before the close, so that a client that sees the close finds the
                // refusal already counted.
                acc.refusals.count(Reason::MaxConnections);
                refuse_busy(stream, busy);
                refusals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .refused();
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None if !acc.access.proxy_protocol => {
                spawn_connection(&acc, acc.conf, stream, peer, permit);
            }
            tls => spawn_prelude(
                Arc::clone(&acc),
                (stream, peer, permit),
                tls.as_ref().map(|t| Arc::clone(t.server_config())),
            ),
        }
    }
    info!(listener = ?local, "stopped accepting");
}
