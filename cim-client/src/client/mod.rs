//! [`Client`]: a handle to the task that owns the connection; [`Events`]: what happens on it.
//!
//! The task ([`task`]) connects, binds and reconnects with back-off; following dispatch, it
//! asks where to connect first ([`resolve`]). A bound connection runs in [`session`], which
//! matches replies to requests ([`pending`]) and drops copies of messages seen before
//! ([`seen`]).

mod events;
mod pending;
mod resolve;
mod seen;
mod session;
mod task;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_core::protocol::{code, key, send};
use cim_core::{Message, ReplyBody, SentBody};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info_span};

use crate::config::{ClientConfig, Endpoint};
use crate::dispatch::DispatchUrl;
use crate::error::{ClientError, Result};

pub use events::{Event, Events};
use seen::Seen;
use task::Task;

enum Command {
    Request {
        body: SentBody,
        reply: oneshot::Sender<Result<ReplyBody>>,
    },
    Ack(i64),
    Stop(oneshot::Sender<()>),
    Resume,
    Destroy(oneshot::Sender<()>),
}

struct Shared {
    connected: AtomicBool,
    /// Where the current (or last) connection went.
    at: Mutex<At>,
    /// Copies of messages seen before, dropped.
    duplicates: AtomicU64,
}

/// Where a connection went: its endpoint, the node dispatch named for it, and the dispatch URL
/// that named it.
#[derive(Default)]
struct At {
    endpoint: Option<Endpoint>,
    node: Option<String>,
    dispatch: Option<DispatchUrl>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A handle to a client: cheap to clone; the connection lives in a task of its own, which ends
/// when the client is destroyed or every handle and the [`Events`] are dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a client: it connects and binds in the background, and reconnects by itself.
    /// Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> (Client, Events) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, rx) = mpsc::channel(config.event_capacity.max(1));
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            at: Mutex::new(At::default()),
            duplicates: AtomicU64::new(0),
        });
        let client = Client {
            commands: commands.clone(),
            shared: Arc::clone(&shared),
            request_timeout: config.request_timeout,
        };
        let events = Events {
            rx,
            commands,
            receipts: config.receipts,
        };
        let span = info_span!("cim_client", uid = %config.bind.uid, target = %config.target);
        let task = Task {
            seen: Seen::new(config.dedup_window),
            config,
            commands: command_rx,
            events: event_tx,
            shared,
            bound_before: false,
            last_good: None,
            dispatch_from: 0,
            avoid: None,
            deferred: VecDeque::new(),
        };
        tokio::spawn(task.run().instrument(span));
        (client, events)
    }

    /// Starts a client and waits for its first bind. A failure is returned instead of retried
    /// (the client is then destroyed); after a successful bind the client reconnects by itself
    /// as [`start`](Self::start) does.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events)> {
        let endpoint = config.target.to_string();
        let (client, mut events) = Client::start(config);
        let failed = loop {
            match events.recv().await {
                Some(Event::Connected { .. }) => return Ok((client, events)),
                Some(Event::ConnectFailed { reason, .. }) => {
                    break ClientError::Connect { endpoint, reason };
                }
                Some(Event::Refused(r)) => break ClientError::Refused(r),
                Some(_) => {}
                None => break ClientError::Destroyed,
            }
        };
        client.destroy().await;
        Err(failed)
    }

    /// Whether the client is connected and bound now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The endpoint of the current connection (or of the last one, between reconnects); `None`
    /// before the first bind. With dispatch, the address dispatch named (or the last good one).
    pub fn endpoint(&self) -> Option<Endpoint> {
        lock(&self.shared.at).endpoint.clone()
    }

    /// The node dispatch named for the current (or last) connection; `None` with a fixed
    /// server, and when the connection went to the last good address because dispatch could
    /// not be asked.
    pub fn node(&self) -> Option<String> {
        lock(&self.shared.at).node.clone()
    }

    /// The dispatch URL that named the node of the current (or last) connection; `None` when
    /// [`node`](Self::node) is.
    pub fn dispatched_by(&self) -> Option<DispatchUrl> {
        lock(&self.shared.at).dispatch.clone()
    }

    /// How many copies of messages seen before (within
    /// [`ClientConfig::dedup_window`]) were dropped instead of reaching [`Events`].
    pub fn duplicates_dropped(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Sends `body` and returns the reply to it: replies are matched by key, in order, and for
    /// `client_message` by `requestId` (set here when missing). A reply with an error code is
    /// returned as it is, not as an error.
    pub async fn request(&self, body: SentBody) -> Result<ReplyBody> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { body, reply: tx })
            .map_err(|_| ClientError::Destroyed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Destroyed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }

    /// Sends a message to account `receiver` (`client_message`); returns the id the server gave
    /// it. `message.receiver` is set to `receiver`; its sender is the bound account. An
    /// attachment (`file`, `file_type`) is sent only when set.
    pub async fn send_message(&self, receiver: &str, message: Message) -> Result<i64> {
        let mut body = SentBody::new(key::CLIENT_MESSAGE)
            .with(send::RECEIVER, receiver)
            .with(send::ACTION, message.action)
            .with(send::TITLE, message.title)
            .with(send::CONTENT, message.content)
            .with(send::FORMAT, message.format)
            .with(send::EXTRA, message.extra);
        for (k, v) in [
            (send::FILE, message.file),
            (send::FILE_TYPE, message.file_type),
        ] {
            if !v.is_empty() {
                body.data.insert(k, v);
            }
        }
        let reply = self.request(body).await?;
        if reply.code != code::OK {
            return Err(ClientError::Refused(reply));
        }
        reply
            .data
            .get(send::MESSAGE_ID)
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ClientError::Protocol("the reply carries no messageId".into()))
    }

    /// Disconnects and stays disconnected (the account's messages wait on the server) until
    /// [`resume`](Self::resume). Returns once the connection is closed, even if nobody takes
    /// from [`Events`] (an event waiting for room is then dropped; a message among them is sent
    /// again by the server when receipts are on).
    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stop(tx))
            .map_err(|_| ClientError::Destroyed)?;
        rx.await.map_err(|_| ClientError::Destroyed)
    }

    /// Connects and binds again after [`stop`](Self::stop), a kick or a refusal.
    pub fn resume(&self) -> Result<()> {
        self.commands
            .send(Command::Resume)
            .map_err(|_| ClientError::Destroyed)
    }

    /// Disconnects for good: the task ends, [`Events`] ends after a last
    /// [`Event::Closed`] (if there is room for it), and every handle's calls fail with
    /// [`ClientError::Destroyed`]. Like [`stop`](Self::stop), it waits for nobody.
    pub async fn destroy(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Destroy(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
