//! [`Client`]: a handle to the task that owns the connection; [`Events`]: what happens on it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cim_core::protocol::{action, code, key, send};
use cim_core::{Frame, Message, ReplyBody, SentBody};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{ClientConfig, Endpoint, Target};
use crate::dispatch::DispatchUrl;
use crate::error::{ClientError, Result};
use crate::transport::Conn;

/// Something that happened on the client's connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Connected and bound. `rebound` is true when this is a reconnect after an earlier bind.
    Connected {
        /// Whether the account was bound before on this client (a reconnect).
        rebound: bool,
    },
    /// A connect or bind attempt failed; the next comes after `retry_in`.
    ConnectFailed {
        /// Why.
        reason: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// A message pushed to the account.
    Message(Message),
    /// A reply that no request of this client waits for.
    Reply(ReplyBody),
    /// The account bound on another device: the server sent the kick notice (action `999`) and
    /// closes this connection. The client does not reconnect by itself (call
    /// [`Client::resume`] to take the account back).
    Kicked(Message),
    /// The server refused the bind (`401`: a missing or wrong token) or the WebSocket
    /// handshake. The client does not reconnect by itself.
    Refused(ReplyBody),
    /// The connection closed. The client reconnects unless it was stopped, destroyed, kicked or
    /// refused.
    Closed {
        /// Why.
        reason: String,
        /// The delay before the client reconnects; `None` when it does not by itself.
        retry_in: Option<Duration>,
    },
}

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

/// The client's events, in order. Also a [`Stream`](futures_util::Stream).
///
/// With receipts on, a message is acknowledged to the server when it is taken from here; the
/// server keeps (and re-sends after a reconnect) any message not taken yet. Keep taking events:
/// when [`ClientConfig::event_capacity`] of them wait, the client stops reading its socket.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
    receipts: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("waiting", &self.rx.len())
            .field("receipts", &self.receipts)
            .finish()
    }
}

impl Events {
    /// The next event; `None` once the client is destroyed.
    pub async fn recv(&mut self) -> Option<Event> {
        let e = self.rx.recv().await;
        self.taken(e)
    }

