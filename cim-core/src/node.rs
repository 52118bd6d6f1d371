//! [`NodeAddrs`]: a node and where clients reach it — what `GET /api/v1/dispatch` answers, and
//! what a client that follows dispatch reads (so it is part of the data model, not of the
//! engine).

use serde::{Deserialize, Serialize};

/// A node and the addresses clients reach it at, each `host:port` (empty when the node has no
/// such listener). Fields missing from an answer read as empty, so a client understands the
/// answers of nodes older or newer than itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeAddrs {
    /// The node's name.
    pub node: String,
    /// Its TCP listener (CIM's binary protocol).
    pub tcp: String,
    /// Its WebSocket listener.
    pub websocket: String,
    /// Its HTTP API.
    pub http: String,
    /// Its binary protocol over TLS (`tls://`): the TCP listener's own port when that speaks
    /// TLS, or the TLS port beside it.
    pub tls: String,
    /// Its WebSocket listener over TLS (`wss://`).
    pub wss: String,
    /// Its XML listener.
    pub xml: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_read_as_empty() {
        let a: NodeAddrs =
            serde_json::from_str(r#"{"node":"a","tcp":"127.0.0.1:1","extra":1}"#).unwrap();
        assert_eq!(
            a,
            NodeAddrs {
                node: "a".into(),
                tcp: "127.0.0.1:1".into(),
                ..NodeAddrs::default()
            }
        );
    }
}
