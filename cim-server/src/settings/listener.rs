//! [`ListenerSettings`]: one struct for every long-connection listener — `[tcp]`, `[websocket]`
//! and `[xml]` — with the defaults of each.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::host::Host;
use super::{SettingsError, invalid};
use crate::access::{self, Access, ForwardedHeader, Networks};
use crate::transport::WsMode;

/// A long-connection listener: where it listens, the largest frame it takes, and who may
/// connect. The keys `path`, `mode`, `require_token` and `forwarded_header` are the WebSocket
/// listener's; `flash_policy` the XML listener's: set on another listener, they are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Whether to listen.
    pub enabled: bool,
    /// Address or host name to listen on (a name is resolved at start-up).
    pub host: Host,
    /// Port (0 picks a free one).
    #[serde(deserialize_with = "super::port::port")]
    pub port: u16,
    /// Largest frame in and out: a TCP frame's body (at most 65535), a WebSocket message, an
    /// XML document.
    pub max_frame: usize,
    /// WebSocket: requests whose path starts with this are upgraded.
    pub path: String,
    /// WebSocket: `auto` (per connection), `protobuf` or `json`.
    pub mode: WsMode,
    /// WebSocket: refuse upgrades without a valid `token` (and `uid`) in the query string
    /// (needs `auth.token_secret`).
    pub require_token: bool,
    /// XML: answer a Flash client's `<policy-file-request/>` with a cross-domain policy.
    pub flash_policy: bool,
    /// Read a PROXY protocol header (v1 or v2) on every connection from `trusted_proxies`.
    pub proxy_protocol: bool,
    /// The networks of the load balancers whose PROXY headers (and, on the WebSocket listener,
    /// forwarding headers) are believed.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub trusted_proxies: Networks,
    /// WebSocket: the header the trusted proxies name the client in: `x-forwarded-for`,
    /// `forwarded` or `x-real-ip`.
    pub forwarded_header: ForwardedHeader,
    /// When not empty, only clients in these networks are served.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub allow: Networks,
    /// Clients in these networks are refused.
    #[serde(default)] // an empty list is left out of the merged defaults
    pub deny: Networks,
    /// The longest PROXY header taken, in bytes.
    pub max_proxy_header: usize,
    /// TCP and WebSocket: TLS (`[tcp.tls]`, `[websocket.tls]`).
    pub tls: TlsSettings,
}

/// `[tcp.tls]` and `[websocket.tls]`: TLS on a listener. With `cert` and `key` set, the
/// listener's own port speaks TLS; with `port` set too, the listener's port stays plain and a
/// TLS listener of the same protocol opens on `port` beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, PEM, the end-entity certificate first (empty: no TLS).
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A port for a TLS listener beside the plain one (0 picks a free one); unset: the
    /// listener's own port speaks TLS.
    #[serde(deserialize_with = "super::port::optional")]
    pub port: Option<u16>,
}

impl TlsSettings {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// Whether a TLS listener opens beside the plain one.
    pub fn beside(&self) -> bool {
        self.enabled() && self.port.is_some()
    }
}

/// The keys of [`ListenerSettings`] each listener's section refuses (they are another
/// listener's): left out where the settings are printed.
pub(crate) const FOREIGN_KEYS: &[(&str, &[&str])] = &[
    (
        "tcp",
        &[
            "path",
            "mode",
            "require_token",
            "forwarded_header",
            "flash_policy",
        ],
    ),
    ("websocket", &["flash_policy"]),
    (
        "xml",
        &["path", "mode", "require_token", "forwarded_header", "tls"],
    ),
];

/// Which listener a [`ListenerSettings`] configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    WebSocket,
    Xml,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::WebSocket => "websocket",
            Kind::Xml => "xml",
        }
    }
}

impl ListenerSettings {
    fn base(enabled: bool, port: u16, max_frame: usize) -> Self {
        Self {
            enabled,
            host: Host::LOOPBACK,
            port,
            max_frame,
            path: "/".into(),
            mode: WsMode::Auto,
            require_token: false,
            flash_policy: false,
            proxy_protocol: false,
            trusted_proxies: Networks::none(),
            forwarded_header: ForwardedHeader::default(),
            allow: Networks::none(),
            deny: Networks::none(),
            max_proxy_header: access::DEFAULT_MAX_PROXY_HEADER,
            tls: TlsSettings::default(),
        }
    }

    /// The listener's [`Access`]: its PROXY protocol, trusted proxies and address lists.
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

    /// `[tcp]`: CIM's binary protocol on 23456, frames up to 65535 bytes.
    pub fn tcp() -> Self {
        Self::base(true, 23456, 65535)
    }

