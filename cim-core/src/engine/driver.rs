//! The connection task: one per connection, owning its transport and its heartbeat (whose next
//! deadline waits in the node's shared timer, `deadlines.rs`). It reads frames (what it does
//! with them is `requests.rs`: requests to handlers, binds to `handover.rs`), writes replies and
//! whatever others queue for it, and cleans up. The rules live elsewhere; this is the loop and
//! the write path.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::engine::conn::{CloseRequest, ConnectionHandle, Outbound, OutboundReceiver};
use crate::engine::handler::connection_span;
use crate::engine::handover::{self, Replay};
use crate::engine::heartbeat::{Heartbeat, TimerAction};
use crate::engine::hub::Hub;
use crate::engine::metrics::Cause;
use crate::engine::time_limit::within;
use crate::engine::transport::{Closing, ConnectionConfig, End, Transport};
use crate::error::Error;
use crate::frame::Frame;
use crate::session::Session;

/// A connection's task's state: the loop and write path here, what it does with the frames it
/// reads in `requests.rs`.
pub(super) struct Conn<T> {
    pub(super) hub: Arc<Hub>,
    pub(super) transport: T,
    pub(super) handle: ConnectionHandle,
    pub(super) session: Option<Arc<Session>>,
    pub(super) heartbeat: Heartbeat,
    pub(super) remote: SocketAddr,
    /// From the listener's [`ConnectionConfig`] (the rest is used at the start only), packed:
    /// every connection's task holds them.
    pub(super) write_timeout_ms: u32,
    pub(super) max_batch: u32,
    pub(super) protocol: &'static str,
    pub(super) out: Vec<Outbound>,
    /// Ids of stored messages written during the bind hand-over: the same messages may also sit
    /// in the queue (pushed while the hand-over ran), and are skipped there once.
    /// (Boxed: a connection that never replays holds one pointer, not an empty set.)
    #[allow(clippy::box_collection)]
    pub(super) replayed: Option<Box<HashSet<i64>>>,
}

/// Runs one connection to its end. Spawn it; it returns when the connection is closed and
/// everything about it is cleaned up (unbound, `client_closed` handled, listeners told).
///
/// Logs carry the connection's id and account through a span made for the work at hand (a
/// bind, a handler's run of requests when the handler asks for it) and, with the peer's
/// address, for the end; an idle connection holds no log state.
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
        write_timeout_ms: u32::try_from(config.write_timeout.as_millis()).unwrap_or(u32::MAX),
        max_batch: u32::try_from(config.max_batch.max(1)).unwrap_or(u32::MAX),
        protocol: config.protocol,
        out: Vec::new(),
        replayed: None,
    };
    async move {
        debug!(conn = id.0, peer = %remote, "connected");
        // Looked up now and at the end rather than held: every connection's task would carry it.
        conn.hub
            .services()
            .metrics()
            .connections(conn.protocol)
            .increment(1.0);
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
                    Ok(None) => break End::normal(Cause::Peer, "closed by peer"),
                    Err(Error::Io(e)) => {
                        break End::normal(Cause::ReadError, format!("read failed: {e}"));
                    }
                    Err(e) => break End::protocol(e),
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
                        conn.out.push(Outbound::Frame(Box::new(Frame::Ping)));
                        if let Err(end) = Box::pin(conn.write_out()).await {
                            break end;
                        }
                    }
                    TimerAction::Close(why) => break End::idle(why),
                }
            }
            // Boxed, so that an idle connection's task does not carry the write path.
            if let Err(end) = Box::pin(conn.flush(&rx)).await {
                break end;
            }
        };
        conn.hub.deadlines.clear(armed, conn.handle.id());
        conn.hub.live.remove(conn.handle.id());
        let span = conn.end_span();
        let cause = end.cause;
        Box::pin(conn.finish(end, &rx).instrument(span)).await;
        let metrics = conn.hub.services().metrics();
        metrics.closed(cause);
        metrics.connections(conn.protocol).decrement(1.0);
    }
}

