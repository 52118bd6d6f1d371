//! The cim-rs client SDK: connect to a CIM server over TCP (CIM's binary protocol), WebSocket
//! (protobuf or JSON) or the XML protocol, each of the first two also over TLS (`tls://`,
//! `wss://`), bind an account, send requests and messages, and take
//! pushed messages as a stream of [`Event`]s.
//!
//! The client answers PINGs by itself, reconnects by itself with exponential back-off and full
//! jitter ([`Backoff`]), binds again after a reconnect, and stops reconnecting when the account
//! is kicked by another device or the server refuses it. With [`ClientConfig::receipts`] it
//! uses the `client_ack` extension: each message is acknowledged once the application has taken
//! it from [`Events`], and the server sends again whatever was not acknowledged.
//!
//! ```no_run
//! use cim_client::{BindInfo, Client, ClientConfig, Event};
//!
//! # async fn demo() -> Result<(), cim_client::ClientError> {
//! let config = ClientConfig::new("tcp://127.0.0.1:23456".parse()?, BindInfo::new("10000"));
//! let (client, mut events) = Client::start(config);
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Connected { .. } => {
//!             let id = client
//!                 .send_message("10001", cim_client::text("hello"))
//!                 .await?;
//!             println!("sent message {id}");
//!         }
//!         Event::Message(m) => println!("{}: {}", m.sender, m.content),
//!         Event::Kicked(_) => break,
//!         _ => {}
//!     }
//! }
//! client.destroy().await;
//! # Ok(())
//! # }
//! ```
//!
//! The `cim` command-line client (crate `cim-cli`) is built on it; feature `http` adds a small
//! client for the server's HTTP API ([`http`]).

mod backoff;
mod client;
mod config;
mod error;
#[cfg(feature = "http")]
pub mod http;
mod tls;
mod transport;

pub use backoff::Backoff;
pub use cim_core::{Message, ReplyBody, SentBody};
pub use client::{Client, Event, Events};
pub use config::{BindInfo, ClientConfig, Endpoint, WsMode};
pub use error::{ClientError, Result};

/// A text message (action `2`, format `txt`) with `content`, for [`Client::send_message`].
pub fn text(content: impl Into<String>) -> Message {
    Message {
        action: "2".into(),
        format: "txt".into(),
        content: content.into(),
        ..Message::default()
    }
}
