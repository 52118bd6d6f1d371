//! # cim-server
//!
//! Compose a CIM-compatible push server: listeners (CIM's binary protocol on TCP, WebSocket in
//! protobuf or JSON mode, the MINA-era XML protocol; the first two also over TLS with
//! [`ServerBuilder::tls_listener`] and a [`TlsConfig`]), a session manager, request handlers
//! and policies, started as one [`RunningServer`].
//!
//! ```no_run
//! use async_trait::async_trait;
//! use cim_core::{ReplyBody, RequestContext, RequestHandler, Result, SentBody};
//! use cim_server::{Listener, Server};
//!
//! /// Answers `echo` requests with their own data.
//! struct Echo;
//!
//! #[async_trait]
//! impl RequestHandler for Echo {
//!     async fn handle(&self, _: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
//!         let mut reply = ReplyBody::ok(&body.key);
//!         reply.data = body.data;
//!         Ok(Some(reply))
//!     }
//! }
//!
//! # async fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .listener(Listener::binary("127.0.0.1:23456".parse()?))
//!     .listener(Listener::websocket("127.0.0.1:34567".parse()?))
//!     .handler("echo", Echo)
//!     .start()
//!     .await?;
//! // Push to account "10000" from anywhere that holds the hub:
//! server.hub().send(cim_core::Message {
//!     receiver: "10000".into(),
//!     action: "2".into(),
//!     content: "hello".into(),
//!     ..Default::default()
//! }).await?;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! All on by default; a library build takes what it needs, e.g. `default-features = false,
//! features = ["redb"]`.
//!
//! - `http`: the HTTP API (the modules `http` and `metrics`): CIM's `POST /api/message/send`, the JSON API
//!   under `/api/v1` (dispatch among them), `GET /health`, `GET /metrics` and the admin console,
//!   with axum, hyper and the Prometheus recorder. Without it the server runs its TCP, WebSocket
//!   and XML listeners only. The `[http]` section still parses, so one configuration file serves
//!   either build: `http.enabled` defaults to false (said once in the log at start-up) and an
//!   explicit `true` is refused, naming the key. A cluster node built without it cannot serve
//!   `GET /api/v1/dispatch`: clients must be sent to it by a node that has it, or configured
//!   with its address.
//! - `redb`, `sled`: the store backends (`store.backend`).
//! - `cli`: the `cim-server` binary's command line and logs.
//! - `mimalloc`: the binary's allocator.

pub mod access;
pub mod app;
pub mod auth;
pub mod drain;
mod flash;
pub mod gate;
#[cfg(feature = "http")]
pub mod http;
pub mod listener;
#[cfg(feature = "http")]
pub mod metrics;
mod refusal;
pub mod server;
pub mod settings;
pub mod tls;
pub mod transport;

pub use listener::{Listener, Protocol};
pub use server::{RunningServer, Server, ServerBuilder, ServerError};
pub use settings::Settings;
pub use tls::TlsConfig;
pub use transport::{WsCodecs, WsMode, WsSettings};
