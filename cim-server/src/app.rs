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
use crate::settings::{DurabilitySetting, Settings, StoreBackend, socket_addr};
use cim_core::engine::{MemoryStore, MessageStore};
use cim_store::{Durability, RedbStore, SledStore};

/// A running reference server: long-connection listeners and the HTTP API.
pub struct App {
    server: RunningServer,
    expiry: Option<JoinHandle<()>>,
    http: Option<(SocketAddr, watch::Sender<bool>, JoinHandle<()>)>,
}

impl App {
    /// Opens every configured listener and starts serving.
    pub async fn start(settings: &Settings) -> Result<App, ServerError> {
        let conn = settings.connection_config();
        let mut builder = Server::builder()
            .node(settings.node.clone(), settings.node_id)
            .max_connections(settings.max_connections);
        if settings.tcp.enabled {
            builder = builder.listener(Listener {
                addr: socket_addr(&settings.tcp.host, settings.tcp.port),
                protocol: Protocol::Binary {
                    max_frame: settings.tcp.max_frame,
                },
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
            });
        }
        if settings.websocket.enabled {
            builder = builder.listener(Listener {
                addr: socket_addr(&settings.websocket.host, settings.websocket.port),
                protocol: Protocol::WebSocket(settings.ws_settings()),
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
            });
        }
        if settings.xml.enabled {
            builder = builder.listener(Listener {
                addr: socket_addr(&settings.xml.host, settings.xml.port),
                protocol: Protocol::Xml {
                    max_document: settings.xml.max_document,
                },
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
            });
        }
        let store = open_store(settings)?;
        builder = builder.store(Arc::clone(&store));
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
            let addr = socket_addr(&settings.http.host, settings.http.port);
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
        let server = builder.start().await?;
        let http = match http_socket {
            Some(socket) => {
                let addr = socket.local_addr().map_err(|source| ServerError::Bind {
                    addr: socket_addr(&settings.http.host, settings.http.port),
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
                });
                let config = HttpConfig {
                    max_body: settings.http.max_body,
                    header_timeout: Duration::from_millis(settings.http.header_timeout_ms),
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
    Ok(match s.backend {
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
