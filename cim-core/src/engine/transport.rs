//! [`Transport`]: what carries a connection's frames (a codec over a byte stream, a WebSocket),
//! and [`ConnectionConfig`], the per-listener settings of the connections it accepts.

use std::future::Future;
use std::time::Duration;

use crate::engine::conn::{Outbound, SlowConsumer};
use crate::engine::heartbeat::Timers;
use crate::error::Result;
use crate::frame::Frame;

/// A connection's frames in and out: a codec over a socket, or a WebSocket.
pub trait Transport: Send + 'static {
    /// The next frame from the peer; `Ok(None)` when the peer closed the connection cleanly.
    /// Must be cancel-safe: a call abandoned before it completes loses nothing.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>>> + Send;

    /// Encodes `items` and writes them, in as few writes as possible, then flushes. An item
    /// this transport cannot encode is skipped with a warning; only a failed write is an error.
    fn send(&mut self, items: &[Outbound]) -> impl Future<Output = Result<()>> + Send;

    /// Closes the connection (a WebSocket close frame, a TCP shutdown).
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// A whole frame already read into this transport's buffer, without any I/O; `Ok(None)`
    /// when there is none. The driver handles a burst of requests this way and answers them
    /// with one write. The default buffers nothing.
    fn recv_buffered(&mut self) -> Result<Option<Frame>> {
        Ok(None)
    }
}

/// Per-listener settings of the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Heartbeat, idle and bind timers.
    pub timers: Timers,
    /// Items a connection's outbound queue holds before it counts as a slow consumer and is
    /// closed (default 1024).
    pub queue_capacity: usize,
    /// Time a write may take before the peer counts as stalled and is closed (default 15 s).
    pub write_timeout: Duration,
    /// Queued items written in one batch at most (default 256).
    pub max_batch: usize,
    /// What a full queue does to the connection (default: close it).
    pub slow_consumer: SlowConsumer,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            timers: Timers::default(),
            queue_capacity: 1024,
            write_timeout: Duration::from_secs(15),
            max_batch: 256,
            slow_consumer: SlowConsumer::Close,
        }
    }
}
