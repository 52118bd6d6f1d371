//! [`Settings`]: the server's configuration — built-in defaults, then an optional TOML file,
//! then `CIM_`-prefixed environment variables (`CIM_TCP__PORT=5000` sets `tcp.port`).
//!
//! Values are typed as they are read: hosts are addresses or names ([`Host`]), modes and
//! policies are the engine's own enums. Names are resolved, and the checks that depend on where
//! a listener really listens are made, by [`Settings::resolve`] at start-up.

mod host;
mod listener;
mod port;
mod sections;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cim_core::engine::{ConnectionConfig, Timers};
use serde::{Deserialize, Serialize};

pub use host::Host;
use listener::Kind;
pub use listener::{ListenerSettings, TlsSettings};
pub use sections::{
    AuthSettings, ClusterSettings, ConnectionSettings, HttpSettings, LogFormat, LogSettings,
    ShutdownSettings, StoreBackend, StoreSettings,
};

use crate::transport::WsSettings;

/// Why the configuration is unusable. Every message names the key and the value, once.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or the environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(String),
    /// A value is out of range or inconsistent.
    #[error("configuration: `{key}` = {value}: {reason}")]
    Invalid {
        /// The key, dotted (`tcp.port`).
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The sections of the configuration, as `CIM_<SECTION>__<KEY>` variables name them.
const SECTIONS: &[&str] = &[
    "tcp",
    "websocket",
    "xml",
    "connection",
    "store",
    "auth",
    "http",
    "log",
    "shutdown",
    "cluster",
];

/// The keys outside any section, as `CIM_<KEY>` variables name them.
const TOP_KEYS: &[&str] = &["node", "node_id", "max_connections", "worker_threads"];

/// Everything the server binary reads from configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This node's name, shown in sessions.
    pub node: String,
    /// This node's number (0-255), the low bits of every message id.
    pub node_id: u16,
    /// Connections accepted at once, over all listeners.
    pub max_connections: usize,
    /// Threads of the binary's runtime, 1-1024; 0 (the default): one per core.
    pub worker_threads: usize,
    /// CIM's binary protocol over TCP.
    pub tcp: ListenerSettings,
    /// WebSocket, protobuf or JSON.
    pub websocket: ListenerSettings,
    /// The MINA-era XML protocol over TCP.
    pub xml: ListenerSettings,
    /// Timers and queue limits of every long connection.
    pub connection: ConnectionSettings,
    /// Offline messages.
    pub store: StoreSettings,
    /// Bind tokens.
    pub auth: AuthSettings,
    /// The HTTP API.
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Nodes sharing one Redis.
    pub cluster: ClusterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node: "node-0".into(),
            node_id: 0,
            max_connections: 100_000,
            worker_threads: 0,
            tcp: ListenerSettings::tcp(),
            websocket: ListenerSettings::websocket(),
            xml: ListenerSettings::xml(),
            connection: ConnectionSettings::default(),
            store: StoreSettings::default(),
            auth: AuthSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// Where the listeners listen, names resolved: what [`Settings::resolve`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    /// The TCP listener's address.
    pub tcp: SocketAddr,
    /// The WebSocket listener's.
    pub websocket: SocketAddr,
    /// The XML listener's.
    pub xml: SocketAddr,
    /// The HTTP API's.
    pub http: SocketAddr,
    /// The TCP listener's TLS listener beside it (`tcp.tls.port`).
    pub tcp_tls: Option<SocketAddr>,
    /// The WebSocket listener's TLS listener beside it (`websocket.tls.port`).
    pub websocket_tls: Option<SocketAddr>,
}

fn load_error(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Load(e.to_string())
}

/// The `CIM_*` variables of `env` that name a key of the server: `CIM_<SECTION>__<KEY>` for a
/// section of [`SECTIONS`], `CIM_<KEY>` for one of [`TOP_KEYS`]. Other `CIM_` variables (such
/// as the command-line client's `CIM_API_KEY`) are not the server's and are left alone, but a
/// `CIM_<X>__<KEY>` with an unknown section is a mistake and is refused.
fn server_vars(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, String>, SettingsError> {
    let mut vars = config::Map::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("CIM_") else {
            continue;
        };
        let name = rest.to_ascii_lowercase();
        let known = match name.split_once("__") {
            Some((section, _)) if SECTIONS.contains(&section) => true,
            Some((section, _)) => {
                return Err(SettingsError::Load(format!(
                    "{k}: `{section}` is not a section of the configuration (sections: {})",
                    SECTIONS.join(", ")
                )));
            }
            None => TOP_KEYS.contains(&name.as_str()),
        };
        if known {
            vars.insert(k, v);
        }
    }
    Ok(vars)
}

