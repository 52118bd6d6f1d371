//! [`Error`]: the one error type of the engine and its seams.

use crate::codec::CodecError;

/// What can go wrong in the engine, a handler, a session manager or a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes or a frame a codec refused.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A socket or file failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A refusal to answer with a reply code, such as `400` for a missing field. A handler that
    /// returns this gets a reply with the code and message; other errors are answered `500`.
    #[error("{code}: {message}")]
    Reply {
        /// The reply code, one of [`crate::protocol::code`].
        code: &'static str,
        /// Why.
        message: String,
    },
    /// A backend (session registry, message store) failed or is unreachable.
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A backend refused what was asked of it for a reason that waiting will not fix (a cluster
    /// node whose name is taken by a live node, say).
    #[error("{0}")]
    Conflict(String),
    /// A transport (WebSocket, TLS) failed.
    #[error("transport error: {0}")]
    Transport(String),
}

impl Error {
    /// An [`Error::Reply`].
    pub fn reply(code: &'static str, message: impl Into<String>) -> Self {
        Error::Reply {
            code,
            message: message.into(),
        }
    }

    /// A `400` refusal.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::reply(crate::protocol::code::BAD_REQUEST, message)
    }

    /// An [`Error::Unavailable`].
    pub fn unavailable(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            what,
            reason: reason.to_string(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
