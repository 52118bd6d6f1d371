//! The connection engine: one task per connection ([`serve_connection`], or
//! [`spawn_connection`], which parks idle ones without a task) driving a [`Transport`], the
//! [`Hub`] of shared services, the [`SessionManager`] seam with its in-memory
//! [`LocalSessionManager`], the [`Router`] seam (the send rule) with its single-node
//! [`LocalRouter`], the [`MessageStore`] seam, request handlers, policies and the heartbeat
//! rules.
//!
//! How data flows (see also `docs/architecture.md`):
//!
//! ```text
//! socket bytes -> Transport (codec) -> Frame -> connection task (driver)
//!   client_bind        -> handover: authenticate, SessionManager::bind (kick policy), replay
//!   any other key      -> RequestHandler (builtin or yours) -> ReplyBody -> Transport -> socket
//! Hub::send (HTTP API, client_message, handlers)
//!   -> Router::send -> SessionManager::push -> ConnectionHandle queue -> connection task
//!                   -> or MessageStore::append (nobody took it, or the account acknowledges)
//! ```

mod builder;
mod builtin;
mod conn;
mod deadlines;
mod dispatch;
mod driver;
mod handler;
mod handover;
mod heartbeat;
mod hub;
pub mod ids;
mod local;
mod local_router;
mod locks;
pub mod metrics;
#[cfg(unix)]
mod park;
mod policy;
mod registry;
mod requests;
mod router;
mod services;
mod sessions;
mod shared;
mod store;
mod time_limit;
mod transport;

pub use builder::HubBuilder;
pub use builtin::{ClientAck, ClientMessage, GetOfflineMessages, RemoveTag, SetTag, defaults};
pub use conn::{
    CloseRequest, ConnId, ConnectionHandle, Outbound, OutboundReceiver, PushError, SlowConsumer,
};
pub use dispatch::{Dispatch, LocalDispatch, NodeAddrs};
pub use driver::{serve_connection, spawn_connection};
pub use handler::{EventContext, EventListener, RequestContext, RequestHandler};
pub use heartbeat::{Heartbeat, IdleReason, TimerAction, Timers};
pub use hub::Hub;
pub use ids::MessageIds;
pub use local::{LocalSessionManager, OPERATOR, kick_notice};
pub use local_router::LocalRouter;
pub use metrics::describe_metrics;
pub use policy::{
    AllowAll, AuthError, BindAuthenticator, CimKickPolicy, KeepAll, KickDecision, KickPolicy,
};
pub use router::{Router, Sent};
pub use services::{Admission, Services};
pub use sessions::{BindOutcome, Delivery, OnlinePage, Page, SessionManager};
pub use shared::SharedMessage;
pub use store::{Appended, MemoryStore, MessageStore, Seq, Stored};
pub use time_limit::within;
#[cfg(unix)]
pub use transport::ParkedSend;
pub use transport::{Closing, ConnectionConfig, Transport};
