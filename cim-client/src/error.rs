//! The SDK's one error type.

use cim_core::ReplyBody;

/// What can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An endpoint that cannot be parsed.
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// What was given.
        endpoint: String,
        /// Why it is refused.
        reason: String,
    },
    /// Connecting (TCP, or the WebSocket handshake) failed.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// Where to.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Dispatch (`GET /api/v1/dispatch`) could not be asked, or named no usable address.
    #[error("dispatch {url}: {reason}")]
    Dispatch {
        /// The dispatch URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused the bind (or the WebSocket handshake) with this reply.
    #[error("refused by the server: {} {} {}", .0.key, .0.code, .0.message)]
    Refused(ReplyBody),
    /// There is no bound connection now (stopped, or between reconnects).
    #[error("not connected")]
    NotConnected,
    /// The connection closed before the reply came.
    #[error("the connection closed before the reply")]
    Disconnected,
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The client was destroyed.
    #[error("the client was destroyed")]
    Destroyed,
    /// A frame could not be written or read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An HTTP API call failed (feature `http`): the method, path, status and the server's reason.
    #[error("http: {0}")]
    Http(String),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The SDK's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
