//! [`Server`]: listeners composed with a [`Hub`], started and stopped as one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_core::engine::{BindAuthenticator, EventListener, HubBuilder, KickPolicy, Router};
use cim_core::{Hub, RequestHandler, SessionManager};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::listener::{Listener, accept_loop};
use crate::transport::ws::HandshakeCheck;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} ({protocol}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The listener's protocol.
        protocol: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A setting is unusable (its message names the key and the value).
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The session manager or the router could not start (a cluster backend unreachable, say).
    #[error("cannot start: {0}")]
    Start(#[source] cim_core::Error),
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
            on_listening: None,
        }
    }
}

/// Called with every listener's address once all are open, before the hub starts.
pub type ListeningHook = Box<dyn FnOnce(&[(&'static str, SocketAddr)]) + Send>;

/// Composes a server.
pub struct ServerBuilder {
    hub: HubBuilder,
    listeners: Vec<Listener>,
    max_connections: usize,
    handshake: Option<Arc<dyn HandshakeCheck>>,
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

    /// Adds a listener.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
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

    /// Names and numbers this node.
    pub fn node(mut self, name: impl Into<String>, number: u16) -> Self {
        self.hub = self.hub.node(name, number);
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
        let hub = Arc::new(self.hub.build());
        let slots = Arc::new(Semaphore::new(max as usize));
        let (stop, stop_rx) = watch::channel(false);
        let mut bound = Vec::new();
        for listener in &self.listeners {
            let socket = listen(listener.addr).map_err(|source| ServerError::Bind {
                addr: listener.addr,
                protocol: listener.protocol.name(),
                source,
            })?;
            let addr = socket.local_addr().map_err(|source| ServerError::Bind {
                addr: listener.addr,
                protocol: listener.protocol.name(),
                source,
            })?;
            bound.push((socket, addr, listener.clone()));
        }
        if let Some(hook) = self.on_listening {
            let addrs: Vec<_> = bound
                .iter()
                .map(|(_, addr, l)| (l.protocol.name(), *addr))
                .collect();
            hook(&addrs);
        }
        // Every socket is open: now the parts may register this node and start their readers.
        hub.start().await.map_err(ServerError::Start)?;
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for (socket, addr, listener) in bound {
            info!(protocol = listener.protocol.name(), %addr, "listening");
            addrs.push((listener.protocol.name(), addr));
            tasks.push(tokio::spawn(accept_loop(
                socket,
                listener,
                Arc::clone(&hub),
                Arc::clone(&slots),
                self.handshake.clone(),
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

    /// The address of the first listener speaking `protocol` (`"tcp"`, `"websocket"`, `"xml"`).
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
