//! [`ListenerSettings`]: one struct for every long-connection listener — `[tcp]`, `[websocket]`
//! and `[xml]` — with the defaults of each.

use serde::{Deserialize, Serialize};

use super::host::Host;
use super::{SettingsError, invalid};
use crate::transport::WsMode;

/// A long-connection listener: where it listens and the largest frame it takes. The keys
/// `path`, `mode` and `require_token` are the WebSocket listener's; `flash_policy` the XML
/// listener's: set on another listener, they are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Whether to listen.
    pub enabled: bool,
    /// Address or host name to listen on (a name is resolved at start-up).
    pub host: Host,
    /// Port (0 picks a free one).
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
}

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
        Ok(())
    }
}