    fn taken(&self, e: Option<Event>) -> Option<Event> {
        if self.receipts
            && let Some(Event::Message(m)) = &e
        {
            let _ = self.commands.send(Command::Ack(m.id));
        }
        e
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(e) => Poll::Ready(self.taken(e)),
            Poll::Pending => Poll::Pending,
        }
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

/// Ids of recent messages, to drop the copies a reconnect can bring (a message sent again
/// because its receipt had not reached the server, or routed again after a cluster node died).
/// Holds the last `cap` ids (none with `cap` 0).
struct Seen {
    ids: HashSet<i64>,
    order: VecDeque<i64>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Whether `id` is new (and remembers it).
    fn first_time(&mut self, id: i64) -> bool {
        if self.cap == 0 {
            return true;
        }
        if id == 0 || !self.ids.insert(id) {
            return id == 0;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// Where an attempt connects, and why there.
struct Resolved {
    endpoint: Endpoint,
    /// The node dispatch named.
    node: Option<String>,
    /// The dispatch URL that named it.
    asked: Option<DispatchUrl>,
    /// Why dispatch could not be asked, when this is the last good address instead.
    fallback: Option<String>,
}

impl Resolved {
    /// A failed attempt's reason, saying where it went when dispatch chose (or failed to).
    fn explain(&self, reason: String) -> String {
        match (&self.fallback, &self.node) {
            (Some(why), _) => format!("{why}; the last good address {}: {reason}", self.endpoint),
            (None, Some(node)) => format!("node {node} at {}: {reason}", self.endpoint),
            (None, None) => reason,
        }
    }
}

/// How a bound session ended.
enum End {
    /// The connection dropped or failed: reconnect.
    Lost(String),
    /// `stop`: stay down until `resume`.
    Stopped(oneshot::Sender<()>),
    /// `destroy`.
    Destroyed(oneshot::Sender<()>),
    /// Kicked by another device.
    Kicked(Message),
    /// Refused (handshake check).
    Refused(ReplyBody),
    /// Every handle and the events are gone.
    Abandoned,
}

/// What waiting (for a reconnect, or while stopped) ended with.
enum Wake {
    Connect,
    Destroyed(oneshot::Sender<()>),
    Abandoned,
}

/// Requests waiting for their replies on the current connection.
#[derive(Default)]
struct Pending {
    by_request_id: HashMap<String, oneshot::Sender<Result<ReplyBody>>>,
    by_key: HashMap<String, VecDeque<oneshot::Sender<Result<ReplyBody>>>>,
    next_request_id: u64,
}

impl Pending {
    /// Registers a request; gives a `client_message` a `requestId` when it has none.
    fn add(&mut self, body: &mut SentBody, reply: oneshot::Sender<Result<ReplyBody>>) {
        if body.key == key::CLIENT_MESSAGE {
            let rid = match body.data.get(send::REQUEST_ID) {
                Some(r) => r.to_owned(),
                None => {
                    self.next_request_id += 1;
                    let r = format!("r{}", self.next_request_id);
                    body.data.insert(send::REQUEST_ID, r.clone());
                    r
                }
            };
            self.by_request_id.insert(rid, reply);
        } else {
            self.by_key
                .entry(body.key.clone())
                .or_default()
                .push_back(reply);
        }
    }

    /// Hands `reply` to the request it answers, or gives it back.
    fn answer(&mut self, reply: ReplyBody) -> Option<ReplyBody> {
        if let Some(rid) = reply.data.get(send::REQUEST_ID)
            && let Some(tx) = self.by_request_id.remove(rid)
        {
            let _ = tx.send(Ok(reply));
            return None;
        }
        let queue = self.by_key.get_mut(&reply.key)?;
        let tx = queue.pop_front();
        if queue.is_empty() {
            self.by_key.remove(&reply.key);
        }
        match tx {
            Some(tx) => {
                let _ = tx.send(Ok(reply));
                None
            }
            None => Some(reply),
        }
    }

    /// Fails every waiting request (the connection is gone).
    fn fail_all(&mut self) {
        for (_, tx) in self.by_request_id.drain() {
            let _ = tx.send(Err(ClientError::Disconnected));
        }
        for (_, q) in self.by_key.drain() {
            for tx in q {
                let _ = tx.send(Err(ClientError::Disconnected));
            }
        }
    }
}

struct Task {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    bound_before: bool,
    seen: Seen,
    /// The endpoint of the last successful bind: where a client that follows dispatch goes
    /// when dispatch cannot be asked.
    last_good: Option<Endpoint>,
    /// Which dispatch URL to ask first: the one that last answered.
    dispatch_from: usize,
    /// The node dispatch is asked to pass over: the one the last connection was lost on, or
    /// the last one named that could not be reached (none once a bind succeeds).
    avoid: Option<String>,
    /// Commands taken while waiting for room in `events`, in order.
    deferred: VecDeque<Command>,
}

impl Task {
    async fn run(mut self) {
        let mut attempt = 0u32;
        // Bound connections in a row that the server closed before `stable_after`.
        let mut flaps = 0u32;
        let mut wake = Wake::Connect;
        loop {
            match wake {
                Wake::Connect => {}
                Wake::Destroyed(done) => {
                    // The last event, if there is room for it: a destroyed client waits for
                    // nobody.
                    let _ = self.events.try_send(Event::Closed {
                        reason: "destroyed".into(),
                        retry_in: None,
                    });
                    let _ = done.send(());
                    return;
                }
                Wake::Abandoned => return,
            }
            let at = match self.resolve().await {
                Ok(at) => at,
                Err(reason) => {
                    wake = self.retry_later(reason, &mut attempt).await;
                    continue;
                }
            };
            let conn =
                match tokio::time::timeout(self.config.connect_timeout, self.connect(&at.endpoint))
                    .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(ClientError::Refused(reply))) => {
                        self.emit(Event::Refused(reply)).await;
                        wake = self.stay_down().await;
                        attempt = 0;
                        continue;
                    }
                    Ok(Err(ClientError::Connect { reason, .. })) => {
                        self.pass_over(&at.node);
                        wake = self.retry_later(at.explain(reason), &mut attempt).await;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.pass_over(&at.node);
                        wake = self
                            .retry_later(at.explain(e.to_string()), &mut attempt)
                            .await;
                        continue;
                    }
                    Err(_) => {
                        self.pass_over(&at.node);
                        let reason = format!(
                            "no bind within {:?} (connect_timeout)",
                            self.config.connect_timeout
                        );
                        wake = self.retry_later(at.explain(reason), &mut attempt).await;
                        continue;
                    }
                };
            attempt = 0;
            self.avoid = None;
            *lock(&self.shared.at) = At {
                endpoint: Some(at.endpoint.clone()),
                node: at.node.clone(),
                dispatch: at.asked,
            };
            self.last_good = Some(at.endpoint);
            let rebound = std::mem::replace(&mut self.bound_before, true);
            self.shared.connected.store(true, Ordering::Release);
            self.emit(Event::Connected { rebound }).await;
            let bound_at = tokio::time::Instant::now();
            let end = self.session(conn).await;
            self.shared.connected.store(false, Ordering::Release);
            wake = match end {
                End::Lost(reason) => {
                    // Its node may be gone: dispatch is asked to pass over it next time.
                    self.pass_over(&at.node);
                    // Closed soon after binding, again and again: something takes the account
                    // over (a second client of this device); back off as after failures.
                    let lasted = bound_at.elapsed();
                    flaps = if lasted < self.config.stable_after {
                        flaps.saturating_add(1)
                    } else {
                        0
                    };
                    let reason = if flaps > 0 {
                        format!(
                            "{reason}: closed {} ms after binding, {flaps} time(s) in a row \
                             (another connection of this account and device may be taking it \
                             over); reconnecting with back-off",
                            lasted.as_millis()
                        )
                    } else {
                        reason
                    };
                    let delay = self.config.backoff.delay(flaps);
                    self.emit(Event::Closed {
                        reason,
                        retry_in: Some(delay),
                    })
                    .await;
                    self.wait(Some(delay)).await
                }
                End::Stopped(done) => {
                    // `stop` returns once the connection is closed, whether or not the
                    // application has room for the event yet.
                    let _ = done.send(());
                    self.emit(Event::Closed {
                        reason: "stopped".into(),
                        retry_in: None,
                    })
                    .await;
                    self.stay_down().await
                }
                End::Destroyed(done) => Wake::Destroyed(done),
                End::Kicked(m) => self.down(Event::Kicked(m), "kicked").await,
                End::Refused(r) => self.down(Event::Refused(r), "refused").await,
                End::Abandoned => Wake::Abandoned,
            };
        }
    }

    /// Hands `event` to the application, waiting for room (back-pressure). A stop or destroy
    /// that arrives meanwhile ends the wait: the event is then dropped if there is still no
    /// room (a message the application never took is sent again by the server when receipts
    /// are on). Other commands wait their turn.
    async fn emit(&mut self, event: Event) {
        loop {
            tokio::select! {
                biased;
                permit = self.events.reserve() => {
                    if let Ok(p) = permit {
                        p.send(event);
                    }
                    return;
                }
                cmd = self.commands.recv() => match cmd {
                    Some(c @ (Command::Stop(_) | Command::Destroy(_))) => {
                        self.deferred.push_back(c);
                        let _ = self.events.try_send(event);
                        return;
                    }
                    Some(c) => self.deferred.push_back(c),
                    None => return,
                },
            }
        }
    }

    /// The next command: one taken while an event waited for room, or a new one.
    async fn next_command(&mut self) -> Option<Command> {
        match self.deferred.pop_front() {
            Some(c) => Some(c),
            None => self.commands.recv().await,
        }
    }

    async fn retry_later(&mut self, reason: String, attempt: &mut u32) -> Wake {
        let retry_in = self.config.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        debug!(%reason, ?retry_in, "connect failed");
        self.emit(Event::ConnectFailed { reason, retry_in }).await;
        self.wait(Some(retry_in)).await
    }

    /// Reports why the connection ended, then waits for `resume` (no reconnect by itself).
    async fn down(&mut self, why: Event, reason: &str) -> Wake {
        self.emit(why).await;
        self.emit(Event::Closed {
            reason: reason.to_owned(),
            retry_in: None,
        })
        .await;
        self.stay_down().await
    }

    /// Waits until `resume` (or destroy).
    async fn stay_down(&mut self) -> Wake {
        self.wait(None).await
    }

    /// Waits `delay` (or, with `None`, for `resume`), answering commands meanwhile.
    async fn wait(&mut self, delay: Option<Duration>) -> Wake {
        let mut deadline = delay.map(|d| tokio::time::Instant::now() + d);
        loop {
            let sleep = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => return Wake::Connect,
                cmd = self.next_command() => match cmd {
                    None => return Wake::Abandoned,
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                    Some(Command::Ack(_)) => {}
                    Some(Command::Stop(done)) => {
                        // A stop while waiting to reconnect: wait for resume instead.
                        deadline = None;
                        let _ = done.send(());
                    }
                    Some(Command::Resume) => return Wake::Connect,
                    Some(Command::Destroy(done)) => return Wake::Destroyed(done),
                },
            }
        }
    }

