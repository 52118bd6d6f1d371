//! What the connection task does with the frames it reads: a burst of them is handled in
//! order — runs of requests of one key handed to their handler together, binds to
//! `handover.rs` — and the replies are queued for the write path (`driver.rs`).

use tracing::{Instrument, Span, debug};

use crate::engine::conn::Outbound;
use crate::engine::driver::Conn;
use crate::engine::handler::RequestContext;
use crate::engine::handover;
use crate::engine::metrics::Cause;
use crate::engine::transport::{Closing, End, Transport};
use crate::frame::Frame;
use crate::message::{ReplyBody, SentBody};
use crate::protocol::key;

impl<T: Transport> Conn<T> {
    /// Handles `first` and every whole frame buffered behind it, then writes the replies
    /// together (a client sending a burst of requests gets one write back, not one per
    /// request). Replies are written before the connection ends, whatever ends it.
    ///
    /// The connection's span covers the work that asks for it (binds and other frames, handlers
    /// whose `in_connection_span` says yes), their replies, and the burst's final write when any
    /// of it did, so that what the transport logs about a reply names the connection too.
    pub(super) async fn on_frames(&mut self, first: Frame) -> Result<(), End> {
        let mut next = Some(first);
        // Made at the first work that asks for it, then shared by the rest of the burst.
        let mut span: Option<Span> = None;
        let handled = loop {
            let Some(frame) = next.take() else {
                break Ok(());
            };
            // Requests of one key (not binds) that arrived together are handled as one run, so
            // that a handler can do them in one step (sends: one round trip in a cluster).
            let body = match frame {
                Frame::Sent(body) if body.key != key::CLIENT_BIND => body,
                Frame::Pong => {
                    // What a heartbeat asked for: nothing to do, and nothing to log.
                    match self.transport.recv_buffered() {
                        Ok(f) => next = f,
                        Err(e) => break Err(End::protocol(e)),
                    }
                    continue;
                }
                other => {
                    let span = span.get_or_insert_with(|| self.span()).clone();
                    if let Err(end) = self.on_frame(other).instrument(span).await {
                        break Err(end);
                    }
                    match self.transport.recv_buffered() {
                        Ok(f) => next = f,
                        Err(e) => break Err(End::protocol(e)),
                    }
                    continue;
                }
            };
            let mut run = vec![body];
            let after = loop {
                if run.len() >= self.settings.max_batch as usize {
                    break self.transport.recv_buffered().map_err(End::protocol);
                }
                match self.transport.recv_buffered() {
                    Ok(Some(Frame::Sent(b))) if run.first().is_some_and(|r| r.key == b.key) => {
                        run.push(b);
                    }
                    Ok(other) => break Ok(other),
                    Err(e) => break Err(End::protocol(e)),
                }
            };
            if let Err(end) = self.on_requests(run, &mut span).await {
                break Err(end);
            }
            match after {
                Ok(f) => next = f,
                Err(end) => break Err(end),
            }
        };
        let written = match span {
            Some(span) => self.write_out().instrument(span).await,
            None => self.write_out().await,
        };
        handled.and(written)
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Pong => Ok(()),
            Frame::Sent(body) => self.on_request(body).await,
            other => Err(End::protocol(format!(
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
        if self.out.len() >= self.settings.max_batch as usize {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, body: SentBody) -> Result<(), End> {
        if body.key == key::CLIENT_BIND {
            return self.bind(body).await;
        }
        self.on_requests(vec![body], &mut None).await
    }

    /// Handles a run of requests of one key (not binds) and queues their replies, in order,
    /// inside the connection's span (`span`, made if it is not yet) when the key's handler asks
    /// for it (see
    /// [`RequestHandler::in_connection_span`](crate::engine::RequestHandler::in_connection_span)).
    async fn on_requests(
        &mut self,
        run: Vec<SentBody>,
        span: &mut Option<Span>,
    ) -> Result<(), End> {
        let Some(request_key) = run.first().map(|b| b.key.clone()) else {
            return Ok(());
        };
        let in_span = self
            .hub
            .handler(&request_key)
            .is_none_or(|h| h.in_connection_span());
        if in_span {
            let span = span.get_or_insert_with(|| self.span()).clone();
            self.run_requests(request_key, run).instrument(span).await
        } else {
            self.run_requests(request_key, run).await
        }
    }

    async fn run_requests(&mut self, request_key: String, run: Vec<SentBody>) -> Result<(), End> {
        let ctx = RequestContext {
            conn: self.handle.id(),
            session: self.session.as_deref(),
            remote: self.remote.get(),
            handle: &self.handle,
            services: self.hub.services(),
        };
        let replies = self.hub.dispatch_many(&ctx, run).await;
        // Room for the run's replies at once (a run is at most `max_batch`, the most `out`
        // holds before it is written).
        self.out.reserve(replies.len());
        for reply in replies.into_iter().flatten() {
            self.reply(&request_key, reply).await?;
        }
        Ok(())
    }

    async fn bind(&mut self, body: SentBody) -> Result<(), End> {
        let bound = handover::bind(
            &self.hub,
            &self.handle,
            (self.remote.get(), self.settings.protocol),
            self.session.as_deref(),
            &body,
        )
        .await;
        let session = match bound {
            Ok((session, _)) => session,
            Err(refusal) => {
                self.reply(key::CLIENT_BIND, refusal.reply).await?;
                return refusal.close.map_or(Ok(()), |why| {
                    Err(End::new(Cause::BindRefused, why, Closing::Refused))
                });
            }
        };
        self.heartbeat.on_bound();
        debug!(uid = %session.uid, channel = %session.channel, device = %session.device_id, "bound");
        self.session = Some(session);
        self.reply(key::CLIENT_BIND, ReplyBody::ok(key::CLIENT_BIND))
            .await?;
        self.replay_stored().await
    }
}