impl Settings {
    /// Defaults, then `file` (if given; it must exist), then the server's `CIM_*` variables of
    /// `env` (see [`server_vars`]).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let defaults = config::Config::try_from(&Settings::default()).map_err(load_error)?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(PathBuf::from(path)).format(config::FileFormat::Toml),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("CIM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(server_vars(env)?)),
        );
        let merged = builder.build().map_err(|e| match (e, file) {
            // Named by its path as given (the library names it relative to the working
            // directory, after the parser's snippet).
            (config::ConfigError::FileParse { cause, .. }, Some(path)) => {
                SettingsError::Load(format!("{}: {cause}", path.display()))
            }
            (e, _) => load_error(e),
        })?;
        // The path of a value that does not fit is kept, so the message names its key.
        let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            if key.is_empty() || key == "." || inner.contains(&key) {
                SettingsError::Load(inner)
            } else {
                SettingsError::Load(format!("`{key}`: {inner}"))
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and consistency (the checks that need resolved addresses are
    /// [`resolve`](Self::resolve)'s). In a build without the `http` feature, `http.enabled =
    /// true` is refused: its default there is false, so only a file or `CIM_HTTP__ENABLED` sets
    /// it.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.http_built()?;
        self.tcp.validate(Kind::Tcp)?;
        self.websocket.validate(Kind::WebSocket)?;
        self.xml.validate(Kind::Xml)?;
        if self.websocket.require_token && self.auth.token_secret.is_empty() {
            return Err(invalid(
                "websocket.require_token",
                true,
                "needs auth.token_secret",
            ));
        }
        let c = &self.connection;
        for (key, v) in [
            ("connection.write_idle_ms", c.write_idle_ms),
            ("connection.read_idle_ms", c.read_idle_ms),
            ("connection.bind_timeout_ms", c.bind_timeout_ms),
            ("connection.write_timeout_ms", c.write_timeout_ms),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be more than 0"));
            }
        }
        if self.store.max_per_account == 0 {
            return Err(invalid("store.max_per_account", 0, "must be at least 1"));
        }
        if self.store.durability == cim_store::Durability::Interval
            && self.store.flush_interval_ms == 0
        {
            return Err(invalid("store.flush_interval_ms", 0, "must be more than 0"));
        }
        if !(1..=512).contains(&self.store.read_threads) {
            return Err(invalid(
                "store.read_threads",
                self.store.read_threads,
                "must be 1-512",
            ));
        }
        if self.store.expire_every_secs == 0 {
            return Err(invalid("store.expire_every_secs", 0, "must be more than 0"));
        }
        if c.queue_capacity == 0 {
            return Err(invalid(
                "connection.queue_capacity",
                0,
                "must be at least 1",
            ));
        }
        if c.max_data_entries == 0 {
            return Err(invalid(
                "connection.max_data_entries",
                0,
                "must be at least 1",
            ));
        }
        if c.park_after_ms > u64::from(u32::MAX) {
            return Err(invalid(
                "connection.park_after_ms",
                c.park_after_ms,
                "must be 0 (never) to 4294967295",
            ));
        }
        if self.worker_threads > 1024 {
            return Err(invalid(
                "worker_threads",
                self.worker_threads,
                "must be 0 (one per core) to 1024",
            ));
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            return Err(invalid(
                "max_connections",
                self.max_connections,
                "must be 1 to 4294967295",
            ));
        }
        if self.node_number().is_none() {
            return Err(invalid("node_id", self.node_id, "must be 0 to 255"));
        }
        listener::validate_access("http", &self.http.access())?;
        if self.http.max_batch == 0 {
            return Err(invalid("http.max_batch", 0, "must be at least 1"));
        }
        if !(1024..=65536).contains(&self.http.max_head) {
            return Err(invalid(
                "http.max_head",
                self.http.max_head,
                "must be 1024 to 65536",
            ));
        }
        if !(1..=10_000).contains(&self.http.max_headers) {
            return Err(invalid(
                "http.max_headers",
                self.http.max_headers,
                "must be 1 to 10000",
            ));
        }
        if self.http.max_connections == 0 || self.http.max_connections > u32::MAX as usize {
            return Err(invalid(
                "http.max_connections",
                self.http.max_connections,
                "must be 1 to 4294967295",
            ));
        }
        if !(1..=65535).contains(&self.auth.max_uid_bytes) {
            return Err(invalid(
                "auth.max_uid_bytes",
                self.auth.max_uid_bytes,
                "must be 1 to 65535",
            ));
        }
        self.validate_cluster()?;
        if !self.auth.token_secret.is_empty() && self.auth.token_secret.len() < 16 {
            return Err(invalid(
                "auth.token_secret",
                "(hidden)",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }

    /// The store the node uses: `store.backend`, with `auto` read as `redb` on one node and as
    /// the cluster's Redis in a cluster.
    pub fn store_backend(&self) -> StoreBackend {
        match (self.store.backend, self.cluster.enabled()) {
            (StoreBackend::Auto, true) => StoreBackend::Redis,
            (StoreBackend::Auto, false) => StoreBackend::Redb,
            (b, _) => b,
        }
    }

    fn validate_cluster(&self) -> Result<(), SettingsError> {
        let c = &self.cluster;
        if !c.enabled() {
            if self.store.backend == StoreBackend::Redis {
                return Err(invalid(
                    "store.backend",
                    "\"redis\"",
                    "needs cluster.redis (the Redis of a cluster)",
                ));
            }
            return Ok(());
        }
        if !c.redis.starts_with("redis://") && !c.redis.starts_with("rediss://") {
            return Err(invalid(
                "cluster.redis",
                format!("{:?}", c.redis),
                "must be a redis:// URL (redis://host:port[/db])",
            ));
        }
        match self.store.backend {
            StoreBackend::Auto | StoreBackend::Redis => {}
            local => {
                return Err(invalid(
                    "store.backend",
                    format!("{:?}", local.name()),
                    format!(
                        "a node-local store cannot serve a cluster (cluster.redis = {:?}): every \
                         node must read the same stored messages; use \"auto\" or \"redis\"",
                        c.redis
                    ),
                ));
            }
        }
        if c.heartbeat_ms == 0 {
            return Err(invalid("cluster.heartbeat_ms", 0, "must be more than 0"));
        }
        if c.node_deadline_ms < c.heartbeat_ms.saturating_mul(2) {
            return Err(invalid(
                "cluster.node_deadline_ms",
                c.node_deadline_ms,
                format!(
                    "must be at least twice cluster.heartbeat_ms ({})",
                    c.heartbeat_ms
                ),
            ));
        }
        for (key, v) in [
            ("cluster.timeout_ms", c.timeout_ms),
            ("cluster.handover_timeout_ms", c.handover_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be more than 0"));
            }
        }
        let name_ok = !self.node.is_empty()
            && self.node.len() <= 64
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(invalid(
                "node",
                format!("{:?}", self.node),
                "in a cluster a node's name is 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        Ok(())
    }

    /// Refuses `http.enabled = true` in a build without the HTTP API.
    pub(crate) fn http_built(&self) -> Result<(), SettingsError> {
        if cfg!(feature = "http") || !self.http.enabled {
            return Ok(());
        }
        Err(invalid(
            "http.enabled",
            true,
            "this cim-server was built without the `http` feature, so it has no HTTP API: \
             leave http.enabled unset (or false), or build it with the feature",
        ))
    }

    /// Resolves every enabled listener's host and makes the checks that depend on where they
    /// listen: the HTTP API off loopback needs `http.api_key`; a long-connection listener off
    /// loopback needs `auth.token_secret`, or `auth.allow_anonymous = true` to let anyone bind
    /// as anyone.
    pub async fn resolve(&self) -> Result<Addrs, SettingsError> {
        async fn one(key: &str, l: &ListenerSettings) -> Result<SocketAddr, SettingsError> {
            if !l.enabled {
                return Ok(SocketAddr::new(
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    l.port,
                ));
            }
            l.host
                .resolve(l.port)
                .await
                .map_err(|reason| invalid(key, format!("{:?}", l.host.to_string()), reason))
        }
        let beside = |l: &ListenerSettings, addr: SocketAddr| match l.tls.port {
            Some(port) if l.enabled && l.tls.enabled() => Some(SocketAddr::new(addr.ip(), port)),
            _ => None,
        };
        let tcp = one("tcp.host", &self.tcp).await?;
        let websocket = one("websocket.host", &self.websocket).await?;
        let addrs = Addrs {
            tcp,
            websocket,
            tcp_tls: beside(&self.tcp, tcp),
            websocket_tls: beside(&self.websocket, websocket),
            xml: one("xml.host", &self.xml).await?,
            http: if self.http.enabled {
                self.http.host.resolve(self.http.port).await.map_err(|r| {
                    invalid("http.host", format!("{:?}", self.http.host.to_string()), r)
                })?
            } else {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.http.port)
            },
        };
        if self.http.enabled && self.http.api_key.is_empty() && !addrs.http.ip().is_loopback() {
            return Err(invalid("http.api_key", "\"\"", {
                // The address it resolved to, unless the host is that address already.
                let (host, ip) = (self.http.host.to_string(), addrs.http.ip().to_string());
                let at = if host == ip {
                    host
                } else {
                    format!("{host}, {ip}")
                };
                format!("required when the HTTP API listens off loopback (http.host = {at})")
            }));
        }
        if self.auth.token_secret.is_empty() && !self.auth.allow_anonymous {
            for (key, l, addr) in [
                ("tcp.host", &self.tcp, addrs.tcp),
                ("websocket.host", &self.websocket, addrs.websocket),
                ("xml.host", &self.xml, addrs.xml),
            ] {
                if l.enabled && !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        l.host.to_string(),
                        format!(
                            "listens off loopback ({}) but auth.token_secret is empty, so anyone \
                             could bind as any account and take its stored messages: set \
                             auth.token_secret, or auth.allow_anonymous = true to allow it",
                            addr.ip()
                        ),
                    ));
                }
            }
        }
        Ok(addrs)
    }

    /// For a listening socket that could not be opened, the keys that set its address:
    /// `"tcp.host, tcp.port"`, `"tcp.host, tcp.tls.port"` for a TLS listener beside the plain
    /// one, and so on.
    pub fn listener_keys(&self, e: &crate::server::ServerError) -> Option<String> {
        let crate::server::ServerError::Bind { protocol, .. } = e else {
            return None;
        };
        let (section, beside) = match *protocol {
            "tcp" => ("tcp", false),
            "tls" => ("tcp", self.tcp.tls.beside()),
            "websocket" => ("websocket", false),
            "wss" => ("websocket", self.websocket.tls.beside()),
            "xml" | "xml+tls" => ("xml", false),
            "http" => ("http", false),
            _ => return None,
        };
        let port = if beside { "tls.port" } else { "port" };
        Some(format!("{section}.host, {section}.{port}"))
    }

    /// The settings as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [
            &mut shown.auth.token_secret,
            &mut shown.http.api_key,
            &mut shown.http.metrics_key,
        ] {
            if !secret.is_empty() {
                *secret = "********".into();
            }
        }
        shown.cluster.redis = crate::app::redact(&shown.cluster.redis);
        let mut table = match toml::Table::try_from(&shown) {
            Ok(t) => t,
            Err(e) => return format!("# cannot print: {e}\n"),
        };
        // Each listener's section shows only the keys it takes (the others are refused there).
        for (section, foreign) in listener::FOREIGN_KEYS {
            if let Some(toml::Value::Table(t)) = table.get_mut(*section) {
                for k in *foreign {
                    t.remove(*k);
                }
            }
        }
        toml::to_string_pretty(&table).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// `node_id` as a node number of message ids, `None` past 255 (the ids hold 8 bits of it).
    pub fn node_number(&self) -> Option<u8> {
        u8::try_from(self.node_id).ok()
    }

    /// The connection settings shared by every listener.
    pub fn connection_config(&self) -> ConnectionConfig {
        let c = &self.connection;
        ConnectionConfig {
            timers: Timers {
                write_idle: Duration::from_millis(c.write_idle_ms),
                read_idle: Duration::from_millis(c.read_idle_ms),
                max_pong_timeout: c.max_pong_timeout,
                bind_timeout: Duration::from_millis(c.bind_timeout_ms),
            },
            queue_capacity: c.queue_capacity,
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            slow_consumer: c.slow_consumer,
            park_after: Duration::from_millis(c.park_after_ms),
            ..ConnectionConfig::default()
        }
    }

    /// The WebSocket listener's settings.
    pub fn ws_settings(&self) -> WsSettings {
        WsSettings {
            path: self.websocket.path.clone(),
            mode: self.websocket.mode,
            max_message: self.websocket.max_frame,
            ..WsSettings::default()
        }
    }
}

#[cfg(test)]
mod tests;
