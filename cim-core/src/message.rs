//! The three bodies of the CIM protocol: [`Message`], [`SentBody`] and [`ReplyBody`].
//!
//! Field names and meanings follow CIM 4.x (docs/protocol.md section 1), with the two
//! attachment fields of CIM 2.x (`file`, `fileType`) beside them. Every string defaults to `""`
//! and every integer to 0, as in proto3, so a missing field and an empty one are the same.

use serde::{Deserialize, Serialize};

use crate::data::DataMap;
use crate::lenient;
use crate::protocol::{action, code, key};

/// A message pushed by the server to an account (`Frame::Message`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// Server-assigned id, unique per server (or cluster).
    #[serde(deserialize_with = "lenient::int")]
    pub id: i64,
    /// What kind of message this is; applications define their own, `999` is a kick.
    #[serde(deserialize_with = "lenient::string")]
    pub action: String,
    /// Title, for notifications.
    #[serde(deserialize_with = "lenient::string")]
    pub title: String,
    /// The payload.
    #[serde(deserialize_with = "lenient::string")]
    pub content: String,
    /// The sending account (`"0"` or `"system"` for the server itself).
    #[serde(deserialize_with = "lenient::string")]
    pub sender: String,
    /// The receiving account (or tag).
    #[serde(deserialize_with = "lenient::string")]
    pub receiver: String,
    /// Content format, such as `txt` or `json`; free for applications.
    #[serde(deserialize_with = "lenient::string")]
    pub format: String,
    /// Free-form extra field.
    #[serde(deserialize_with = "lenient::string")]
    pub extra: String,
    /// Creation time, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "lenient::int")]
    pub timestamp: i64,
    /// An attachment, usually its URL (CIM 2.x's `file`: an image, a voice clip). CIM 4.x has no
    /// such field; docs/protocol.md section 1 says how each wire format carries it.
    #[serde(
        deserialize_with = "lenient::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub file: String,
    /// What the attachment is, such as `image` or `voice` (CIM 2.x's `fileType`).
    #[serde(
        rename = "fileType",
        deserialize_with = "lenient::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub file_type: String,
}

impl Message {
    /// Whether this is the kick notice (action `999`).
    pub fn is_kick(&self) -> bool {
        self.action == action::KICK
    }
}

/// A request from a client (`Frame::Sent`), routed to a handler by its `key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SentBody {
    /// Names the request, such as [`key::CLIENT_BIND`].
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    /// Client time, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "lenient::int")]
    pub timestamp: i64,
    /// The request's parameters.
    pub data: DataMap,
}

impl SentBody {
    /// A request with the given key, no data and a zero timestamp.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// Adds a data entry (builder style).
    pub fn with(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.data.insert(k, v);
        self
    }

    /// The value of a data entry, or `""` when absent.
    pub fn get(&self, k: &str) -> &str {
        self.data.get(k).unwrap_or("")
    }
}

/// The server's answer to a request (`Frame::Reply`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplyBody {
    /// Echoes the request's key.
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    /// Result code as a string, such as [`code::OK`] (`"200"`).
    #[serde(deserialize_with = "lenient::string")]
    pub code: String,
    /// Human-readable detail.
    #[serde(deserialize_with = "lenient::string")]
    pub message: String,
    /// Extra values.
    pub data: DataMap,
    /// Server time, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "lenient::int")]
    pub timestamp: i64,
}

impl ReplyBody {
    /// A reply to `key` with `code` and nothing else.
    pub fn new(key: impl Into<String>, code: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            code: code.into(),
            ..Self::default()
        }
    }

    /// A `200` reply to `key`.
    pub fn ok(key: impl Into<String>) -> Self {
        Self::new(key, code::OK)
    }

    /// Sets the message (builder style).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds a data entry (builder style).
    pub fn with(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.data.insert(k, v);
        self
    }

    /// Whether the code is `200`.
    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }
}

/// The reply that refuses a WebSocket handshake (`client_handshake` / `401`).
pub fn handshake_refused() -> ReplyBody {
    ReplyBody::new(key::CLIENT_HANDSHAKE, code::UNAUTHORIZED).with_message("Unauthorized")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_json() {
        let m: Message = serde_json::from_str(
            r#"{"id":"42","action":2,"content":null,"timestamp":1.7e12,"unknown":[1]}"#,
        )
        .unwrap();
        assert_eq!(m.id, 42);
        assert_eq!(m.action, "2");
        assert_eq!(m.content, "");
        assert_eq!(m.timestamp, 1_700_000_000_000);
        assert!(serde_json::from_str::<Message>(r#"{"id":"x"}"#).is_err());
        assert_eq!((m.file.as_str(), m.file_type.as_str()), ("", ""));
    }

    #[test]
    fn attachment_fields_in_json() {
        // Written only when set, so a message without an attachment reads as CIM 4.x wrote it.
        let plain = serde_json::to_string(&Message::default()).unwrap();
        assert!(!plain.contains("file"), "{plain}");
        let m = Message {
            file: "http://x/a.png".into(),
            file_type: "image".into(),
            ..Message::default()
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.ends_with(r#""file":"http://x/a.png","fileType":"image"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        assert!(serde_json::from_str::<Message>(r#"{"id":1.5}"#).is_err());
    }

    #[test]
    fn builders() {
        let s = SentBody::new(key::CLIENT_BIND).with("uid", "u1");
        assert_eq!(s.get("uid"), "u1");
        assert_eq!(s.get("channel"), "");
        let r = ReplyBody::ok("k").with("a", "b").with_message("m");
        assert!(r.is_ok());
        assert_eq!(r.data.get("a"), Some("b"));
        assert!(!handshake_refused().is_ok());
    }
}
