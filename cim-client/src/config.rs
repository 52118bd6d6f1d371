//! What a client connects to, who it binds as, and how it retries.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use cim_core::SentBody;
use cim_core::protocol::{bind, key};

use crate::backoff::Backoff;
use crate::dispatch::DispatchUrl;
use crate::error::ClientError;

/// The protocol and address of a server.
///
/// Written as a URL: `tcp://host:port` (CIM's binary protocol; a bare `host:port` means the
/// same), `tls://host:port` (the same over TLS), `xml://host:port` (the MINA-era XML
/// protocol), `ws://host:port/path` (WebSocket, protobuf packets), `ws+json://host:port/path`
/// (WebSocket, JSON mode), and `wss://…` / `wss+json://…` (WebSocket over TLS).
///
/// Over TLS the server's certificate must be valid for `host` and issued by a trusted root:
/// the platform's, or those of [`ClientConfig::ca_file`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// CIM's binary protocol over TCP.
    Tcp(String),
    /// CIM's binary protocol over TLS.
    Tls(String),
    /// The XML protocol over TCP.
    Xml(String),
    /// WebSocket: `host:port`, the path (with a leading `/`), and the packet format.
    WebSocket {
        /// `host:port`.
        addr: String,
        /// The request path, starting with `/`.
        path: String,
        /// Protobuf (binary) or JSON (text) packets.
        mode: WsMode,
        /// Over TLS (`wss://`).
        tls: bool,
    },
}

/// The packet format of a WebSocket connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsMode {
    /// Binary packets `[type][protobuf]`.
    Protobuf,
    /// Text packets, CIM's JSON envelope.
    Json,
}

impl Endpoint {
    /// The protocol spoken, without the address.
    pub fn protocol(&self) -> Protocol {
        match self {
            Endpoint::Tcp(_) => Protocol::Tcp,
            Endpoint::Tls(_) => Protocol::Tls,
            Endpoint::Xml(_) => Protocol::Xml,
            Endpoint::WebSocket {
                path, mode, tls, ..
            } => Protocol::WebSocket {
                path: path.clone(),
                mode: *mode,
                tls: *tls,
            },
        }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        match self {
            Endpoint::Tcp(a)
            | Endpoint::Tls(a)
            | Endpoint::Xml(a)
            | Endpoint::WebSocket { addr: a, .. } => a,
        }
    }

    /// The host the server's certificate must be valid for (`host` of `host:port`, without
    /// the brackets of an IPv6 address).
    pub fn host(&self) -> &str {
        let addr = self.addr();
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            Endpoint::Tls(_) | Endpoint::WebSocket { tls: true, .. }
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.protocol().scheme();
        match self {
            Endpoint::Tcp(a) | Endpoint::Tls(a) | Endpoint::Xml(a) => write!(f, "{scheme}://{a}"),
            Endpoint::WebSocket { addr, path, .. } => write!(f, "{scheme}://{addr}{path}"),
        }
    }
}

/// A protocol without an address: what a client that follows dispatch speaks to whichever node
/// it is sent to. Written as an [`Endpoint`]'s scheme — `tcp`, `tls`, `xml`, `ws`, `ws+json`,
/// `wss`, `wss+json` — a WebSocket protocol on path `/` (see [`with_path`](Self::with_path)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// CIM's binary protocol over TCP: dispatch's `tcp` address.
    Tcp,
    /// CIM's binary protocol over TLS: dispatch's `tls` address.
    Tls,
    /// The XML protocol: dispatch's `xml` address.
    Xml,
    /// WebSocket: dispatch's `websocket` address, or `wss` over TLS.
    WebSocket {
        /// The request path, starting with `/`.
        path: String,
        /// Protobuf (binary) or JSON (text) packets.
        mode: WsMode,
        /// Over TLS (`wss://`).
        tls: bool,
    },
}

impl Protocol {
    /// The endpoint of this protocol at `addr` (`host:port`).
    pub fn at(&self, addr: impl Into<String>) -> Endpoint {
        let addr = addr.into();
        match self {
            Protocol::Tcp => Endpoint::Tcp(addr),
            Protocol::Tls => Endpoint::Tls(addr),
            Protocol::Xml => Endpoint::Xml(addr),
            Protocol::WebSocket { path, mode, tls } => Endpoint::WebSocket {
                addr,
                path: path.clone(),
                mode: *mode,
                tls: *tls,
            },
        }
    }