    /// `[websocket]`: on 34567, messages up to 64 KiB.
    pub fn websocket() -> Self {
        Self::base(true, 34567, 64 * 1024)
    }

    /// `[xml]`: off; on 23457, documents up to 64 KiB.
    pub fn xml() -> Self {
        Self::base(false, 23457, 64 * 1024)
    }

    /// Checks the keys of the listener `kind`: ranges, and no key of another protocol.
    pub(crate) fn validate(&self, kind: Kind) -> Result<(), SettingsError> {
        let section = kind.section();
        let key = |k: &str| format!("{section}.{k}");
        let (min, max) = match kind {
            Kind::Tcp => (1, 65535),
            Kind::WebSocket | Kind::Xml => (16, usize::MAX),
        };
        if !(min..=max).contains(&self.max_frame) {
            let range = if max == usize::MAX {
                format!("must be at least {min}")
            } else {
                format!("must be {min} to {max}")
            };
            return Err(invalid(key("max_frame"), self.max_frame, range));
        }
        let defaults = Self::base(false, 0, 0);
        if kind != Kind::WebSocket {
            let only_ws = "only the websocket listener takes it";
            if self.path != defaults.path {
                return Err(invalid(key("path"), format!("{:?}", self.path), only_ws));
            }
            if self.mode != defaults.mode {
                return Err(invalid(key("mode"), format!("{:?}", self.mode), only_ws));
            }
            if self.require_token {
                return Err(invalid(key("require_token"), true, only_ws));
            }
            if self.forwarded_header != defaults.forwarded_header {
                return Err(invalid(
                    key("forwarded_header"),
                    format!("{:?}", self.forwarded_header.name()),
                    "only the websocket listener (and the HTTP API) read forwarding headers",
                ));
            }
        } else if !self.path.starts_with('/') {
            return Err(invalid(
                key("path"),
                format!("{:?}", self.path),
                "must start with /",
            ));
        }
        if kind != Kind::Xml && self.flash_policy {
            return Err(invalid(
                key("flash_policy"),
                true,
                "only the xml listener takes it",
            ));
        }
        validate_access(section, &self.access())?;
        self.validate_tls(kind)
    }

    fn validate_tls(&self, kind: Kind) -> Result<(), SettingsError> {
        let section = kind.section();
        let key = |k: &str| format!("{section}.tls.{k}");
        let tls = &self.tls;
        let shown = |p: &PathBuf| format!("{:?}", p.display().to_string());
        let has_key = !tls.key.as_os_str().is_empty();
        if kind == Kind::Xml && (tls.enabled() || has_key || tls.port.is_some()) {
            let (k, v) = if tls.enabled() {
                ("cert", shown(&tls.cert))
            } else if has_key {
                ("key", shown(&tls.key))
            } else {
                ("port", tls.port.unwrap_or_default().to_string())
            };
            return Err(invalid(
                key(k),
                v,
                "the xml listener is plain only: tcp and websocket take TLS",
            ));
        }
        if tls.enabled() && !has_key {
            return Err(invalid(
                key("key"),
                "\"\"",
                format!("needed with {} (its private key)", key("cert")),
            ));
        }
        if has_key && !tls.enabled() {
            return Err(invalid(
                key("cert"),
                "\"\"",
                format!("needed with {} (the certificate chain)", key("key")),
            ));
        }
        match tls.port {
            Some(port) if !tls.enabled() => Err(invalid(
                key("port"),
                port,
                format!("needs {} and {}", key("cert"), key("key")),
            )),
            Some(port) if port != 0 && port == self.port => Err(invalid(
                key("port"),
                port,
                format!(
                    "is {section}.port: leave {} out for TLS on that port, or give another",
                    key("port")
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Checks the access keys of `section` (a listener, or `http`): the PROXY header's limit, and
/// trusted proxies for the PROXY protocol.
pub(crate) fn validate_access(section: &str, access: &Access) -> Result<(), SettingsError> {
    let range = access::proxy_header::MIN_LIMIT..=access::proxy_header::MAX_LIMIT;
    if !range.contains(&access.max_proxy_header) {
        return Err(invalid(
            format!("{section}.max_proxy_header"),
            access.max_proxy_header,
            format!("must be {} to {}", range.start(), range.end()),
        ));
    }
    if access.proxy_protocol && access.trusted_proxies.is_empty() {
        return Err(invalid(
            format!("{section}.proxy_protocol"),
            true,
            format!(
                "needs {section}.trusted_proxies: the networks of the load balancers whose \
                 PROXY headers are believed"
            ),
        ));
    }
    Ok(())
}
