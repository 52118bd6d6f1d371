//! [`Transport`]: what carries a connection's frames (a codec over a byte stream, a WebSocket),
//! and [`ConnectionConfig`], the per-listener settings of the connections it accepts.

use std::future::Future;
use std::time::Duration;

use crate::engine::conn::{CloseRequest, Outbound, SlowConsumer};
use crate::engine::heartbeat::{IdleReason, Timers};
use crate::engine::metrics::Cause;
use crate::engine::shared::SharedMessage;
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

    /// Closes the connection for `why` (a WebSocket close frame with the matching status, a
    /// TCP shutdown). It may wait for the peer (a WebSocket close handshake); the engine bounds
    /// it in time.
    fn close(&mut self, why: Closing) -> impl Future<Output = ()> + Send;

    /// Whether this transport can write `message` (its encoding fits the listener's limit). The
    /// replay of stored messages asks before it writes one, so that a stored message is never
    /// deleted without having been sent. The default says yes.
    fn can_carry(&mut self, _message: &SharedMessage) -> bool {
        true
    }

    /// A whole frame already read into this transport's buffer, without any I/O; `Ok(None)`
    /// when there is none. The driver handles a burst of requests this way and answers them
    /// with one write. The default buffers nothing.
    fn recv_buffered(&mut self) -> Result<Option<Frame>> {
        Ok(None)
    }

    /// Whether this transport's connections can be parked while idle: given up by their task
    /// and runtime registration, their socket watched by the node instead (see
    /// [`ConnectionConfig::park_after`]). The default says no; a transport that says yes
    /// implements [`park`](Self::park) and [`unpark`](Self::unpark).
    #[cfg(unix)]
    fn parks(&self) -> bool {
        false
    }

    /// Gives up the socket's registration with the runtime, so that the connection can idle
    /// without a task, and returns the socket's descriptor, which the engine then watches for
    /// input; `Ok(None)` when the transport cannot park now (part of a frame is buffered). After
    /// `Ok(Some(_))` the transport is not used until [`unpark`](Self::unpark) (or
    /// [`close`](Self::close) if that fails).
    #[cfg(unix)]
    fn park(&mut self) -> std::io::Result<Option<std::os::fd::RawFd>> {
        Ok(None)
    }

    /// Registers the socket with the runtime again after [`park`](Self::park). Called inside
    /// the runtime.
    #[cfg(unix)]
    fn unpark(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Parked, encodes `items` and writes as much of them as the socket takes at once, without
    /// waiting and without the runtime's I/O (the engine calls it on its parking thread, or for
    /// a fan-out on tasks of the runtime, so that a message to an idle connection does not cost
    /// a resume). The default writes nothing
    /// ([`ParkedSend::Unwritten`]): the connection is then resumed to write them with
    /// [`send`](Self::send). A transport that returns [`ParkedSend::Rest`] implements
    /// [`send_rest`](Self::send_rest).
    #[cfg(unix)]
    fn send_parked(&mut self, _items: &[Outbound]) -> ParkedSend {
        ParkedSend::Unwritten
    }

    /// Live, encodes `items` and writes as much of them as the socket takes at once, without
    /// waiting: the engine tries it before [`send`](Self::send), whose future (made for each
    /// write, and boxed) most writes of a busy connection do not need. What it leaves is as for
    /// [`send_parked`](Self::send_parked): [`ParkedSend::Rest`] is written with
    /// [`send_rest`](Self::send_rest), [`ParkedSend::Unwritten`] with `send`. The default
    /// writes nothing.
    #[cfg(unix)]
    fn send_now(&mut self, _items: &[Outbound]) -> ParkedSend {
        ParkedSend::Unwritten
    }

    /// Writes `rest`, the bytes [`send_parked`](Self::send_parked) or
    /// [`send_now`](Self::send_now) left, as they are, waiting
    /// for the socket as [`send`](Self::send) does, then flushes. Called after
    /// [`unpark`](Self::unpark), before anything else is written.
    #[cfg(unix)]
    fn send_rest(&mut self, rest: bytes::Bytes) -> impl Future<Output = Result<()>> + Send {
        let n = rest.len();
        async move {
            Err(crate::error::Error::Io(std::io::Error::other(format!(
                "{n} bytes left by a parked write, and this transport cannot write them"
            ))))
        }
    }
}

