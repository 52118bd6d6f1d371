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
//! # Following dispatch
//!
//! Instead of a fixed server, a client can follow a cluster's dispatch
//! ([`ClientConfig::dispatched`], [`ClientConfig::dispatched_any`], [`Target::Dispatch`]):
//! before every connect and every reconnect it asks a dispatch URL (`GET /api/v1/dispatch`, one
//! small HTTP/1.1 request on a connection of its own, see [`dispatch`]) which node to connect
//! to, and connects to the address that node has for the configured [`Protocol`]. Given several
//! URLs (the HTTP APIs of several nodes, so that a node drained or dead does not take the
//! client's dispatch with it) it asks them in turn, from the one that last answered. After it
//! lost the connection to a node, or could not reach the node named, it asks dispatch to pass
//! over that node (`?avoid=`): a node killed stays live in the cluster's registry until its
//! deadline, and would otherwise be named again. When none
//! can be asked — unreachable, an error (`503` when no node qualifies), no answer within
//! [`ClientConfig::connect_timeout`], a node without a listener for the protocol — the client
//! connects to the last address a bind succeeded on instead; a failed attempt of either kind is
//! retried with the same back-off as any other. [`Client::endpoint`], [`Client::node`] and
//! [`Client::dispatched_by`] tell where it is bound and who named the node.
//!
//! ```no_run
//! use cim_client::{BindInfo, Client, ClientConfig, Protocol};
//!
//! # async fn demo() -> Result<(), cim_client::ClientError> {
//! let config = ClientConfig::dispatched(
//!     "http://127.0.0.1:8080".parse()?,      // any node's HTTP API
//!     "ws+json".parse::<Protocol>()?.with_path("/")?, // the WebSocket path, `/` by default
//!     BindInfo::new("10000"),
//! );
//! let (client, _events) = Client::connect(config).await?;
//! println!("bound on node {:?} at {:?}", client.node(), client.endpoint());
//! # Ok(())
//! # }
//! ```
//!
//! # Duplicates
//!
//! A message can arrive twice: after a reconnect, when its receipt had not reached the server;
//! in a cluster, when a node died after writing it to the connection but before it could record
//! that, so that the message is routed again to wherever the account is bound next. The client
//! drops such copies by message id, across reconnects: a message whose id is among the last
//! [`ClientConfig::dedup_window`] ids it has seen (4096 by default, about 16 bytes each) never
//! reaches [`Events`]; [`Client::duplicates_dropped`] counts them. The window is bounded: a copy
//! that comes after more than that many other messages is not recognised, and a window of `0`
//! turns the check off. Messages without an id (`0`) are never taken for copies.
//!
//! The `cim` command-line client (crate `cim-cli`) is built on it; feature `http` adds a small
//! client for the server's HTTP API ([`http`]).

mod backoff;
mod client;
mod config;
pub mod dispatch;
mod error;
#[cfg(feature = "http")]
pub mod http;
mod tls;
mod transport;

pub use backoff::Backoff;
pub use cim_core::{Message, ReplyBody, SentBody};
pub use client::{Client, Event, Events};
pub use config::{BindInfo, ClientConfig, Endpoint, Protocol, Target, WsMode};
pub use dispatch::DispatchUrl;
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
