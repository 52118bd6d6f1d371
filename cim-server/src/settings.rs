//! [`Settings`]: the server's configuration — built-in defaults, then an optional TOML file,
//! then `CIM_`-prefixed environment variables (`CIM_TCP__PORT=5000` sets `tcp.port`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cim_core::engine::{ConnectionConfig, SlowConsumer, Timers};
use serde::{Deserialize, Serialize};

use crate::transport::{WsMode, WsSettings};

/// Why the configuration is unusable. Every message names the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or the environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("configuration: `{key}` = {value}: {reason}")]
    Invalid {
        /// The key, dotted (`tcp.port`).
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(
    key: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> SettingsError {
    SettingsError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Everything the server binary reads from configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This node's name, shown in sessions.
    pub node: String,
    /// This node's number (0-1023), part of every message id.
    pub node_id: u16,
    /// Connections accepted at once, over all listeners.
    pub max_connections: usize,
    /// CIM's binary protocol over TCP.
    pub tcp: TcpSettings,
    /// WebSocket, protobuf or JSON.
    pub websocket: WebSocketSettings,
    /// The MINA-era XML protocol over TCP.
    pub xml: XmlSettings,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node: "node-0".into(),
            node_id: 0,
            max_connections: 100_000,
            tcp: TcpSettings::default(),
            websocket: WebSocketSettings::default(),
            xml: XmlSettings::default(),
            connection: ConnectionSettings::default(),
            store: StoreSettings::default(),
            auth: AuthSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
        }
    }
}

/// `[tcp]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpSettings {
    /// Whether to listen.
    pub enabled: bool,
    /// Address to bind.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Largest frame body, in and out (at most 65535).
    pub max_frame: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 23456,
            max_frame: 65535,
        }
    }
}

/// `[websocket]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Whether to listen.
    pub enabled: bool,
    /// Address to bind.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Requests whose path starts with this are upgraded.
    pub path: String,
    /// `auto` (per connection), `protobuf` or `json`.
    pub mode: WsModeSetting,
    /// Largest WebSocket message, in bytes.
    pub max_message: usize,
    /// Refuse upgrades without a valid `token` (and `uid`) in the query string
    /// (needs `auth.token_secret`).
    pub require_token: bool,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 34567,
            path: "/".into(),
            mode: WsModeSetting::Auto,
            max_message: 64 * 1024,
            require_token: false,
        }
    }
}

/// `websocket.mode`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsModeSetting {
    /// Detected per connection.
    Auto,
    /// Binary messages.
    Protobuf,
    /// JSON text messages.
    Json,
}

/// `[xml]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XmlSettings {
    /// Whether to listen (off by default).
    pub enabled: bool,
    /// Address to bind.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Largest document, in bytes.
    pub max_document: usize,
}

impl Default for XmlSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 23457,
            max_document: 64 * 1024,
        }
    }
}

/// `[connection]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Nothing written for this long: PING a bound connection, close an unbound one.
    pub write_idle_ms: u64,
    /// Nothing read for this long after `max_pong_timeout` PINGs: close.
    pub read_idle_ms: u64,
    /// Unanswered PINGs tolerated.
    pub max_pong_timeout: u32,
    /// Time allowed to bind after connecting.
    pub bind_timeout_ms: u64,
    /// Outbound queue length per connection; a connection whose queue fills is closed.
    pub queue_capacity: usize,
    /// Time a write may stall before the connection is closed.
    pub write_timeout_ms: u64,
    /// A connection whose queue fills: `close` it, or `keep` it and deliver what did not fit
    /// (stored meanwhile) once it catches up.
    pub slow_consumer: SlowConsumerSetting,
    /// Entries accepted in the `data` map of one request or reply; a frame with more closes
    /// its connection.
    pub max_data_entries: usize,
}