/// What [`Transport::send_parked`] or [`Transport::send_now`] wrote.
#[cfg(unix)]
#[derive(Debug)]
pub enum ParkedSend {
    /// Everything.
    Written,
    /// Part: these bytes are still to be written, by [`Transport::send_rest`], before anything
    /// else.
    Rest(bytes::Bytes),
    /// Nothing (the socket took nothing, or the transport does not write while parked): the
    /// items are written by [`Transport::send`].
    Unwritten,
}

/// Why the engine closes a connection, for a transport that can tell its peer (a WebSocket's
/// close status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer left, a timer fired, the account bound elsewhere: a normal end.
    Normal,
    /// The server is shutting down (WebSocket: 1001 "going away").
    Shutdown,
    /// The peer was refused by policy: a bind or handshake that failed its check (WebSocket:
    /// 1008).
    Refused,
    /// The peer broke the protocol (WebSocket: 1002, or the transport's own more precise status,
    /// such as 1009 for a message too large).
    ProtocolError,
}

/// Why a connection ended, for logs, listeners, the peer and the metrics.
pub(crate) struct End {
    pub(crate) reason: String,
    pub(crate) closing: Closing,
    pub(crate) cause: Cause,
}

impl End {
    /// A normal end: the peer left, a timer fired, the server asked.
    pub(crate) fn normal(cause: Cause, reason: impl Into<String>) -> Self {
        Self::new(cause, reason, Closing::Normal)
    }

    /// The peer broke the protocol.
    pub(crate) fn protocol(reason: impl std::fmt::Display) -> Self {
        Self::new(
            Cause::ProtocolError,
            format!("protocol error: {reason}"),
            Closing::ProtocolError,
        )
    }

    pub(crate) fn new(cause: Cause, reason: impl Into<String>, closing: Closing) -> Self {
        Self {
            reason: reason.into(),
            closing,
            cause,
        }
    }

    /// The timers closed the connection.
    pub(crate) fn idle(why: IdleReason) -> Self {
        let cause = match why {
            IdleReason::BindTimeout => Cause::BindTimeout,
            IdleReason::UnboundIdle => Cause::UnboundIdle,
            IdleReason::NoPong { .. } => Cause::Heartbeat,
        };
        Self::normal(cause, why.to_string())
    }

    /// The end another part asked for through the queue.
    pub(crate) fn requested(req: &CloseRequest) -> Self {
        let (cause, closing) = match req {
            CloseRequest::Kicked => (Cause::Kicked, Closing::Normal),
            CloseRequest::KickedByOperator => (Cause::KickedByOperator, Closing::Normal),
            CloseRequest::Overflow => (Cause::Overflow, Closing::Normal),
            CloseRequest::Closed(_) => (Cause::ClosedByServer, Closing::Normal),
            CloseRequest::Shutdown => (Cause::Shutdown, Closing::Shutdown),
        };
        Self::new(cause, req.to_string(), closing)
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
    /// The listener's protocol, shown in its connections' sessions (default `"tcp"`).
    pub protocol: &'static str,
    /// Idle this long (nothing read or written), or at once after it binds, a connection is
    /// parked: its task ends and its socket and queue are watched by the node, until input, a
    /// close request or its heartbeat resumes it in a new task. What is pushed to it once it has
    /// idled this long is written from the parked state (resuming it only when the socket does
    /// not take it at once); a push sooner than that after a read or write resumes it. A
    /// parked TCP connection keeps under half the memory of an idle one with a task
    /// (BENCHMARKS.md); a resume costs a spawn and two registrations. Only for
    /// transports that can park (`Transport::parks`, on Unix) and connections started with
    /// [`spawn_connection`](crate::engine::spawn_connection); zero: never (default 1 s).
    pub park_after: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            timers: Timers::default(),
            queue_capacity: 1024,
            write_timeout: Duration::from_secs(15),
            max_batch: 256,
            slow_consumer: SlowConsumer::Close,
            protocol: "tcp",
            park_after: Duration::from_secs(1),
        }
    }
}