    /// The same WebSocket protocol on `path` (which must start with `/`); other protocols
    /// have no path.
    pub fn with_path(self, path: &str) -> Result<Protocol, ClientError> {
        let bad = |reason: &str| ClientError::BadEndpoint {
            endpoint: format!("{self} on path {path:?}"),
            reason: reason.to_owned(),
        };
        match self {
            Protocol::WebSocket { mode, tls, .. } if path.starts_with('/') => {
                Ok(Protocol::WebSocket {
                    path: path.to_owned(),
                    mode,
                    tls,
                })
            }
            Protocol::WebSocket { .. } => Err(bad("a WebSocket path starts with '/'")),
            _ if path == "/" => Ok(self),
            _ => Err(bad("only WebSocket endpoints have a path")),
        }
    }

    /// The scheme of its endpoints.
    pub fn scheme(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Xml => "xml",
            Protocol::WebSocket { mode, tls, .. } => match (mode, tls) {
                (WsMode::Protobuf, false) => "ws",
                (WsMode::Json, false) => "ws+json",
                (WsMode::Protobuf, true) => "wss",
                (WsMode::Json, true) => "wss+json",
            },
        }
    }

    /// Which of a dispatch answer's addresses this protocol connects to (`tcp`, `tls`, `xml`,
    /// `websocket` or `wss`).
    pub fn listener(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Xml => "xml",
            Protocol::WebSocket { tls: false, .. } => "websocket",
            Protocol::WebSocket { tls: true, .. } => "wss",
        }
    }

    /// The address of `node` this protocol connects to (empty when the node has none).
    pub fn address_in<'a>(&self, node: &'a cim_core::NodeAddrs) -> &'a str {
        match self {
            Protocol::Tcp => &node.tcp,
            Protocol::Tls => &node.tls,
            Protocol::Xml => &node.xml,
            Protocol::WebSocket { tls: false, .. } => &node.websocket,
            Protocol::WebSocket { tls: true, .. } => &node.wss,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())?;
        match self {
            Protocol::WebSocket { path, .. } if path != "/" => write!(f, " (path {path})"),
            _ => Ok(()),
        }
    }
}

impl FromStr for Protocol {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ws = |mode, tls| Protocol::WebSocket {
            path: "/".into(),
            mode,
            tls,
        };
        Ok(match s {
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "xml" => Protocol::Xml,
            "ws" => ws(WsMode::Protobuf, false),
            "ws+json" => ws(WsMode::Json, false),
            "wss" => ws(WsMode::Protobuf, true),
            "wss+json" => ws(WsMode::Json, true),
            _ => {
                return Err(ClientError::BadEndpoint {
                    endpoint: s.to_owned(),
                    reason: "the protocol must be tcp, tls, xml, ws, ws+json, wss or wss+json"
                        .into(),
                });
            }
        })
    }
}

/// Where a client connects: one server, or whichever node dispatch names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Always this server.
    Endpoint(Endpoint),
    /// Before every connect and reconnect, ask dispatch (`GET /api/v1/dispatch`) and connect in
    /// `protocol` to the address it names. The URLs are asked in turn, from the one that last
    /// answered, until one names a node with an address for the protocol (several nodes' URLs
    /// keep a client going when the node it asked is drained or dies). When none does
    /// (unreachable, an error, no address for the protocol), connect to the last address a
    /// bind succeeded on, if there is one; else the attempt fails and is retried with the same
    /// back-off.
    Dispatch {
        /// The dispatch URLs (at least one).
        urls: Vec<DispatchUrl>,
        /// What to speak to the node named.
        protocol: Protocol,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Endpoint(e) => e.fmt(f),
            Target::Dispatch { urls, protocol } => {
                write!(f, "{protocol} through dispatch ")?;
                for (i, url) in urls.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    url.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ClientError::BadEndpoint {
            endpoint: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = s.split_once("://").unwrap_or(("tcp", s));
        let (addr, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(bad("expected host:port"));
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad("the port is not a number from 0 to 65535"));
        }
        let addr = addr.to_owned();
        let plain = |e: Endpoint| {
            if path == "/" {
                Ok(e)
            } else {
                Err(bad("only WebSocket endpoints have a path"))
            }
        };
        let ws = |mode, tls| {
            Ok(Endpoint::WebSocket {
                addr: addr.clone(),
                path: path.to_owned(),
                mode,
                tls,
            })
        };
        match scheme {
            "tcp" => plain(Endpoint::Tcp(addr.clone())),
            "tls" => plain(Endpoint::Tls(addr.clone())),
            "xml" => plain(Endpoint::Xml(addr.clone())),
            "ws" => ws(WsMode::Protobuf, false),
            "ws+json" => ws(WsMode::Json, false),
            "wss" => ws(WsMode::Protobuf, true),
            "wss+json" => ws(WsMode::Json, true),
            _ => Err(bad(
                "the scheme must be tcp, tls, xml, ws, ws+json, wss or wss+json",
            )),
        }
    }
}

