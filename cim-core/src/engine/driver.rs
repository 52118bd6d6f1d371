//! The connection task: one per connection, owning its transport and its heartbeat (whose next
//! deadline waits in the node's shared timer, `deadlines.rs`). It reads frames, runs handlers,
//! writes replies and whatever others queue for it, and cleans up.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::engine::conn::{CloseRequest, ConnectionHandle, Outbound, SlowConsumer};
use crate::engine::handler::RequestContext;
use crate::engine::heartbeat::{Heartbeat, TimerAction, Timers};
use crate::engine::hub::Hub;
use crate::engine::shared::SharedMessage;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::message::{ReplyBody, SentBody};
use crate::protocol::{code, key};
use crate::session::Session;

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

/// Why a connection ended, for logs and listeners.
enum End {
    /// Normal: the peer left, a timer fired, the server asked.
    Normal(String),
    /// The peer broke the protocol.
    Protocol(String),
}

struct Conn<T> {
    hub: Arc<Hub>,
    transport: T,
    handle: ConnectionHandle,
    session: Option<Arc<Session>>,
    heartbeat: Heartbeat,
    remote: SocketAddr,
    /// From the listener's [`ConnectionConfig`] (the rest is used at the start only).
    write_timeout: Duration,
    max_batch: usize,
    out: Vec<Outbound>,
    /// Ids of stored messages written during the bind hand-over: the same messages may also sit
    /// in the queue (pushed while the hand-over ran), and are skipped there once.
    /// (Boxed: a connection that never replays holds one pointer, not an empty set.)
    #[allow(clippy::box_collection)]
    replayed: Option<Box<HashSet<i64>>>,
}

/// Stored messages written per batch during the bind hand-over.
const REPLAY_BATCH: usize = 256;

/// Runs one connection to its end. Spawn it; it returns when the connection is closed and
/// everything about it is cleaned up (unbound, `client_closed` handled, listeners told).
///
/// (A plain function returning the future, rather than an `async fn`: the arguments are then
/// not kept a second time beside the future, which keeps every connection's task smaller.)
pub fn serve_connection<T: Transport>(
    hub: Arc<Hub>,
    transport: T,
    config: ConnectionConfig,
    remote: SocketAddr,
) -> impl Future<Output = ()> {
    let id = hub.conn_ids.next();
    let span = info_span!("conn", id = id.0, peer = %remote, uid = tracing::field::Empty);
    let (handle, rx) =
        ConnectionHandle::with_policy(id, config.queue_capacity, config.slow_consumer);
    // Built here and captured as it is, so the future holds one copy of each part.
    let mut conn = Conn {
        hub,
        transport,
        handle,
        session: None,
        heartbeat: Heartbeat::new(config.timers, Instant::now()),
        remote,
        write_timeout: config.write_timeout,
        max_batch: config.max_batch,
        out: Vec::new(),
        replayed: None,
    };
    async move {
        debug!("connected");
        // A shutdown reaches the connection through its queue, as a close request.
        conn.hub.live.insert(&conn.handle);
        let mut armed = conn.arm();
        let end = loop {
            // A frame read is boxed at once: held in place across the await that handles it,
            // it would make every idle connection's task larger by the size of a frame.
            let read = tokio::select! {
                () = rx.ready() => None,
                frame = conn.transport.recv() => match frame {
                    Ok(Some(frame)) => Some(Box::new(frame)),
                    Ok(None) => break End::Normal("closed by peer".into()),
                    Err(Error::Io(e)) => break End::Normal(format!("read failed: {e}")),
                    Err(e) => break End::Protocol(e.to_string()),
                },
            };
            if let Some(frame) = read {
                conn.heartbeat.on_read(Instant::now());
                // Boxed: requests (binds, handlers) are rare next to pushes, and their futures
                // would otherwise make every idle connection's task larger.
                if let Err(end) = Box::pin(conn.on_frames(*frame)).await {
                    break end;
                }
                continue;
            }
            // Reads and writes only move deadlines later, and a deadline reached early finds
            // nothing due and is set again; so the shared timer is set only here.
            if rx.take_due() {
                let action = conn.heartbeat.poll(Instant::now());
                armed = conn.arm();
                match action {
                    TimerAction::Nothing => {}
                    TimerAction::Ping => {
                        if let Err(end) = Box::pin(conn.write(Frame::Ping)).await {
                            break end;
                        }
                    }
                    TimerAction::Close(why) => break End::Normal(why.to_string()),
                }
            }
            // Boxed, so that an idle connection's task does not carry the write path.
            if let Err(end) = Box::pin(conn.flush(&rx)).await {
                break end;
            }
        };
        conn.hub.deadlines.clear(armed, conn.handle.id());
        let reason = match &end {
            End::Normal(r) => r.clone(),
            End::Protocol(r) => format!("protocol error: {r}"),
        };
        conn.hub.live.remove(conn.handle.id());
        let undelivered = rx.shut(CloseRequest::Closed(reason.clone()));
        Box::pin(conn.finish(&reason, undelivered)).await;
        match end {
            End::Normal(_) => info!(reason = %reason, "closed"),
            End::Protocol(_) => warn!(reason = %reason, "closed"),
        }
    }
    .instrument(span)
}

