//! Transports: what carries frames between a socket and the connection engine.

pub mod stream;
pub mod tcp;
pub mod ws;

pub use stream::StreamTransport;
pub use tcp::TcpTransport;
pub use ws::{HandshakeRequest, WsCodecs, WsMode, WsSettings, WsTransport};
