//! [`App`]: the reference server assembled from [`Settings`] — what the `cim-server` binary
//! runs, usable in-process too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{TokenAuthenticator, TokenHandshake, TokenSigner};
use crate::http::{self, HttpConfig, HttpState};
use crate::listener::{Listener, Protocol};
use crate::server::{RunningServer, Server, ServerError};
use crate::settings::{DurabilitySetting, Settings, StoreBackend};
use cim_cluster::{Cluster, ClusterConfig};
use cim_core::engine::{Dispatch, LocalDispatch, MemoryStore, MessageStore, NodeAddrs};
use cim_store::{Durability, RedbStore, SledStore};

/// A running reference server: long-connection listeners and the HTTP API.
pub struct App {
    server: RunningServer,
    dispatch: Arc<dyn Dispatch>,
    cluster: Option<Cluster>,
    expiry: Option<JoinHandle<()>>,
    http: Option<(SocketAddr, watch::Sender<bool>, JoinHandle<()>)>,
}

impl App {
    /// Opens every configured listener and starts serving.
    pub async fn start(settings: &Settings) -> Result<App, ServerError> {
        let addrs = settings.resolve().await?;
        let conn = settings.connection_config();
        let mut builder = Server::builder()
            .node(settings.node.clone(), settings.node_id)
            .max_connections(settings.max_connections);
        if settings.tcp.enabled {
            builder = builder.listener(Listener {
                addr: addrs.tcp,
                protocol: Protocol::Binary {
                    max_frame: settings.tcp.max_frame,
                },
                connection: conn,
            });
        }
        if settings.websocket.enabled {
            builder = builder.listener(Listener {
                addr: addrs.websocket,
                protocol: Protocol::WebSocket(settings.ws_settings()),
                connection: conn,
            });
        }
        if settings.xml.enabled {
            builder = builder.listener(Listener {
                addr: addrs.xml,
                protocol: Protocol::Xml {
                    max_document: settings.xml.max_frame,
                    flash_policy: settings.xml.flash_policy,
                },
                connection: conn,
            });
        }
        let cluster = join_cluster(settings).await?;
        let store = match &cluster {
            Some(c) if settings.store_backend() == StoreBackend::Redis => c.store(),
            _ => open_store(settings)?,
        };
        builder = builder.store(Arc::clone(&store));
        if let Some(c) = &cluster {
            builder = builder
                .sessions(c.sessions())
                .router(c.router())
                .event_listener(c.delivery_listener());
        }
        let signer = (!settings.auth.token_secret.is_empty())
            .then(|| TokenSigner::new(&settings.auth.token_secret));
        if let Some(signer) = &signer {
            builder = builder.authenticator(Arc::new(TokenAuthenticator(signer.clone())));
            if settings.websocket.require_token {
                builder = builder.handshake_check(Arc::new(TokenHandshake(signer.clone())));
            }
        }
        // Open the HTTP socket first, so a taken port fails start-up before anything runs.
        let http_socket = if settings.http.enabled {
            let addr = addrs.http;
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr,
                    protocol: "http",
                    source,
                })?;
            Some(socket)
        } else {
            None
        };
        // What dispatch names: the configured addresses, else where the listeners listen.
        let http_addr = http_socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let advertised = Arc::new(std::sync::Mutex::new(NodeAddrs {
            node: settings.node.clone(),
            tcp: settings.cluster.advertise_tcp.clone(),
            websocket: settings.cluster.advertise_websocket.clone(),
            http: if settings.cluster.advertise_http.is_empty() {
                http_addr
            } else {
                settings.cluster.advertise_http.clone()
            },
        }));
        {
            let advertised = Arc::clone(&advertised);
            let cluster = cluster.clone();
            builder = builder.on_listening(move |addrs| {
                let mut a = advertised
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (protocol, addr) in addrs {
                    let slot = match *protocol {
                        "tcp" => &mut a.tcp,
                        "websocket" => &mut a.websocket,
                        _ => continue,
                    };
                    if slot.is_empty() {
                        *slot = addr.to_string();
                    }
                }
                if let Some(c) = &cluster {
                    c.advertise(a.clone());
                }
            });
        }
        let server = builder.start().await?;
        let dispatch: Arc<dyn Dispatch> = match &cluster {
            Some(c) => c.dispatch(),
            None => Arc::new(LocalDispatch::new(
                advertised
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            )),
        };
        let http = match http_socket {
            Some(socket) => {
                let addr = socket.local_addr().map_err(|source| ServerError::Bind {
                    addr: addrs.http,
                    protocol: "http",
                    source,
                })?;
                let state = Arc::new(HttpState {
                    hub: Arc::clone(server.hub()),
                    api_key: (!settings.http.api_key.is_empty())
                        .then(|| settings.http.api_key.clone()),
                    signer,
                    token_ttl_secs: settings.auth.token_ttl_secs,
                    max_batch: settings.http.max_batch,
                    max_uid_bytes: settings.auth.max_uid_bytes,
                    dispatch: Arc::clone(&dispatch),
                });
                let config = HttpConfig {
                    max_body: settings.http.max_body,
                    header_timeout: Duration::from_millis(settings.http.header_timeout_ms),
                    body_timeout: Duration::from_millis(settings.http.body_timeout_ms),
                    max_head: settings.http.max_head,
                    max_headers: settings.http.max_headers,
                    max_connections: settings.http.max_connections,
                };
                let router = http::router(state, &config);
                let (stop, stop_rx) = watch::channel(false);
                let grace = Duration::from_millis(settings.shutdown.grace_ms);
                let task = tokio::spawn(http::serve(socket, router, config, stop_rx, grace));
                Some((addr, stop, task))
            }
            None => None,
        };
        let expiry = (settings.store.max_age_secs > 0).then(|| {
            let max_age = Duration::from_secs(settings.store.max_age_secs);
            let every = Duration::from_secs(settings.store.expire_every_secs);
            tokio::spawn(expire_loop(store, max_age, every))
        });
        Ok(App {
            server,
            dispatch,
            cluster,
            expiry,
            http,
        })
    }

    /// The long-connection server.
    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// Every listening address as `(protocol, address)`, HTTP included.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut all = self.server.addrs().to_vec();
        if let Some((addr, _, _)) = &self.http {
            all.push(("http", *addr));
        }
        all
    }

    /// Stops accepting everywhere, lets HTTP requests in flight finish, flushes and closes every
    /// connection; waits up to `grace`. Returns whether everything closed in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        // Dispatch names this node no more while it drains.
        if self.cluster.is_some()
            && let Err(e) = self.dispatch.set_draining(true).await
        {
            tracing::warn!(error = %e, "marking this node draining failed");
        }
        if let Some(expiry) = self.expiry {
            expiry.abort();
        }
        if let Some((_, stop, task)) = self.http {
            stop.send_replace(true);
            let _ = tokio::time::timeout(grace, task).await;
        }
        self.server.shutdown(grace).await
    }
}

