//! The sections of [`Settings`](super::Settings) other than the listeners.

use std::path::PathBuf;

use cim_core::engine::{ConnectionConfig, SlowConsumer, Timers};
use serde::{Deserialize, Serialize};

use cim_store::Durability;

use super::host::Host;
use crate::access::{self, Access, ForwardedHeader, Networks};

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
    pub slow_consumer: SlowConsumer,
    /// Entries accepted in the `data` map of one request or reply; a frame with more closes
    /// its connection.
    pub max_data_entries: usize,
    /// A plain TCP connection idle this long is parked (its task ends; its socket and queue
    /// are watched by the node until something resumes it); 0: never.
    pub park_after_ms: u64,
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
            slow_consumer: SlowConsumer::Close,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            park_after_ms: c.park_after.as_millis() as u64,
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `auto` (the default: `redb` on one node, the cluster's Redis with `cluster.redis`),
    /// `redb` (on disk under `path`), `sled` (on disk under `path`), `memory` (lost at exit) or
    /// `redis` (the cluster's Redis; needs `cluster.redis`).
    pub backend: StoreBackend,
    /// Directory of the database.
    pub path: PathBuf,
    /// `always` (fsynced before a send is answered), `interval` (every `flush_interval_ms`) or
    /// `os` (left to the operating system).
    pub durability: Durability,
    /// Flush period for `interval`.
    pub flush_interval_ms: u64,
    /// Messages kept per account; the oldest are dropped beyond it.
    pub max_per_account: usize,
    /// Messages older than this are deleted (0: kept until delivered).
    pub max_age_secs: u64,
    /// How often the expiry runs.
    pub expire_every_secs: u64,
    /// Reads of the `redb` store that may run at once (1-512), each on a blocking thread.
    pub read_threads: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Auto,
            path: PathBuf::from("./data"),
            durability: Durability::Always,
            flush_interval_ms: 100,
            max_per_account: 10_000,
            max_age_secs: 7 * 24 * 3600,
            expire_every_secs: 60,
            read_threads: cim_store::StoreOptions::DEFAULT_READ_THREADS,
        }
    }
}

/// `store.backend`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum StoreBackend {
    /// redb on one node, the cluster's Redis in a cluster.
    Auto,
    /// redb, on disk, with a write-ahead log under `always`.
    Redb,
    /// sled, on disk.
    Sled,
    /// In memory.
    Memory,
    /// The cluster's Redis (streams), shared by every node.
    Redis,
}

impl StoreBackend {
    /// Its name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            StoreBackend::Auto => "auto",
            StoreBackend::Redb => "redb",
            StoreBackend::Sled => "sled",
            StoreBackend::Memory => "memory",
            StoreBackend::Redis => "redis",
        }
    }
}

impl TryFrom<String> for StoreBackend {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(StoreBackend::Auto),
            "redb" => Ok(StoreBackend::Redb),
            "sled" => Ok(StoreBackend::Sled),
            "memory" => Ok(StoreBackend::Memory),
            "redis" => Ok(StoreBackend::Redis),
            other => Err(format!(
                "{other:?}: expected one of auto, redb, sled, memory, redis"
            )),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// When set, every `client_bind` must carry a `token` minted with this secret for its uid.
    pub token_secret: String,
    /// Lifetime of tokens minted by `cim-server token` and the API, in seconds.
    pub token_ttl_secs: u64,
    /// Longest account id, in bytes (ids must also be non-empty, without control characters).
    pub max_uid_bytes: usize,
    /// Let clients bind as any account without a token on a listener that is not on a
    /// loopback address. Off: such a configuration is refused at start-up unless
    /// `token_secret` is set.
    pub allow_anonymous: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_secret: String::new(),
            token_ttl_secs: 86_400,
            max_uid_bytes: cim_core::DEFAULT_MAX_UID_BYTES,
            allow_anonymous: false,
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Whether to serve the HTTP API. By default true; in a build without the `http` feature
    /// false, and true is refused (see [`Settings::validate`](super::Settings::validate)).
    pub enabled: bool,
    /// Address or host name to listen on (a name is resolved at start-up).
    pub host: Host,
    /// Port (0 picks a free one).
    #[serde(deserialize_with = "super::port::port")]
    pub port: u16,
    /// Key required in `X-API-Key` (or `Authorization: Bearer`); required when `host` is not a
    /// loopback address.
    pub api_key: String,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time allowed for a request's headers, and for an idle keep-alive connection.
    pub header_timeout_ms: u64,
    /// Time allowed for a request's body to arrive once its headers have.
    pub body_timeout_ms: u64,
    /// Largest request head (request line and header fields), in bytes, at most 65536.
    pub max_head: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// HTTP connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Messages accepted in one batch request.
    pub max_batch: usize,
    /// A key that `GET /metrics` takes besides `api_key` (for a scraper that should not send
    /// messages). Empty: only `api_key`.
    pub metrics_key: String,
    /// Answer `GET /metrics` without a key to a client on a loopback address (the client a
    /// trusted proxy names, when a proxy is in between).
    pub metrics_open_on_loopback: bool,
    /// Serve the admin console at `/console`.
    pub console: bool,
    /// Read a PROXY protocol header (v1 or v2) on every connection from `trusted_proxies`.
    pub proxy_protocol: bool,
    /// The networks of the proxies whose PROXY and forwarding headers are believed.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub trusted_proxies: Networks,
    /// The header the trusted proxies name the client in: `x-forwarded-for`, `forwarded` or
    /// `x-real-ip`.
    pub forwarded_header: ForwardedHeader,
    /// When not empty, only clients in these networks are served.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub allow: Networks,
    /// Clients in these networks are refused.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub deny: Networks,
    /// The longest PROXY header taken, in bytes.
    pub max_proxy_header: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: cfg!(feature = "http"),
            host: Host::LOOPBACK,
            port: 8080,
            api_key: String::new(),
            max_body: 1024 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_head: 16 * 1024,
            max_headers: 100,
            max_connections: 1024,
            max_batch: 1000,
            metrics_key: String::new(),
            metrics_open_on_loopback: false,
            console: true,
            proxy_protocol: false,
            trusted_proxies: Networks::none(),
            forwarded_header: ForwardedHeader::default(),
            allow: Networks::none(),
            deny: Networks::none(),
            max_proxy_header: access::DEFAULT_MAX_PROXY_HEADER,
        }
    }
}

