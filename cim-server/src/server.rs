//! [`Server`]: listeners composed with a [`Hub`], started and stopped as one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_core::engine::{
    Admission, BindAuthenticator, EventListener, HubBuilder, KickPolicy, Router,
};
use cim_core::{Hub, RequestHandler, SessionManager};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::gate::ListenerLimits;
use crate::listener::{Listener, accept_loop};
use crate::refusal::{RefusalLog, Refusals};
use crate::tls::TlsConfig;
use crate::transport::ws::HandshakeCheck;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} ({protocol}): {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The listener's protocol.
        protocol: &'static str,
        /// Why (in the message, and so not also its source: a report of the chain would say it
        /// twice).
        error: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TLS certificate chain or private key cannot be used.
    #[error("TLS {file} {}: {reason}", path.display())]
    Certificate {
        /// Which of the two files.
        file: crate::tls::PemFile,
        /// Its path.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is unusable (its message names the key and the value).
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The session manager or the router could not start (a cluster backend unreachable, say).
    #[error("cannot start: {0}")]
    Start(cim_core::Error),
}

/// A server: a hub and its listeners. Build one with [`Server::builder`].
pub struct Server;

impl Server {
    /// A builder with the hub's defaults and no listeners.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            hub: Hub::builder(),
            listeners: Vec::new(),
            max_connections: 100_000,
            handshake: None,
            admission: false,
            on_listening: None,
        }
    }
}

