//! The connection engine: one task per connection ([`serve_connection`]) driving a
//! [`Transport`], the [`Hub`] of shared services, the [`SessionManager`] seam with its
//! in-memory [`LocalSessionManager`], request handlers, policies and the heartbeat rules.

mod builtin;
mod conn;
mod deadlines;
mod driver;
mod handler;
mod heartbeat;
mod hub;
mod local;
mod locks;
mod policy;
mod registry;
mod sessions;
mod shared;
mod store;

pub use builtin::{ClientAck, ClientMessage, GetOfflineMessages, RemoveTag, SetTag};
pub use conn::{
    CloseRequest, ConnId, ConnectionHandle, Outbound, OutboundReceiver, PushError, SlowConsumer,
};
pub use driver::{ConnectionConfig, Transport, serve_connection};
pub use handler::{EventListener, RequestContext, RequestHandler};
pub use heartbeat::{Heartbeat, IdleReason, TimerAction, Timers};
pub use hub::{Hub, HubBuilder, MessageIds, Sent};
pub use local::{LocalSessionManager, kick_notice};
pub use policy::{
    AllowAll, AuthError, BindAuthenticator, CimKickPolicy, KeepAll, KickDecision, KickPolicy,
};
pub use sessions::{BindOutcome, Delivery, OnlinePage, Page, SessionManager};
pub use shared::SharedMessage;
pub use store::{Appended, MemoryStore, MessageStore, Seq, Stored};