impl<T: Transport> Conn<T> {
    /// Sets the heartbeat's next deadline in the node's shared timer, and returns it.
    fn arm(&self) -> Instant {
        let at = self.heartbeat.next_deadline();
        self.hub.deadlines.set(at, &self.handle);
        at
    }

    /// Writes `self.out` (with the write timeout) and clears it.
    async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Most writes complete at once: only one that has to wait gets a deadline (a timer
        // costs every write a clock read and a reference to the runtime's timer).
        let res = {
            let mut send = std::pin::pin!(self.transport.send(&self.out));
            match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
                Poll::Ready(done) => Ok(done),
                Poll::Pending => timeout(self.write_timeout, send).await,
            }
        };
        // Released rather than cleared: an idle connection keeps no batch buffer.
        self.out = Vec::new();
        match res {
            Ok(Ok(())) => {
                self.heartbeat.on_write(Instant::now());
                Ok(())
            }
            Ok(Err(e)) => Err(End::Normal(format!("write failed: {e}"))),
            Err(_) => Err(End::Normal(format!(
                "write stalled for {:?} (slow reader)",
                self.write_timeout
            ))),
        }
    }

    async fn write(&mut self, frame: Frame) -> Result<(), End> {
        self.out.push(Outbound::Frame(Box::new(frame)));
        self.write_out().await
    }

    /// Writes what others queued, batch by batch; ends the connection on a close request.
    async fn flush(&mut self, rx: &crate::engine::conn::OutboundReceiver) -> Result<(), End> {
        loop {
            let close = rx.drain(&mut self.out, self.max_batch);
            let drained = self.out.len();
            if let Some(replayed) = self.replayed.take() {
                self.out.retain(|o| match o {
                    Outbound::Message(m) => !replayed.contains(&m.message().id),
                    Outbound::Frame(_) => true,
                });
            }
            self.write_out().await?;
            if let Some(req) = close {
                return Err(End::Normal(req.to_string()));
            }
            if drained < self.max_batch {
                // Caught up after an overflow: what was refused meanwhile is in the store.
                if rx.overflowed() {
                    Box::pin(self.replay_stored(Some(rx))).await?;
                }
                return Ok(());
            }
        }
    }

    /// Handles `first` and every whole frame buffered behind it, then writes the replies
    /// together (a client sending a burst of requests gets one write back, not one per
    /// request). Replies are written before the connection ends, whatever ends it.
    async fn on_frames(&mut self, first: Frame) -> Result<(), End> {
        let mut next = Some(first);
        let handled = loop {
            let Some(frame) = next.take() else {
                break Ok(());
            };
            if let Err(end) = self.on_frame(frame).await {
                break Err(end);
            }
            match self.transport.recv_buffered() {
                Ok(f) => next = f,
                Err(e) => break Err(End::Protocol(e.to_string())),
            }
        };
        let written = self.write_out().await;
        handled.and(written)
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Pong => Ok(()),
            Frame::Sent(body) => self.on_request(body).await,
            other => Err(End::Protocol(format!(
                "a client may not send {:?} frames",
                other.frame_type()
            ))),
        }
    }

    async fn reply(&mut self, request_key: &str, mut reply: ReplyBody) -> Result<(), End> {
        if reply.key.is_empty() {
            reply.key = request_key.to_owned();
        }
        if reply.timestamp == 0 {
            reply.timestamp = crate::now_ms();
        }
        // Written with the next write (at the latest once the requests read so far are
        // handled; see `on_frames`).
        self.out
            .push(Outbound::Frame(Box::new(Frame::Reply(reply))));
        if self.out.len() >= self.max_batch {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, body: SentBody) -> Result<(), End> {
        match body.key.as_str() {
            key::CLIENT_BIND => return self.bind(body).await,
            key::CLIENT_CLOSED => {
                let r = ReplyBody::new(key::CLIENT_CLOSED, code::FORBIDDEN)
                    .with_message("client_closed is reserved for the server");
                return self.reply(key::CLIENT_CLOSED, r).await;
            }
            _ => {}
        }
        let request_key = body.key.clone();
        let Some(handler) = self.hub.handler(&body.key).cloned() else {
            debug!(key = %request_key, "no handler");
            let r = ReplyBody::new(&request_key, code::NOT_FOUND)
                .with_message(format!("no handler for key {request_key:?}"));
            return self.reply(&request_key, r).await;
        };
        let ctx = RequestContext {
            conn: self.handle.id(),
            session: self.session.as_deref(),
            remote: self.remote,
            handle: &self.handle,
            hub: &self.hub,
        };
        let reply = match handler.handle(&ctx, body).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(Error::Reply { code, message }) => {
                ReplyBody::new(&request_key, code).with_message(message)
            }
            Err(e) => {
                warn!(key = %request_key, error = %e, "handler failed");
                ReplyBody::new(&request_key, code::SERVER_ERROR).with_message(e.to_string())
            }
        };
        self.reply(&request_key, reply).await
    }

    async fn bind(&mut self, body: SentBody) -> Result<(), End> {
        let mut session = Session::from_bind(&body);
        if session.uid.is_empty() {
            let r =
                ReplyBody::new(key::CLIENT_BIND, code::BAD_REQUEST).with_message("uid is required");
            return self.reply(key::CLIENT_BIND, r).await;
        }
        if let Err(e) = self.hub.authenticator().authenticate(&body, &session).await {
            let r = ReplyBody::new(key::CLIENT_BIND, code::UNAUTHORIZED).with_message(e.0.clone());
            self.reply(key::CLIENT_BIND, r).await?;
            return Err(End::Normal(format!("bind refused: {e}")));
        }
        session.nid = self.handle.id().0;
        session.node = self.hub.node().to_owned();
        session.remote_addr = self.remote.to_string();
        session.bind_time = crate::now_ms();
        if let Some(old) = self.session.take()
            && old.uid != session.uid
            && let Err(e) = self.hub.sessions().unbind(&old).await
        {
            warn!(error = %e, "unbinding the previous account failed");
        }
        let session = Arc::new(session);
        let outcome = match self
            .hub
            .sessions()
            .bind(Arc::clone(&session), self.handle.clone())
            .await
        {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "bind failed");
                let r = ReplyBody::new(key::CLIENT_BIND, code::SERVER_ERROR)
                    .with_message(e.to_string());
                return self.reply(key::CLIENT_BIND, r).await;
            }
        };
        tracing::Span::current().record("uid", session.uid.as_str());
        self.heartbeat.on_bound();
        debug!(channel = %session.channel, device = %session.device_id, "bound");
        for l in self.hub.listeners() {
            l.on_bound(&session);
            for k in &outcome.kicked {
                l.on_kicked(k);
            }
        }
        self.session = Some(session);
        self.reply(key::CLIENT_BIND, ReplyBody::ok(key::CLIENT_BIND))
            .await?;
        self.replay_stored(None).await
    }

    /// Writes the account's stored messages, oldest first, before anything pushed since (which
    /// waits in the queue until this returns): after a bind, and after catching up from an
    /// overflow (`recovering`, whose mark is cleared here). Only messages stored up to this
    /// moment are replayed: the account's send lock is taken to read the boundary, so no
    /// message refused before is still on its way to the store, and every later one is queued
    /// (or stored after the boundary, for the next catch-up). A client without receipts has the
    /// replayed messages deleted once written; one with receipts acknowledges them itself.
    async fn replay_stored(
        &mut self,
        recovering: Option<&crate::engine::conn::OutboundReceiver>,
    ) -> Result<(), End> {
        let (Some(store), Some(session)) = (self.hub.store().cloned(), self.session.clone()) else {
            if let Some(rx) = recovering {
                rx.recover_overflow();
            }
            return Ok(());
        };
        let boundary = {
            let _lock = self.hub.lock_account(&session.uid).await;
            if let Some(rx) = recovering
                && !rx.recover_overflow()
            {
                return Ok(());
            }
            match store.last_seq(&session.uid).await {
                Ok(seq) => seq,
                Err(e) => {
                    warn!(error = %e, "reading stored messages failed");
                    return Ok(());
                }
            }
        };
        let mut after = 0;
        let mut written = None;
        let mut total = 0;
        while after < boundary {
            let page = match store.pending(&session.uid, after, REPLAY_BATCH).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "reading stored messages failed");
                    break;
                }
            };
            let full = page.len() == REPLAY_BATCH;
            let mut replayed = 0;
            for p in page.into_iter().take_while(|p| p.seq <= boundary) {
                after = p.seq;
                replayed += 1;
                self.replayed.get_or_insert_default().insert(p.message.id);
                self.out
                    .push(Outbound::Message(Arc::new(SharedMessage::new(p.message))));
            }
            // (`out` may also hold the bind's reply, written ahead of the messages.)
            if replayed == 0 {
                break;
            }
            total += replayed;
            written = Some(after);
            self.write_out().await?;
            if !full {
                break;
            }
        }
        if total > 0 {
            debug!(
                total,
                recovering = recovering.is_some(),
                "stored messages delivered"
            );
        }
        if !session.client_ack
            && let Some(last) = written
            && let Err(e) = store.ack(&session.uid, last).await
        {
            warn!(error = %e, "deleting delivered messages failed; they may be sent again");
        }
        Ok(())
    }

    /// Cleans up after the connection ended.
    async fn finish(&mut self, reason: &str, undelivered: Vec<Outbound>) {
        if let Some(s) = &self.session
            && let Err(e) = self.hub.sessions().unbind(s).await
        {
            warn!(error = %e, "unbind failed");
        }
        self.keep_undelivered(undelivered).await;
        if let Some(handler) = self.hub.handler(key::CLIENT_CLOSED).cloned() {
            let ctx = RequestContext {
                conn: self.handle.id(),
                session: self.session.as_deref(),
                remote: self.remote,
                handle: &self.handle,
                hub: &self.hub,
            };
            let body = SentBody::new(key::CLIENT_CLOSED).with("reason", reason);
            if let Err(e) = handler.handle(&ctx, body).await {
                warn!(error = %e, "client_closed handler failed");
            }
        }
        for l in self.hub.listeners() {
            l.on_closed(self.handle.id(), self.session.as_deref(), reason);
        }
        let _ = timeout(Duration::from_secs(1), self.transport.close()).await;
    }

    /// Stores messages to this account that were still queued when the connection ended, unless
    /// another connection of the account is live (it got them) or the client acknowledges
    /// messages (they are stored already).
    async fn keep_undelivered(&self, undelivered: Vec<Outbound>) {
        let mut messages: Vec<Arc<SharedMessage>> = undelivered
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Message(m) => Some(m),
                Outbound::Frame(_) => None,
            })
            .collect();
        let (Some(store), Some(session)) = (self.hub.store(), &self.session) else {
            if !messages.is_empty() {
                warn!(
                    undelivered = messages.len(),
                    "connection closed with messages still queued"
                );
            }
            return;
        };
        messages.retain(|m| m.message().receiver == session.uid && !m.message().is_kick());
        if messages.is_empty() || session.client_ack {
            return;
        }
        match self.hub.sessions().sessions(&session.uid).await {
            Ok(others) if others.is_empty() => {}
            _ => return,
        }
        for m in &messages {
            if let Err(e) = store.append(&session.uid, m.message()).await {
                warn!(error = %e, id = m.message().id, "storing an undelivered message failed");
            }
        }
        debug!(stored = messages.len(), "undelivered messages stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::heartbeat::Timers;
    use tokio::sync::mpsc;

    /// Frames over channels: the engine end of a connection whose peer is the test.
    struct Channels {
        from_peer: mpsc::Receiver<Frame>,
        to_peer: mpsc::UnboundedSender<Frame>,
    }

    impl Transport for Channels {
        async fn recv(&mut self) -> Result<Option<Frame>> {
            Ok(self.from_peer.recv().await)
        }

        async fn send(&mut self, items: &[Outbound]) -> Result<()> {
            for item in items {
                if let Outbound::Frame(f) = item {
                    let _ = self.to_peer.send((**f).clone());
                }
            }
            Ok(())
        }

        async fn close(&mut self) {}
    }

    #[tokio::test]
    async fn heartbeats_run_on_the_shared_timer_and_leave_nothing_behind() {
        let hub = Arc::new(Hub::builder().build());
        let (peer_tx, from_peer) = mpsc::channel(8);
        let (to_peer, mut peer_rx) = mpsc::unbounded_channel();
        let config = ConnectionConfig {
            timers: Timers {
                write_idle: Duration::from_millis(60),
                read_idle: Duration::from_secs(30),
                max_pong_timeout: 3,
                bind_timeout: Duration::from_secs(5),
            },
            ..ConnectionConfig::default()
        };
        let task = tokio::spawn(serve_connection(
            Arc::clone(&hub),
            Channels { from_peer, to_peer },
            config,
            ([127, 0, 0, 1], 9).into(),
        ));
        peer_tx
            .send(Frame::Sent(
                SentBody::new(key::CLIENT_BIND).with(crate::protocol::bind::UID, "u1"),
            ))
            .await
            .unwrap();
        assert!(matches!(peer_rx.recv().await, Some(Frame::Reply(r)) if r.code == code::OK));
        // Two PINGs, each after write_idle of silence: the deadline is set again after each.
        for _ in 0..2 {
            let t = Instant::now();
            assert_eq!(peer_rx.recv().await, Some(Frame::Ping));
            assert!(
                t.elapsed() >= Duration::from_millis(50),
                "{:?}",
                t.elapsed()
            );
        }
        assert_eq!(hub.deadlines.len(), 1, "one entry per connection");
        drop(peer_tx);
        task.await.unwrap();
        assert_eq!(
            hub.deadlines.len(),
            0,
            "a closed connection leaves no deadline"
        );
        assert_eq!(hub.live.len(), 0);
    }
}