impl<T: Transport> Conn<T> {
    /// The connection's span (`conn{id uid}`), for the frames it handles: a bind, a handler's
    /// run of requests (when the handler asks for it, see
    /// [`RequestHandler::in_connection_span`](crate::engine::RequestHandler::in_connection_span)).
    /// Made for the work at hand, so an idle connection holds no log state; it holds what is
    /// cheap to record: the peer's address, which costs more to format than the rest of the
    /// span together, is in the connection's first and last lines ("connected", "closed").
    pub(super) fn span(&self) -> Span {
        connection_span(self.handle.id(), self.session.as_deref())
    }

    /// [`span`](Self::span) with the peer's address, for the connection's end.
    fn end_span(&self) -> Span {
        let uid = self.session.as_deref().map_or("", |s| s.uid.as_str());
        info_span!("conn", id = self.handle.id().0, peer = %self.remote, uid)
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.write_timeout_ms))
    }

    /// Sets the heartbeat's next deadline in the node's shared timer, and returns it.
    fn arm(&self) -> Instant {
        let at = self.heartbeat.next_deadline();
        self.hub.deadlines.set(at, &self.handle);
        at
    }

    /// Writes `self.out` (with the write timeout) and clears it.
    pub(super) async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Most writes complete at once: only one that has to wait gets a deadline.
        let stall = self.write_timeout();
        let res = within(stall, self.transport.send(&self.out)).await;
        if res.as_ref().is_ok_and(Result::is_ok) {
            self.heartbeat.on_write(Instant::now());
            // One count per write, not per message.
            let messages = self
                .out
                .iter()
                .filter(|o| matches!(o, Outbound::Message(_)))
                .count();
            if messages > 0 {
                self.hub
                    .services()
                    .metrics()
                    .delivered
                    .increment(messages as u64);
            }
            if let Some(session) = &self.session {
                self.hub.delivered(session, &self.out);
            }
        }
        // Released rather than cleared: an idle connection keeps no batch buffer.
        self.out = Vec::new();
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::normal(Cause::WriteError, format!("write failed: {e}"))),
            Err(_) => Err(End::normal(
                Cause::WriteStalled,
                format!("write stalled for {stall:?} (slow reader)"),
            )),
        }
    }

    /// Writes what others queued, batch by batch; ends the connection on a close request.
    async fn flush(&mut self, rx: &OutboundReceiver) -> Result<(), End> {
        loop {
            let close = rx.drain(&mut self.out, self.max_batch as usize);
            let drained = self.out.len();
            let uncarried = handover::sort_out(&mut self.out, self.replayed.take(), |m| {
                self.transport.can_carry(m)
            });
            self.write_out().await?;
            if !uncarried.is_empty() {
                handover::keep_undelivered(&self.hub, self.session.as_deref(), uncarried).await;
            }
            if let Some(req) = close {
                return Err(End::requested(&req));
            }
            if drained < self.max_batch as usize {
                // Caught up after an overflow: what was refused meanwhile is in the store.
                if rx.overflowed() && rx.recover_overflow() {
                    Box::pin(self.replay_stored()).await?;
                }
                return Ok(());
            }
        }
    }

    /// Writes the account's stored messages up to the router's boundary, oldest first, before
    /// anything pushed since (which waits in the queue until this returns): after a bind, and
    /// after catching up from an overflow. (`out` may also hold the bind's reply, written ahead
    /// of them.)
    pub(super) async fn replay_stored(&mut self) -> Result<(), End> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let Some(mut replay) = Replay::begin(self.hub.services(), &session).await else {
            return Ok(());
        };
        while let Some(batch) = replay
            .next_batch(&mut self.replayed, |m| self.transport.can_carry(m))
            .await
        {
            let written = batch.len() as u64;
            self.out.extend(batch);
            self.write_out().await?;
            replay.batch_written();
            self.hub.services().metrics().replayed.increment(written);
        }
        replay.end().await;
        Ok(())
    }

    /// Cleans up after the connection ended, and says why it did.
    async fn finish(&mut self, end: End, rx: &OutboundReceiver) {
        let undelivered = rx.shut(CloseRequest::Closed(end.reason.clone()));
        handover::release(
            &self.hub,
            &self.handle,
            self.remote,
            self.session.as_deref(),
            &end.reason,
            undelivered,
        )
        .await;
        let _ = timeout(Duration::from_secs(1), self.transport.close(end.closing)).await;
        match end.closing {
            Closing::ProtocolError => warn!(reason = %end.reason, "closed"),
            _ => info!(reason = %end.reason, "closed"),
        }
    }
}