    /// Where to connect now: the fixed endpoint; or, following dispatch, the address it names
    /// for the protocol — or, when it cannot be asked, the last address a bind succeeded on.
    /// `Err` (retried with back-off) when there is neither.
    async fn resolve(&mut self) -> std::result::Result<Resolved, String> {
        let (urls, protocol) = match &self.config.target {
            Target::Endpoint(e) => {
                return Ok(Resolved {
                    endpoint: e.clone(),
                    node: None,
                    asked: None,
                    fallback: None,
                });
            }
            Target::Dispatch { urls, protocol } => (urls, protocol),
        };
        let limit = self.config.connect_timeout;
        let mut whys = Vec::new();
        for k in 0..urls.len() {
            let i = (self.dispatch_from + k) % urls.len();
            let Some(url) = urls.get(i) else { continue };
            let asked = tokio::time::timeout(
                limit,
                crate::dispatch::ask_avoiding(
                    url,
                    self.avoid.as_deref(),
                    self.config.ca_file.as_deref(),
                    self.config.max_frame,
                ),
            )
            .await;
            whys.push(match asked {
                Ok(Ok(node)) => {
                    let addr = protocol.address_in(&node);
                    if !addr.is_empty() {
                        debug!(node = %node.node, %addr, %url, "dispatch named a node");
                        self.dispatch_from = i;
                        return Ok(Resolved {
                            endpoint: protocol.at(addr),
                            node: Some(node.node.clone()),
                            asked: Some(url.clone()),
                            fallback: None,
                        });
                    }
                    format!(
                        "dispatch {url} named node {:?}, which has no {} address",
                        node.node,
                        protocol.listener()
                    )
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("dispatch {url}: no answer within {limit:?} (connect_timeout)"),
            });
        }
        let why = if whys.is_empty() {
            "no dispatch URL is configured".to_owned()
        } else {
            whys.join("; ")
        };
        match &self.last_good {
            Some(last) => {
                warn!(reason = %why, fallback = %last, "dispatch failed; trying the last good address");
                Ok(Resolved {
                    endpoint: last.clone(),
                    node: None,
                    asked: None,
                    fallback: Some(why),
                })
            }
            None => Err(why),
        }
    }

    /// Asks dispatch to pass over `node` next time (when a node dispatch named is the one that
    /// failed; a failed fallback to the last good address keeps what was asked before).
    fn pass_over(&mut self, node: &Option<String>) {
        if node.is_some() {
            self.avoid.clone_from(node);
        }
    }

    /// Connects to `endpoint` and binds.
    async fn connect(&mut self, endpoint: &Endpoint) -> Result<Conn> {
        let mut conn = Conn::connect(endpoint, &self.config).await?;
        let bind = self.config.bind.request(self.config.receipts);
        conn.send(&Frame::Sent(bind)).await?;
        loop {
            match conn.recv().await? {
                None => {
                    return Err(ClientError::Protocol(
                        "the server closed the connection before the bind reply".into(),
                    ));
                }
                Some(Frame::Ping) => conn.send(&Frame::Pong).await?,
                Some(Frame::Reply(r)) if r.key == key::CLIENT_BIND => {
                    return if r.code == code::OK {
                        Ok(conn)
                    } else {
                        conn.close().await;
                        Err(ClientError::Refused(r))
                    };
                }
                Some(Frame::Reply(r)) if r.key == key::CLIENT_HANDSHAKE => {
                    conn.close().await;
                    return Err(ClientError::Refused(r));
                }
                Some(other) => {
                    debug!(?other, "before the bind reply; ignored");
                }
            }
        }
    }

    /// Runs a bound connection until it ends.
    async fn session(&mut self, mut conn: Conn) -> End {
        let mut pending = Pending::default();
        let mut ack: Option<i64> = None;
        let end = loop {
            tokio::select! {
                biased;
                cmd = self.next_command() => match cmd {
                    None => break End::Abandoned,
                    Some(Command::Request { mut body, reply }) => {
                        if body.timestamp == 0 {
                            body.timestamp = cim_core::now_ms();
                        }
                        pending.add(&mut body, reply);
                        if let Err(e) = conn.send(&Frame::Sent(body)).await {
                            break End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Command::Ack(id)) => ack = Some(id),
                    Some(Command::Stop(done)) => {
                        let _ = self.flush_ack(&mut conn, &mut ack).await;
                        break End::Stopped(done);
                    }
                    Some(Command::Resume) => {}
                    Some(Command::Destroy(done)) => {
                        let _ = self.flush_ack(&mut conn, &mut ack).await;
                        break End::Destroyed(done);
                    }
                },
                frame = conn.recv() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.on_frame(&mut conn, &mut pending, frame).await {
                            break end;
                        }
                    }
                    Ok(None) => break End::Lost("closed by the server".into()),
                    Err(e) => break End::Lost(e.to_string()),
                },
                // Only when nothing else is ready: one receipt covers every message taken so far.
                () = std::future::ready(()), if ack.is_some() => {
                    if let Err(e) = self.flush_ack(&mut conn, &mut ack).await {
                        break End::Lost(format!("write failed: {e}"));
                    }
                }
            }
        };
        pending.fail_all();
        conn.close().await;
        end
    }

