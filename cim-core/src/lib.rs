//! # cim-core
//!
//! The heart of cim-rs, an instant-messaging and push framework that speaks the CIM protocols:
//! the data model ([`Message`], [`SentBody`], [`ReplyBody`], [`Frame`], [`Session`]), the
//! reserved names of the protocol ([`protocol`]), the rule for account ids ([`check_uid`]), and
//! the codec seams ([`StreamCodec`], [`PacketCodec`], [`CodecError`]) that the `cim-codec-*`
//! crates implement. With the `engine` feature, the connection engine ([`engine`]), whose
//! message ids ([`engine::ids`]) JavaScript reads exactly: at most 2^53 − 1, unique across 256
//! nodes, increasing per node across restarts.
//!
//! ```
//! use cim_core::{protocol::{bind, key}, Frame, ReplyBody, SentBody, Session};
//!
//! // What a stock Android client sends first...
//! let request = SentBody::new(key::CLIENT_BIND)
//!     .with(bind::UID, "10000")
//!     .with(bind::CHANNEL, "android");
//! // ...what the server makes of it...
//! let session = Session::from_bind(&request);
//! assert_eq!(session.uid, "10000");
//! // ...and what it answers.
//! let reply = Frame::Reply(ReplyBody::ok(&request.key));
//! assert!(matches!(reply, Frame::Reply(r) if r.is_ok()));
//! ```

mod account;
mod codec;
mod data;
#[cfg(feature = "engine")]
pub mod engine;
mod error;
mod frame;
mod lenient;
mod message;
mod node;
pub mod protocol;
mod session;
#[cfg(feature = "testing")]
pub mod testing;

pub use account::{DEFAULT_MAX_UID_BYTES, UidError, check_uid};
pub use codec::{CodecError, OwnedPacket, Packet, PacketCodec, StreamCodec, WireFormat};
pub use data::DataMap;
/// The string type of a [`Session`]'s fields: up to 15 bytes inline, longer text shared by its
/// clones.
pub use ecow::EcoString;
#[cfg(feature = "engine")]
pub use engine::{
    ConnId, ConnectionHandle, Hub, LocalSessionManager, RequestContext, RequestHandler,
    SessionManager,
};
pub use error::{Error, Result};
pub use frame::{Frame, FrameType};
pub use message::{Message, ReplyBody, SentBody, handshake_refused};
pub use node::NodeAddrs;
pub use session::Session;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