/// The node's share of the cluster, when `cluster.redis` is set (Redis must answer).
async fn join_cluster(settings: &Settings) -> Result<Option<Cluster>, ServerError> {
    let c = &settings.cluster;
    if !c.enabled() {
        return Ok(None);
    }
    let mut config = ClusterConfig::new(&c.redis, &settings.node, settings.node_id);
    config.prefix.clone_from(&c.prefix);
    config.heartbeat = Duration::from_millis(c.heartbeat_ms);
    config.deadline = Duration::from_millis(c.node_deadline_ms);
    config.response_timeout = Duration::from_millis(c.timeout_ms);
    config.handover_timeout = Duration::from_millis(c.handover_timeout_ms);
    config.max_per_account = settings.store.max_per_account;
    let cluster = Cluster::connect(config)
        .await
        .map_err(|e| ServerError::Config(format!("cluster.redis = {:?}: {e}", redact(&c.redis))))?;
    Ok(Some(cluster))
}

/// A Redis URL with its password hidden.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => {
            format!("{scheme}://********{}", url.get(at..).unwrap_or(""))
        }
        _ => url.to_owned(),
    }
}

fn open_store(settings: &Settings) -> Result<Arc<dyn MessageStore>, ServerError> {
    let s = &settings.store;
    let durability = match s.durability {
        DurabilitySetting::Always => Durability::Always,
        DurabilitySetting::Interval => {
            Durability::Interval(Duration::from_millis(s.flush_interval_ms))
        }
        DurabilitySetting::Os => Durability::Os,
    };
    let failed = |e: &dyn std::fmt::Display| ServerError::Config(e.to_string());
    Ok(match settings.store_backend() {
        StoreBackend::Redis | StoreBackend::Auto => {
            return Err(ServerError::Config(
                "store.backend = \"redis\" needs cluster.redis".into(),
            ));
        }
        StoreBackend::Memory => Arc::new(MemoryStore::new(s.max_per_account)),
        StoreBackend::Redb => Arc::new(
            RedbStore::open(&s.path, durability, s.max_per_account).map_err(|e| failed(&e))?,
        ),
        StoreBackend::Sled => Arc::new(
            SledStore::open(&s.path, durability, s.max_per_account).map_err(|e| failed(&e))?,
        ),
    })
}

/// Deletes stored messages older than `max_age`, every `every`.
async fn expire_loop(store: Arc<dyn MessageStore>, max_age: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let cut = cim_core::now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        match store.expire(cut).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                expired = n,
                "stored messages past store.max_age_secs deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "expiring stored messages failed"),
        }
    }
}