/// Called with every listener's address once all are open, before the hub starts.
pub type ListeningHook = Box<dyn FnOnce(&[(&'static str, SocketAddr)]) + Send>;

/// Composes a server.
pub struct ServerBuilder {
    hub: HubBuilder,
    listeners: Vec<(Listener, Option<TlsConfig>)>,
    max_connections: usize,
    handshake: Option<Arc<dyn HandshakeCheck>>,
    /// Whether an admission check of the caller's replaces the listeners' limits.
    admission: bool,
    on_listening: Option<ListeningHook>,
}

impl ServerBuilder {
    /// Calls `hook` with every listener's address (ports chosen) once all are open, before the
    /// hub starts (a cluster node learns there what to advertise).
    pub fn on_listening(
        mut self,
        hook: impl FnOnce(&[(&'static str, SocketAddr)]) + Send + 'static,
    ) -> Self {
        self.on_listening = Some(Box::new(hook));
        self
    }

    /// Checks every WebSocket upgrade with `check`.
    pub fn handshake_check(mut self, check: Arc<dyn HandshakeCheck>) -> Self {
        self.handshake = Some(check);
        self
    }

    /// Checks every message with `admission` before it is routed or stored, instead of the
    /// default check: the limits of this server's listeners (see
    /// [`ListenerLimits`](crate::gate::ListenerLimits)).
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.hub = self.hub.admission(admission);
        self.admission = true;
        self
    }

    /// The longest account id a bind may use, in bytes (default 128).
    pub fn max_uid_bytes(mut self, max: usize) -> Self {
        self.hub = self.hub.max_uid_bytes(max);
        self
    }

    /// Adds a listener.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push((listener, None));
        self
    }

    /// Adds a listener whose connections speak TLS with `tls`, then the listener's protocol.
    /// Its address is listed under [`Listener::tls_name`]: `tls`, `wss` or `xml+tls`.
    pub fn tls_listener(mut self, listener: Listener, tls: TlsConfig) -> Self {
        self.listeners.push((listener, Some(tls)));
        self
    }

    /// Routes requests with `key` to `handler`.
    pub fn handler(mut self, key: impl Into<String>, handler: impl RequestHandler) -> Self {
        self.hub = self.hub.handler(key, handler);
        self
    }

    /// Uses `sessions` as the session manager (default: in memory).
    pub fn sessions(mut self, sessions: Arc<dyn SessionManager>) -> Self {
        self.hub = self.hub.sessions(sessions);
        self
    }

    /// Routes messages with `router` (default: the single-node router over the session manager
    /// and the store; a cluster brings its own).
    pub fn router(mut self, router: Arc<dyn Router>) -> Self {
        self.hub = self.hub.router(router);
        self
    }

    /// Decides with `policy` what a bind does to the account's other connections (default:
    /// CIM's multi-device rule). The session manager in use applies it.
    pub fn kick_policy(mut self, policy: Arc<dyn KickPolicy>) -> Self {
        self.hub = self.hub.kick_policy(policy);
        self
    }

    /// Keeps messages for offline accounts in `store`.
    pub fn store(mut self, store: Arc<dyn cim_core::engine::MessageStore>) -> Self {
        self.hub = self.hub.store(store);
        self
    }

    /// Checks binds with `auth`.
    pub fn authenticator(mut self, auth: Arc<dyn BindAuthenticator>) -> Self {
        self.hub = self.hub.authenticator(auth);
        self
    }

    /// Adds an event listener.
    pub fn event_listener(mut self, listener: Arc<dyn EventListener>) -> Self {
        self.hub = self.hub.listener(listener);
        self
    }

    /// Names and numbers this node (0 to 255, the low bits of every message id).
    pub fn node(mut self, name: impl Into<String>, number: u8) -> Self {
        self.hub = self.hub.node(name, number);
        self
    }

    /// Gives message ids from `ids` (one with a high-water mark, say) instead of ones made for
    /// the node's number.
    pub fn message_ids(mut self, ids: cim_core::engine::MessageIds) -> Self {
        self.hub = self.hub.message_ids(ids);
        self
    }

    /// Connections accepted at once over all listeners (default 100 000); more are closed on
    /// arrival.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Opens every listener and starts accepting.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let max = u32::try_from(self.max_connections)
            .ok()
            .filter(|n| *n > 0 && (*n as usize) <= Semaphore::MAX_PERMITS)
            .ok_or_else(|| {
                ServerError::Config(format!(
                    "max_connections must be between 1 and {}, not {}",
                    u32::MAX,
                    self.max_connections
                ))
            })?;
        let mut hub = self.hub;
        if !self.admission {
            hub = hub.admission(Arc::new(ListenerLimits::of(
                self.listeners.iter().map(|(l, _)| l),
            )));
        }
        let hub = Arc::new(hub.build());
        let slots = Arc::new(Semaphore::new(max as usize));
        let (stop, stop_rx) = watch::channel(false);
        let mut bound = Vec::new();
        for (listener, tls) in &self.listeners {
            let name = listener.name(tls.is_some());
            let failed = |error| ServerError::Bind {
                addr: listener.addr,
                protocol: name,
                error,
            };
            let socket = listen(listener.addr).map_err(failed)?;
            let addr = socket.local_addr().map_err(failed)?;
            bound.push((socket, addr, listener.clone(), tls.clone()));
        }
        if let Some(hook) = self.on_listening {
            let addrs: Vec<_> = bound
                .iter()
                .map(|(_, addr, l, tls)| (l.name(tls.is_some()), *addr))
                .collect();
            hook(&addrs);
        }
        // Every socket is open: now the parts may register this node and start their readers.
        hub.start().await.map_err(ServerError::Start)?;
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        // One count of refusals for every listener, as the limit is theirs together.
        let refusals = Arc::new(std::sync::Mutex::new(RefusalLog::new(
            "connections refused: max_connections reached",
            max as usize,
        )));
        for (socket, addr, listener, tls) in bound {
            let name = listener.name(tls.is_some());
            hub.register_listener(name, listener.protocol.name());
            info!(protocol = name, %addr, "listening");
            addrs.push((name, addr));
            // The listener's counters are registered now, before it accepts anything.
            let refused = Refusals::new(name);
            tasks.push(tokio::spawn(accept_loop(
                socket,
                (listener, tls, refused),
                Arc::clone(&hub),
                Arc::clone(&slots),
                self.handshake.clone(),
                Arc::clone(&refusals),
                stop_rx.clone(),
            )));
        }
        Ok(RunningServer {
            hub,
            addrs,
            stop,
            tasks,
            slots,
            max,
        })
    }
}

/// A started server.
pub struct RunningServer {
    hub: Arc<Hub>,
    addrs: Vec<(&'static str, SocketAddr)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    slots: Arc<Semaphore>,
    max: u32,
}

impl RunningServer {
    /// The hub: sessions, pushes.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Where each listener listens, as `(protocol name, address)`.
    pub fn addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.addrs
    }

    /// The address of the first listener speaking `protocol` (`"tcp"`, `"websocket"`, `"xml"`,
    /// and over TLS `"tls"`, `"wss"`, `"xml+tls"`).
    pub fn addr(&self, protocol: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        (self.max as usize).saturating_sub(self.slots.available_permits())
    }

    /// Stops accepting new connections on every listener; those open stay (a drain closes them
    /// at its own pace, [`shutdown`](Self::shutdown) at once).
    pub fn stop_accepting(&self) {
        self.stop.send_replace(true);
    }

    /// Waits up to `timeout` until no connection is open; returns whether none is.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.slots.acquire_many(self.max))
            .await
            .is_ok_and(|all| all.is_ok())
    }

    /// Stops accepting, asks every connection to write what is queued and close, and waits up
    /// to `grace` for them; then stops the router and the session manager and makes the store
    /// durable. Returns whether all connections closed in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.hub.shutdown();
        let all_closed = tokio::time::timeout(grace, self.slots.acquire_many(self.max))
            .await
            .is_ok();
        if let Err(e) = self.hub.stop().await {
            tracing::warn!(error = %e, "stopping the router, the session manager or the store failed");
        }
        info!(all_closed, "shut down");
        all_closed
    }
}

/// Pending connections the kernel queues for each listener (capped by `net.core.somaxconn`):
/// enough for a reconnect storm of thousands of clients without dropped SYNs.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