impl HttpSettings {
    /// The HTTP API's [`Access`]: its PROXY protocol, trusted proxies and address lists.
    pub fn access(&self) -> Access {
        Access {
            proxy_protocol: self.proxy_protocol,
            trusted_proxies: self.trusted_proxies.clone(),
            forwarded_header: self.forwarded_header,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            max_proxy_header: self.max_proxy_header,
        }
    }
}

/// `[cluster]`: nodes sharing one Redis (registry, routing, store). Off while `redis` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The Redis server, `redis://host:port[/db]`; empty: no cluster.
    pub redis: String,
    /// Prefix of every key, so that clusters can share a Redis.
    pub prefix: String,
    /// How often the node moves its deadline forward and looks for dead nodes.
    pub heartbeat_ms: u64,
    /// A node silent this long is dead: its sessions vanish, it is reaped. At least twice
    /// `heartbeat_ms`.
    pub node_deadline_ms: u64,
    /// A Redis command not answered in this long fails (a send then answers `503`).
    pub timeout_ms: u64,
    /// A message taken from the inbox and queued to a connection that has not written it after
    /// this long is routed again (the connection's write failed).
    pub handover_timeout_ms: u64,
    /// The TCP address clients are told to reach this node at (`GET /api/v1/dispatch`);
    /// empty: where the TCP listener listens.
    pub advertise_tcp: String,
    /// The WebSocket address; empty: where the WebSocket listener listens.
    pub advertise_websocket: String,
    /// The HTTP API's address; empty: where it listens.
    pub advertise_http: String,
    /// The binary protocol's TLS address (`tls://`); empty: where the TCP listener speaks TLS
    /// (its own port, or `tcp.tls.port`).
    pub advertise_tls: String,
    /// The WebSocket TLS address (`wss://`); empty: where the WebSocket listener speaks TLS.
    pub advertise_wss: String,
    /// The XML listener's address; empty: where it listens.
    pub advertise_xml: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            redis: String::new(),
            prefix: "cim:".into(),
            heartbeat_ms: 1000,
            node_deadline_ms: 5000,
            timeout_ms: 2000,
            handover_timeout_ms: 30_000,
            advertise_tcp: String::new(),
            advertise_websocket: String::new(),
            advertise_http: String::new(),
            advertise_tls: String::new(),
            advertise_wss: String::new(),
            advertise_xml: String::new(),
        }
    }
}

impl ClusterSettings {
    /// Whether the node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
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
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: expected one of text, json")),
        }
    }
}

/// `[shutdown]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time allowed, after SIGINT or SIGTERM (or once a drain has closed its connections), for
    /// connections to flush and close.
    pub grace_ms: u64,
    /// A drain (SIGUSR1, `POST /api/v1/admin/drain`) closes the node's connections spread
    /// evenly over this long, so that their clients reconnect elsewhere at a steady rate;
    /// `0` closes them all at once.
    pub drain_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace_ms: 10_000,
            drain_ms: 30_000,
        }
    }
}