/// Who the client binds as: the `client_bind` request's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindInfo {
    /// The account.
    pub uid: String,
    /// `android`, `ios`, `web`, `windows`, `mac`, … (decides the multi-device rule).
    pub channel: String,
    /// A stable id of this device.
    pub device_id: String,
    /// A name for this device, shown to the device it displaces.
    pub device_name: String,
    /// The application's version.
    pub app_version: String,
    /// The operating system's version.
    pub os_version: String,
    /// The user's language.
    pub language: String,
    /// A bind token, when the server asks for one (also sent in the WebSocket handshake).
    pub token: Option<String>,
}

impl BindInfo {
    /// Binds `uid` on channel `rust`, with this machine's host name as the device.
    pub fn new(uid: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rust-client".into());
        Self {
            uid: uid.into(),
            channel: "rust".into(),
            device_id: host.clone(),
            device_name: host,
            app_version: env!("CARGO_PKG_VERSION").into(),
            os_version: std::env::consts::OS.into(),
            language: "en".into(),
            token: None,
        }
    }

    /// The `client_bind` request; `receipts` asks for the `client_ack` extension.
    pub fn request(&self, receipts: bool) -> SentBody {
        let mut body = SentBody::new(key::CLIENT_BIND)
            .with(bind::UID, &self.uid)
            .with(bind::CHANNEL, &self.channel)
            .with(bind::DEVICE_ID, &self.device_id)
            .with(bind::DEVICE_NAME, &self.device_name)
            .with(bind::APP_VERSION, &self.app_version)
            .with(bind::OS_VERSION, &self.os_version)
            .with(bind::LANGUAGE, &self.language);
        if let Some(t) = &self.token {
            body = body.with(bind::TOKEN, t);
        }
        if receipts {
            body = body.with(bind::CLIENT_ACK, "true");
        }
        body.timestamp = cim_core::now_ms();
        body
    }
}

/// Everything a [`Client`](crate::Client) needs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where to connect: a fixed server, or the node dispatch names.
    pub target: Target,
    /// Who to bind as.
    pub bind: BindInfo,
    /// Ask for receipts (`client_ack`): the server keeps each message until the application has
    /// taken it from [`Events`](crate::Events), and sends it again after a reconnect otherwise.
    pub receipts: bool,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Time allowed for TCP connect plus bind (default 10 s).
    pub connect_timeout: Duration,
    /// Time allowed for a request's reply (default 10 s).
    pub request_timeout: Duration,
    /// Events held for the application before the client stops reading the socket (default
    /// 1024).
    pub event_capacity: usize,
    /// Largest frame or WebSocket message accepted (default 64 KiB); also the largest
    /// dispatch answer read.
    pub max_frame: usize,
    /// A bound connection the server closes sooner than this is not counted as a success: the
    /// next reconnect backs off further, as after a failed connect (default 10 s). Two clients
    /// of one account and one device take the account from each other this way, and would
    /// otherwise do it several times a second.
    pub stable_after: Duration,
    /// For `tls://` and `wss://`: a PEM file of the CA certificates to trust instead of the
    /// platform's roots (default: none, the platform's roots); for an `https://` dispatch URL
    /// as well.
    pub ca_file: Option<PathBuf>,
    /// How many of the latest message ids the client remembers to drop copies of (default
    /// 4096; `0` drops none). A message can come twice — after a reconnect, when its receipt
    /// had not reached the server; in a cluster, when a node died after writing it but before
    /// it could tell Redis — and a copy whose id is among the last `dedup_window` seen never
    /// reaches [`Events`](crate::Events) (see
    /// [`Client::duplicates_dropped`](crate::Client::duplicates_dropped)). The window holds
    /// ids across reconnects; about 16 bytes per id.
    pub dedup_window: usize,
}