/// `connection.slow_consumer`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerSetting {
    /// Close the connection.
    Close,
    /// Keep it; deliver later.
    Keep,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        let t = Timers::default();
        let c = ConnectionConfig::default();
        Self {
            write_idle_ms: t.write_idle.as_millis() as u64,
            read_idle_ms: t.read_idle.as_millis() as u64,
            max_pong_timeout: t.max_pong_timeout,
            bind_timeout_ms: t.bind_timeout.as_millis() as u64,
            queue_capacity: c.queue_capacity,
            write_timeout_ms: c.write_timeout.as_millis() as u64,
            slow_consumer: SlowConsumerSetting::Close,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `redb` (on disk under `path`, the default), `sled` (on disk under `path`) or `memory`
    /// (lost at exit).
    pub backend: StoreBackend,
    /// Directory of the database.
    pub path: PathBuf,
    /// `always` (fsynced before a send is answered), `interval` (every `flush_interval_ms`) or
    /// `os` (left to the operating system).
    pub durability: DurabilitySetting,
    /// Flush period for `interval`.
    pub flush_interval_ms: u64,
    /// Messages kept per account; the oldest are dropped beyond it.
    pub max_per_account: usize,
    /// Messages older than this are deleted (0: kept until delivered).
    pub max_age_secs: u64,
    /// How often the expiry runs.
    pub expire_every_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Redb,
            path: PathBuf::from("./data"),
            durability: DurabilitySetting::Always,
            flush_interval_ms: 100,
            max_per_account: 10_000,
            max_age_secs: 7 * 24 * 3600,
            expire_every_secs: 60,
        }
    }
}

/// `store.backend`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// redb, on disk, with a write-ahead log under `always`.
    Redb,
    /// sled, on disk.
    Sled,
    /// In memory.
    Memory,
}

/// `store.durability`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// fsync before answering (group commit).
    Always,
    /// fsync every `flush_interval_ms`.
    Interval,
    /// Leave it to the OS.
    Os,
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// When set, every `client_bind` must carry a `token` minted with this secret for its uid.
    pub token_secret: String,
    /// Lifetime of tokens minted by `cim-server token` and the API, in seconds.
    pub token_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_secret: String::new(),
            token_ttl_secs: 86_400,
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Whether to serve the HTTP API.
    pub enabled: bool,
    /// Address to bind.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Key required in `X-API-Key` (or `Authorization: Bearer`); required when `host` is not a
    /// loopback address.
    pub api_key: String,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time allowed for a request's headers, and for an idle keep-alive connection.
    pub header_timeout_ms: u64,
    /// Messages accepted in one batch request.
    pub max_batch: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: String::new(),
            max_body: 1024 * 1024,
            header_timeout_ms: 10_000,
            max_batch: 1000,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `cim_core=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `log.format`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[shutdown]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time allowed, after SIGINT or SIGTERM, for connections to flush and close.
    pub grace_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { grace_ms: 10_000 }
    }
}

impl Settings {
    /// Defaults, then `file` (if given; it must exist), then `CIM_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(PathBuf::from(path)).format(config::FileFormat::Toml),
            );
        }
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CIM_"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CIM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (key, host) in [
            ("tcp.host", &self.tcp.host),
            ("websocket.host", &self.websocket.host),
            ("xml.host", &self.xml.host),
            ("http.host", &self.http.host),
        ] {
            host.parse::<IpAddr>()
                .map_err(|_| invalid(key, format!("{host:?}"), "not an IP address"))?;
        }
        if self.tcp.max_frame == 0 || self.tcp.max_frame > 65535 {
            return Err(invalid(
                "tcp.max_frame",
                self.tcp.max_frame,
                "must be 1 to 65535",
            ));
        }
        if self.websocket.max_message < 16 {
            return Err(invalid(
                "websocket.max_message",
                self.websocket.max_message,
                "must be at least 16",
            ));
        }
        if !self.websocket.path.starts_with('/') {
            return Err(invalid(
                "websocket.path",
                format!("{:?}", self.websocket.path),
                "must start with /",
            ));
        }
        if self.websocket.require_token && self.auth.token_secret.is_empty() {
            return Err(invalid(
                "websocket.require_token",
                true,
                "needs auth.token_secret",
            ));
        }
        if self.xml.max_document < 16 {
            return Err(invalid(
                "xml.max_document",
                self.xml.max_document,
                "must be at least 16",
            ));
        }
        let c = &self.connection;
        for (key, v) in [
            ("connection.write_idle_ms", c.write_idle_ms),
            ("connection.read_idle_ms", c.read_idle_ms),
            ("connection.bind_timeout_ms", c.bind_timeout_ms),
            ("connection.write_timeout_ms", c.write_timeout_ms),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be more than 0"));
            }
        }
        if self.store.max_per_account == 0 {
            return Err(invalid("store.max_per_account", 0, "must be at least 1"));
        }
        if self.store.durability == DurabilitySetting::Interval && self.store.flush_interval_ms == 0
        {
            return Err(invalid("store.flush_interval_ms", 0, "must be more than 0"));
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
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            return Err(invalid(
                "max_connections",
                self.max_connections,
                "must be 1 to 4294967295",
            ));
        }
        if self.node_id > 1023 {
            return Err(invalid("node_id", self.node_id, "must be 0 to 1023"));
        }
        if self.http.max_batch == 0 {
            return Err(invalid("http.max_batch", 0, "must be at least 1"));
        }
        if self.http.enabled && self.http.api_key.is_empty() {
            let ip: IpAddr = self
                .http
                .host
                .parse()
                .map_err(|_| invalid("http.host", &self.http.host, "not an IP address"))?;
            if !ip.is_loopback() {
                return Err(invalid(
                    "http.api_key",
                    "\"\"",
                    format!("required when http.host ({ip}) is not a loopback address"),
                ));
            }
        }
        if !self.auth.token_secret.is_empty() && self.auth.token_secret.len() < 16 {
            return Err(invalid(
                "auth.token_secret",
                "(hidden)",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }

    /// The settings as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [&mut shown.auth.token_secret, &mut shown.http.api_key] {
            if !secret.is_empty() {
                *secret = "********".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
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
            slow_consumer: match c.slow_consumer {
                SlowConsumerSetting::Close => SlowConsumer::Close,
                SlowConsumerSetting::Keep => SlowConsumer::Keep,
            },
            ..ConnectionConfig::default()
        }
    }

    /// The WebSocket listener's settings.
    pub fn ws_settings(&self) -> WsSettings {
        WsSettings {
            path: self.websocket.path.clone(),
            mode: match self.websocket.mode {
                WsModeSetting::Auto => WsMode::Auto,
                WsModeSetting::Protobuf => WsMode::Protobuf,
                WsModeSetting::Json => WsMode::Json,
            },
            max_message: self.websocket.max_message,
            ..WsSettings::default()
        }
    }
}

