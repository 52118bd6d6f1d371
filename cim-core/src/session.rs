//! [`Session`]: what the server knows about a bound connection.

use ecow::EcoString;
use serde::{Deserialize, Serialize};

use crate::message::SentBody;
use crate::protocol::bind;

/// A connection bound to an account, as listed by the session manager and the HTTP API.
///
/// Every bound connection keeps one, so its text is held as [`EcoString`]s: sixteen bytes
/// each, a value of up to 15 bytes (an account, a terminal type, an IPv4 address and port)
/// inline, a longer one in one allocation that clones share. The struct's size is guarded by a
/// test (in `cim-server/tests/sizes.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Connection id, unique within its node (CIM's `nid`).
    pub nid: u64,
    /// Node (server) that holds the connection.
    pub node: EcoString,
    /// The bound account.
    pub uid: EcoString,
    /// Terminal type, see [`crate::protocol::channel`].
    pub channel: EcoString,
    /// Device id.
    pub device_id: EcoString,
    /// Device name.
    pub device_name: EcoString,
    /// Application version.
    pub app_version: EcoString,
    /// Operating system version.
    pub os_version: EcoString,
    /// Language.
    pub language: EcoString,
    /// Peer address, as `ip:port`.
    pub remote_addr: EcoString,
    /// The protocol of the listener that accepted the connection (`tcp`, `websocket`, `xml`;
    /// a name of the server's choosing).
    #[serde(default)]
    pub protocol: EcoString,
    /// Bind time, milliseconds since the Unix epoch.
    pub bind_time: i64,
    /// Whether the client acknowledges messages (the receipts extension).
    #[serde(default)]
    pub client_ack: bool,
}

impl Session {
    /// The session described by a `client_bind` request, with the CIM 2.x keys `account`,
    /// `device` and `version` accepted for `uid`, `deviceName` and `appVersion`. `nid`, `node`, `remote_addr` and
    /// `bind_time` are left for the caller.
    pub fn from_bind(body: &SentBody) -> Session {
        let pick = |k: &str, legacy: Option<&str>| -> EcoString {
            match body.data.get(k) {
                Some(v) => v.into(),
                None => legacy.and_then(|l| body.data.get(l)).unwrap_or("").into(),
            }
        };
        Session {
            uid: pick(bind::UID, Some(bind::LEGACY_ACCOUNT)),
            channel: pick(bind::CHANNEL, None),
            device_id: pick(bind::DEVICE_ID, None),
            device_name: pick(bind::DEVICE_NAME, Some(bind::LEGACY_DEVICE)),
            app_version: pick(bind::APP_VERSION, Some(bind::LEGACY_VERSION)),
            os_version: pick(bind::OS_VERSION, None),
            language: pick(bind::LANGUAGE, None),
            client_ack: matches!(body.data.get(bind::CLIENT_ACK), Some("true" | "1")),
            ..Session::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_and_long_text_shared() {
        let s = Session::from_bind(&SentBody::new("client_bind").with("uid", "u123456789abcde"));
        assert_eq!(s.uid.len(), 15);
        assert!(s.uid.is_inline());
        let long = EcoString::from("an account of more than fifteen bytes");
        assert!(!long.is_inline());
        assert_eq!(long.clone().as_ptr(), long.as_ptr());
    }

    #[test]
    fn from_bind_reads_new_and_legacy_keys() {
        let s = Session::from_bind(
            &SentBody::new("client_bind")
                .with("uid", "u1")
                .with("channel", "android")
                .with("deviceId", "d1")
                .with("deviceName", "Pixel"),
        );
        assert_eq!((s.uid.as_str(), s.channel.as_str()), ("u1", "android"));
        assert_eq!(
            (s.device_id.as_str(), s.device_name.as_str()),
            ("d1", "Pixel")
        );
        // A CIM 2.x bind.
        let s = Session::from_bind(
            &SentBody::new("client_bind")
                .with("account", "old")
                .with("device", "Nokia")
                .with("version", "2.2.1"),
        );
        assert_eq!(
            (
                s.uid.as_str(),
                s.device_name.as_str(),
                s.app_version.as_str()
            ),
            ("old", "Nokia", "2.2.1")
        );
        // The 4.x name wins when both are sent.
        let s = Session::from_bind(
            &SentBody::new("client_bind")
                .with("version", "old")
                .with("appVersion", "new"),
        );
        assert_eq!(s.app_version, "new");
    }
}