impl ClientConfig {
    /// The defaults for a fixed `endpoint` and `bind`.
    pub fn new(endpoint: Endpoint, bind: BindInfo) -> Self {
        Self::with_target(Target::Endpoint(endpoint), bind)
    }

    /// The defaults for a client that asks dispatch at `url` before every connect, and speaks
    /// `protocol` to the node it names.
    pub fn dispatched(url: DispatchUrl, protocol: Protocol, bind: BindInfo) -> Self {
        Self::dispatched_any(vec![url], protocol, bind)
    }

    /// The defaults for a client that asks dispatch at the first of `urls` that answers (from
    /// the one that last answered) before every connect, and speaks `protocol` to the node it
    /// names.
    pub fn dispatched_any(urls: Vec<DispatchUrl>, protocol: Protocol, bind: BindInfo) -> Self {
        Self::with_target(Target::Dispatch { urls, protocol }, bind)
    }

    /// The defaults for `target` and `bind`.
    pub fn with_target(target: Target, bind: BindInfo) -> Self {
        Self {
            target,
            bind,
            receipts: false,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            max_frame: 65_536,
            stable_after: Duration::from_secs(10),
            ca_file: None,
            dedup_window: 4096,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        for s in [
            "tcp://127.0.0.1:23456",
            "xml://localhost:23457",
            "ws://127.0.0.1:34567/",
            "ws+json://127.0.0.1:34567/push/x",
            "tls://localhost:23443",
            "wss://localhost:34443/",
            "wss+json://[::1]:34443/push",
        ] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        assert_eq!(
            "127.0.0.1:1".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:1".into())
        );
        for bad in [
            "127.0.0.1",
            "tcp://:1",
            "tcp://h:99999",
            "http://h:1",
            "tcp://h:1/x",
            "tls://h:1/x",
            "https://h:1",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn protocols_parse_and_place_an_address() {
        for s in ["tcp", "tls", "xml", "ws", "ws+json", "wss", "wss+json"] {
            let p: Protocol = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            let e = p.at("127.0.0.1:9");
            assert_eq!(e.to_string().split("://").next(), Some(s));
            assert_eq!(e.protocol(), p);
        }
        let p = "ws+json"
            .parse::<Protocol>()
            .unwrap()
            .with_path("/push")
            .unwrap();
        assert_eq!(p.at("h:1").to_string(), "ws+json://h:1/push");
        assert!("ws".parse::<Protocol>().unwrap().with_path("push").is_err());
        assert!(Protocol::Tcp.with_path("/x").is_err());
        assert_eq!(Protocol::Tcp.with_path("/").unwrap(), Protocol::Tcp);
        let e = "http".parse::<Protocol>().unwrap_err();
        assert!(e.to_string().contains("tcp, tls, xml"), "{e}");
        let node = cim_core::NodeAddrs {
            tcp: "t:1".into(),
            websocket: "w:2".into(),
            tls: "s:3".into(),
            wss: "ws:4".into(),
            xml: "x:5".into(),
            ..Default::default()
        };
        let at = |p: &str| p.parse::<Protocol>().unwrap().address_in(&node).to_owned();
        assert_eq!(
            ["tcp", "ws+json", "tls", "wss", "xml"].map(at),
            ["t:1", "w:2", "s:3", "ws:4", "x:5"]
        );
    }

    #[test]
    fn tls_endpoints_name_the_host_their_certificate_is_for() {
        let e: Endpoint = "tls://push.example.com:23443".parse().unwrap();
        assert!(e.is_tls());
        assert_eq!(e.host(), "push.example.com");
        let e: Endpoint = "wss+json://[::1]:34443/push".parse().unwrap();
        assert!(e.is_tls());
        assert_eq!(e.host(), "::1");
        let e: Endpoint = "ws://127.0.0.1:1/".parse().unwrap();
        assert!(!e.is_tls());
        assert_eq!(e.host(), "127.0.0.1");
    }
}