/// `host:port` of a listener (validated hosts parse).
pub fn socket_addr(host: &str, port: u16) -> SocketAddr {
    let ip = host.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(
            (s.tcp.port, s.websocket.port, s.http.port),
            (23456, 34567, 8080)
        );
    }

    #[test]
    fn environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("cim-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cim.toml");
        std::fs::write(&file, "[tcp]\nport = 1111\n[websocket]\nmode = \"json\"\n").unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[("CIM_TCP__PORT", "2222"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(s.tcp.port, 2222);
        assert_eq!(s.websocket.mode, WsModeSetting::Json);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let e = Settings::load(None, env(&[("CIM_TCP__PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp.port") && e.contains("abc"), "{e}");
        let e = Settings::load(None, env(&[("CIM_TCP__MAX_FRAME", "70000")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp.max_frame") && e.contains("70000"), "{e}");
        let e = Settings::load(None, env(&[("CIM_HTTP__HOST", "0.0.0.0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.api_key"), "{e}");
        let e = Settings::load(None, env(&[("CIM_WEBSOCKET__MODE", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("websocket.mode") || e.contains("xml"), "{e}");
        let e = Settings::load(None, env(&[("CIM_CONNECTION__MAX_DATA_ENTRIES", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("connection.max_data_entries") && e.contains('0'),
            "{e}"
        );
        let s = Settings::load(None, env(&[("CIM_CONNECTION__MAX_DATA_ENTRIES", "1")])).unwrap();
        assert_eq!(s.connection.max_data_entries, 1);
    }

    /// The sample in the repository documents every key with its default value.
    #[test]
    fn sample_file_is_the_defaults() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cim.toml");
        let s = Settings::load(Some(&sample), env(&[])).unwrap();
        assert_eq!(s, Settings::default());
        let text = std::fs::read_to_string(&sample).unwrap();
        let printed = Settings::default().to_toml();
        for line in printed.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(
                text.contains(&format!("{key} =")),
                "cim.toml does not mention {key}"
            );
        }
    }

    #[test]
    fn print_masks_secrets() {
        let mut s = Settings::default();
        s.http.api_key = "topsecret".into();
        let t = s.to_toml();
        assert!(!t.contains("topsecret") && t.contains("api_key"), "{t}");
    }
}
