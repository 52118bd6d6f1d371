//! [`App`]: the reference server assembled from [`Settings`] — what the `cim-server` binary
//! runs, usable in-process too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{TokenAuthenticator, TokenHandshake, TokenSigner};
use crate::drain::{DrainReport, DrainSwitch};
#[cfg(feature = "http")]
use crate::http::{self, HttpConfig, HttpState};
use crate::listener::{Listener, Protocol};
use crate::server::{RunningServer, Server, ServerBuilder, ServerError};
use crate::settings::{ListenerSettings, Settings, SettingsError, StoreBackend};
use crate::tls::{PemFile, TlsConfig};
use cim_cluster::{Cluster, ClusterConfig};
use cim_core::engine::{Dispatch, LocalDispatch, MemoryStore, MessageIds, MessageStore, NodeAddrs};
use cim_store::StoreOptions;

/// A running reference server: long-connection listeners and (feature `http`) the HTTP API.
pub struct App {
    server: RunningServer,
    /// Folds the metrics' histograms every few seconds (between scrapes too).
    upkeep: Option<JoinHandle<()>>,
    /// The TLS configuration of each listener that has one, by section.
    tls: Vec<(&'static str, TlsConfig)>,
    dispatch: Arc<dyn Dispatch>,
    cluster: Option<Cluster>,
    expiry: Option<JoinHandle<()>>,
    http: Option<(SocketAddr, watch::Sender<bool>, JoinHandle<()>)>,
    /// Flipped by `POST /api/v1/admin/drain` (and by [`drain`](App::drain) itself).
    drain: DrainSwitch,
}

impl App {
    /// Opens every configured listener and starts serving. With the `http` feature the
    /// process's metrics recorder is installed first (see `crate::metrics::install`), so that
    /// every part registers its series with it; without it no recorder is installed (an
    /// embedding program may install its own) and `http.enabled = true` is refused.
    pub async fn start(settings: &Settings) -> Result<App, ServerError> {
        settings.http_built()?;
        let addrs = settings.resolve().await?;
        #[cfg(feature = "http")]
        let recorder = crate::metrics::install();
        let conn = settings.connection_config();
        let node = settings.node_number().ok_or_else(|| {
            ServerError::Config(format!("node_id = {} must be 0 to 255", settings.node_id))
        })?;
        let cluster = join_cluster(settings).await?;
        let store = match &cluster {
            Some(c) if settings.store_backend() == StoreBackend::Redis => c.store(),
            _ => open_store(settings)?,
        };
        let mut builder = Server::builder()
            .node(settings.node.clone(), node)
            .message_ids(message_ids(settings, node)?)
            .max_connections(settings.max_connections)
            .max_uid_bytes(settings.auth.max_uid_bytes);
        // Certificates first: a file that cannot be used stops start-up before any socket opens.
        let mut tls = Vec::new();
        for (section, l) in [("tcp", &settings.tcp), ("websocket", &settings.websocket)] {
            if let Some(config) = load_tls(section, l)? {
                tls.push((section, config));
            }
        }
        let tls_of = |section: &str| {
            tls.iter()
                .find(|(s, _)| *s == section)
                .map(|(_, config)| config.clone())
        };
        if settings.tcp.enabled {
            let listener = Listener {
                addr: addrs.tcp,
                protocol: Protocol::Binary {
                    max_frame: settings.tcp.max_frame,
                },
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
                access: settings.tcp.access(),
            };
            builder = add_listener(builder, listener, tls_of("tcp"), addrs.tcp_tls);
        }
        if settings.websocket.enabled {
            let listener = Listener {
                addr: addrs.websocket,
                protocol: Protocol::WebSocket(settings.ws_settings()),
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
                access: settings.websocket.access(),
            };
            builder = add_listener(builder, listener, tls_of("websocket"), addrs.websocket_tls);
        }
        if settings.xml.enabled {
            builder = builder.listener(Listener {
                addr: addrs.xml,
                protocol: Protocol::Xml {
                    max_document: settings.xml.max_frame,
                    flash_policy: settings.xml.flash_policy,
                },
                connection: conn,
                max_data_entries: settings.connection.max_data_entries,
                access: settings.xml.access(),
            });
        }
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
        if !cfg!(feature = "http") {
            tracing::info!(
                "this cim-server is built without the `http` feature: no HTTP API (http.enabled \
                 is off)"
            );
        }
        let http_socket = if settings.http.enabled {
            let addr = addrs.http;
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|error| ServerError::Bind {
                    addr,
                    protocol: "http",
                    error,
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
        let advertise = &settings.cluster;
        let advertised = Arc::new(std::sync::Mutex::new(NodeAddrs {
            node: settings.node.clone(),
            tcp: advertise.advertise_tcp.clone(),
            websocket: advertise.advertise_websocket.clone(),
            http: if advertise.advertise_http.is_empty() {
                http_addr
            } else {
                advertise.advertise_http.clone()
            },
            tls: advertise.advertise_tls.clone(),
            wss: advertise.advertise_wss.clone(),
            xml: advertise.advertise_xml.clone(),
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
                        "tls" => &mut a.tls,
                        "wss" => &mut a.wss,
                        "xml" => &mut a.xml,
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
        let drain = DrainSwitch::new(Duration::from_millis(settings.shutdown.drain_ms));
        #[cfg(not(feature = "http"))]
        let http = {
            // Refused above (`http_built`): without the feature the socket is never opened.
            let _ = (http_socket, signer);
            None
        };
        #[cfg(feature = "http")]
        let http = match http_socket {
            Some(socket) => {
                let addr = socket.local_addr().map_err(|error| ServerError::Bind {
                    addr: addrs.http,
                    protocol: "http",
                    error,
                })?;
                let state = Arc::new(HttpState {
                    hub: Arc::clone(server.hub()),
                    api_key: (!settings.http.api_key.is_empty())
                        .then(|| settings.http.api_key.clone()),
                    signer,
                    token_ttl_secs: settings.auth.token_ttl_secs,
                    max_batch: settings.http.max_batch,
                    max_uid_bytes: settings.auth.max_uid_bytes,
                    metrics: recorder.clone(),
                    metrics_key: (!settings.http.metrics_key.is_empty())
                        .then(|| settings.http.metrics_key.clone()),
                    metrics_open_on_loopback: settings.http.metrics_open_on_loopback,
                    store_path: matches!(
                        settings.store_backend(),
                        StoreBackend::Redb | StoreBackend::Sled
                    )
                    .then(|| settings.store.path.clone()),
                    console: settings.http.console,
                    dispatch: Arc::clone(&dispatch),
                    drain: drain.clone(),
                });
                let config = HttpConfig {
                    max_body: settings.http.max_body,
                    header_timeout: Duration::from_millis(settings.http.header_timeout_ms),
                    body_timeout: Duration::from_millis(settings.http.body_timeout_ms),
                    max_head: settings.http.max_head,
                    max_headers: settings.http.max_headers,
                    max_connections: settings.http.max_connections,
                    access: settings.http.access(),
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
        #[cfg(feature = "http")]
        let upkeep = recorder.map(|handle| tokio::spawn(upkeep_loop(handle)));
        #[cfg(not(feature = "http"))]
        let upkeep = None;
        Ok(App {
            server,
            upkeep,
            tls,
            dispatch,
            cluster,
            expiry,
            http,
            drain,
        })
    }

    /// Completes once a drain is asked for over the HTTP API (`POST /api/v1/admin/drain`); the
    /// binary then runs [`drain`](Self::drain). An embedding program that wants the endpoint to
    /// act waits on this too.
    pub async fn drain_requested(&self) {
        self.drain.wait().await;
    }

    /// Whether a drain was asked for (or is running).
    pub fn is_draining(&self) -> bool {
        self.drain.requested()
    }

    /// Drains this node (lame duck): dispatch names it no more, from now on; it stops accepting
    /// connections; it closes the open ones spread evenly over `window` (each writes what is
    /// queued first; what is still queued for its account, or sent to it meanwhile, is routed
    /// to the account's other connections or stored, as at any close), so that their clients
    /// reconnect elsewhere at a steady rate; then it waits up to `grace` for them to end. The
    /// HTTP API keeps answering throughout. Call [`shutdown`](Self::shutdown) after it: in a
    /// cluster that deregisters the node. Cancelling it leaves the rest to the shutdown.
    pub async fn drain(&self, window: Duration, grace: Duration) -> DrainReport {
        self.drain.request();
        if let Err(e) = self.dispatch.set_draining(true).await {
            tracing::warn!(error = %e, "marking this node draining failed");
        }
        self.server.stop_accepting();
        let handles = self.server.hub().begin_drain();
        let connections = handles.len();
        tracing::info!(
            connections,
            window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            "draining: out of dispatch, no longer accepting; closing the connections"
        );
        let rounds = crate::drain::close_spread(handles, window).await;
        let closing_time = rounds.last().map(|(at, _)| *at).unwrap_or_default();
        self.server.wait_closed(grace).await;
        let report = DrainReport {
            connections,
            closing_time,
            max_per_second: crate::drain::max_per_second(&rounds),
            left_open: self.server.connections(),
        };
        tracing::info!(
            connections,
            closing_ms = u64::try_from(closing_time.as_millis()).unwrap_or(u64::MAX),
            max_per_second = report.max_per_second,
            left_open = report.left_open,
            "drained"
        );
        report
    }

    /// Reads every TLS listener's certificate chain and key again: handshakes from now on
    /// present the new certificate, connections already made go on as they are. A listener
    /// whose files cannot be used keeps its certificate; the error (naming the key and the
    /// path) is logged. Returns whether every listener's files were taken.
    pub fn reload_tls(&self) -> bool {
        let mut all = true;
        for (section, config) in &self.tls {
            match config.reload() {
                Ok(()) => tracing::info!(
                    listener = section,
                    cert = %config.cert_path().display(),
                    "TLS certificate reloaded"
                ),
                Err(e) => {
                    all = false;
                    tracing::warn!(
                        listener = section,
                        error = %tls_setting_error(section, e),
                        "TLS certificate not reloaded; the one in use stays"
                    );
                }
            }
        }
        all
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
        if let Some(upkeep) = self.upkeep {
            upkeep.abort();
        }
        if let Some((_, stop, task)) = self.http {
            stop.send_replace(true);
            let _ = tokio::time::timeout(grace, task).await;
        }
        self.server.shutdown(grace).await
    }
}

/// The TLS configuration of listener `section`, when it is on and has TLS.
fn load_tls(section: &str, l: &ListenerSettings) -> Result<Option<TlsConfig>, ServerError> {
    if !l.enabled || !l.tls.enabled() {
        return Ok(None);
    }
    TlsConfig::from_pem_files(&l.tls.cert, &l.tls.key)
        .map(Some)
        .map_err(|e| tls_setting_error(section, e))
}

/// A certificate error as a configuration error naming the key (`tcp.tls.cert`) and the path.
fn tls_setting_error(section: &str, e: ServerError) -> ServerError {
    match e {
        ServerError::Certificate { file, path, reason } => {
            let key = match file {
                PemFile::Cert => "cert",
                PemFile::Key => "key",
            };
            ServerError::Settings(SettingsError::Invalid {
                key: format!("{section}.tls.{key}"),
                value: format!("{:?}", path.display().to_string()),
                reason,
            })
        }
        other => other,
    }
}

/// Adds `listener`: plain; or TLS on its own port; or plain, with a TLS listener of the same
/// protocol on `beside`.
fn add_listener(
    builder: ServerBuilder,
    listener: Listener,
    tls: Option<TlsConfig>,
    beside: Option<SocketAddr>,
) -> ServerBuilder {
    match (tls, beside) {
        (None, _) => builder.listener(listener),
        (Some(tls), None) => builder.tls_listener(listener, tls),
        (Some(tls), Some(addr)) => {
            let secure = Listener {
                addr,
                ..listener.clone()
            };
            builder.listener(listener).tls_listener(secure, tls)
        }
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
    let options = StoreOptions::new(s.durability, s.max_per_account)
        .flush_interval(Duration::from_millis(s.flush_interval_ms))
        .read_threads(s.read_threads);
    let failed = |e: &dyn std::fmt::Display| bad_store_path(&s.path, e);
    Ok(match settings.store_backend() {
        StoreBackend::Redis | StoreBackend::Auto => {
            return Err(ServerError::Config(
                "store.backend = \"redis\" needs cluster.redis".into(),
            ));
        }
        StoreBackend::Memory => Arc::new(MemoryStore::new(s.max_per_account)),
        #[cfg(feature = "redb")]
        StoreBackend::Redb => {
            Arc::new(cim_store::RedbStore::open(&s.path, options).map_err(|e| failed(&e))?)
        }
        #[cfg(feature = "sled")]
        StoreBackend::Sled => {
            Arc::new(cim_store::SledStore::open(&s.path, options).map_err(|e| failed(&e))?)
        }
        #[allow(unreachable_patterns)] // a backend this build leaves out
        other => {
            let _ = (options, failed);
            return Err(ServerError::Settings(SettingsError::Invalid {
                key: "store.backend".into(),
                value: format!("{:?}", other.name()),
                reason: format!(
                    "this build has no {} store (cim-server's feature `{}`)",
                    other.name(),
                    other.name()
                ),
            }));
        }
    })
}

/// `store.path` names a directory the store (or its message-id file) cannot use: why.
fn bad_store_path(path: &std::path::Path, why: &dyn std::fmt::Display) -> ServerError {
    ServerError::Settings(SettingsError::Invalid {
        key: "store.path".into(),
        value: format!("{:?}", path.display().to_string()),
        reason: why.to_string(),
    })
}

/// The node's message ids: with a store on disk, their high-water mark lives in the store's
/// directory, so ids keep increasing across restarts; with the memory store they start from the
/// clock.
fn message_ids(settings: &Settings, node: u8) -> Result<MessageIds, ServerError> {
    let s = &settings.store;
    match settings.store_backend() {
        StoreBackend::Memory => Ok(MessageIds::new(node)),
        StoreBackend::Redb | StoreBackend::Sled | StoreBackend::Redis | StoreBackend::Auto => {
            MessageIds::open(node, &s.path).map_err(|e| bad_store_path(&s.path, &e))
        }
    }
}

/// How often the metrics' histograms are folded into their buckets: the recorder keeps each
/// sample until then, so this bounds what it holds between scrapes.
#[cfg(feature = "http")]
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[cfg(feature = "http")]
async fn upkeep_loop(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Deletes stored messages older than `max_age`, every `every`.
async fn expire_loop(store: Arc<dyn MessageStore>, max_age: Duration, every: Duration) {
    let expired = metrics::counter!(
        cim_core::engine::metrics::MESSAGES_DROPPED,
        "reason" => "expired"
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let cut = cim_core::now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        match store.expire(cut).await {
            Ok(0) => {}
            Ok(n) => {
                expired.increment(n as u64);
                tracing::info!(
                    expired = n,
                    "stored messages past store.max_age_secs deleted"
                );
            }
            Err(e) => tracing::warn!(error = %e, "expiring stored messages failed"),
        }
    }
}

/// Without the HTTP API: the other listeners start, and asking for the API is refused.
#[cfg(all(test, not(feature = "http")))]
mod tests;
