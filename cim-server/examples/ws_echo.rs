//! A WebSocket echo server composed from the framework's own parts: a `Server::builder()` with a
//! WebSocket [`Listener`] whose packet codec is this example's own. Each text or binary message
//! becomes a request frame, an `echo` handler answers it with the same payload, and the codec
//! turns the reply back into a message of the same kind. Upgrade, WebSocket settings, receive,
//! send and close are the listener's and `WsTransport`'s, which is what `scripts/autobahn` puts
//! through the Autobahn test suite.
//!
//! ```sh
//! cargo run --release -p cim-server --example ws_echo -- 127.0.0.1:9001
//! ```
//!
//! The limits are large enough for Autobahn's section 9 (messages of up to 16 MiB).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::engine::{ConnectionConfig, Timers};
use cim_core::{
    CodecError, Frame, OwnedPacket, Packet, PacketCodec, ReplyBody, RequestContext, RequestHandler,
    Result, SentBody,
};
use cim_server::{Listener, Protocol, Server, WsCodecs, WsSettings};

/// The request key of a text message.
const TEXT: &str = "text";
/// The request key of a binary message.
const BINARY: &str = "binary";
/// The data entry holding the payload.
const PAYLOAD: &str = "payload";

/// Largest message: Autobahn's section 9 sends 16 MiB, with some room above.
const MAX_MESSAGE: usize = 20 * 1024 * 1024;

/// Text and binary messages as requests, and replies to them as messages of the same kind. A
/// binary payload rides in the request's string map one byte per character (Latin-1), which
/// maps every byte value and back.
struct EchoCodec;

impl PacketCodec for EchoCodec {
    fn decode(&self, packet: Packet<'_>) -> std::result::Result<Frame, CodecError> {
        let (key, payload) = match packet {
            Packet::Text(text) => (TEXT, text.to_owned()),
            Packet::Binary(bytes) => (BINARY, bytes.iter().copied().map(char::from).collect()),
        };
        Ok(Frame::Sent(SentBody::new(key).with(PAYLOAD, payload)))
    }

    fn encode(&self, frame: &Frame) -> std::result::Result<OwnedPacket, CodecError> {
        let Frame::Reply(reply) = frame else {
            return Err(CodecError::Unencodable(format!(
                "only replies are echoed, not {:?}",
                frame.frame_type()
            )));
        };
        let payload = reply.data.get(PAYLOAD).unwrap_or_default();
        match reply.key.as_str() {
            TEXT => Ok(OwnedPacket::Text(payload.to_owned())),
            BINARY => payload
                .chars()
                .map(|c| {
                    u8::try_from(c).map_err(|_| {
                        CodecError::Unencodable(format!("{c:?} is not a Latin-1 character"))
                    })
                })
                .collect::<std::result::Result<Vec<u8>, _>>()
                .map(|bytes| OwnedPacket::Binary(bytes.into())),
            other => Err(CodecError::Unencodable(format!("a reply to {other:?}"))),
        }
    }
}

/// Answers a `text` or `binary` request with its own payload.
struct Echo;

#[async_trait]
impl RequestHandler for Echo {
    async fn handle(&self, _: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let mut reply = ReplyBody::ok(&body.key);
        reply.data = body.data;
        Ok(Some(reply))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9001")
        .parse()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // An echo peer never binds: the bind and idle timers are set out of the way.
    let hour = Duration::from_secs(3600);
    let connection = ConnectionConfig {
        timers: Timers {
            write_idle: hour,
            read_idle: hour,
            bind_timeout: hour,
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    };
    let settings = WsSettings {
        max_message: MAX_MESSAGE,
        codecs: WsCodecs::single(Arc::new(EchoCodec)),
        ..WsSettings::default()
    };
    let server = Server::builder()
        .listener(Listener {
            protocol: Protocol::WebSocket(settings),
            connection,
            ..Listener::websocket(addr)
        })
        .handler(TEXT, Echo)
        .handler(BINARY, Echo)
        .start()
        .await?;
    for (protocol, addr) in server.addrs() {
        println!("{protocol} echo listening on ws://{addr}");
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