    async fn flush_ack(&self, conn: &mut Conn, ack: &mut Option<i64>) -> Result<()> {
        let Some(id) = ack.take() else {
            return Ok(());
        };
        let body = SentBody::new(key::CLIENT_ACK).with("id", id.to_string());
        conn.send(&Frame::Sent(body)).await
    }

    async fn on_frame(
        &mut self,
        conn: &mut Conn,
        pending: &mut Pending,
        frame: Frame,
    ) -> Option<End> {
        match frame {
            Frame::Ping => {
                if let Err(e) = conn.send(&Frame::Pong).await {
                    return Some(End::Lost(format!("write failed: {e}")));
                }
            }
            Frame::Message(m) if m.action == action::KICK => return Some(End::Kicked(m)),
            Frame::Message(m) => {
                if self.seen.first_time(m.id) {
                    self.emit(Event::Message(m)).await;
                } else {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(id = m.id, "a message seen before; dropped");
                }
            }
            Frame::Reply(r) if r.key == key::CLIENT_HANDSHAKE && r.code != code::OK => {
                return Some(End::Refused(r));
            }
            Frame::Reply(r) => {
                if let Some(r) = pending.answer(r) {
                    // The server's answers to receipts are of no interest.
                    if r.key != key::CLIENT_ACK {
                        self.emit(Event::Reply(r)).await;
                    }
                }
            }
            Frame::Pong | Frame::Sent(_) => {
                return Some(End::Lost(format!(
                    "the server sent a {:?} frame",
                    frame.frame_type()
                )));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_the_last_ids_and_no_more() {
        let mut seen = Seen::new(3);
        for id in [1, 2, 3] {
            assert!(seen.first_time(id));
        }
        assert!(!seen.first_time(1), "within the window: a copy");
        assert!(seen.first_time(4), "pushes 1 out");
        assert!(seen.first_time(1), "beyond the window: new again");
        assert!(!seen.first_time(4));
        // Messages without an id are never taken for copies.
        assert!(seen.first_time(0) && seen.first_time(0));
        let mut off = Seen::new(0);
        assert!(
            off.first_time(7) && off.first_time(7),
            "a window of 0 drops nothing"
        );
        assert!(off.ids.is_empty());
    }
}
