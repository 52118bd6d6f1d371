//! The hand-over of an account to a connection and back: a bind (checked, registered, the kick
//! policy applied), the replay of the account's stored messages ([`Replay`], shared by the bind
//! and by `client_get_offline_message`), and, when the connection ends, keeping what was still
//! queued for it ([`release`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use ecow::EcoString;
use tracing::{debug, warn};

use crate::engine::conn::{ConnectionHandle, Outbound};
use crate::engine::handler::{EventContext, RequestContext};
use crate::engine::hub::Hub;
use crate::engine::metrics::{BindRefusal, EngineMetrics};
use crate::engine::services::Services;
use crate::engine::sessions::BindOutcome;
use crate::engine::shared::SharedMessage;
use crate::engine::store::{MessageStore, Seq, Stored};
use crate::error::Result;
use crate::message::{ReplyBody, SentBody};
use crate::protocol::{code, key};
use crate::session::Session;

/// Stored messages read per page of a replay.
pub(crate) const REPLAY_PAGE: usize = 256;

/// A bind that did not happen: the reply to send, and whether the connection then closes (with
/// the reason to log).
pub(crate) struct Refusal {
    pub(crate) reply: ReplyBody,
    pub(crate) close: Option<String>,
}

fn refuse(status: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reply: ReplyBody::new(key::CLIENT_BIND, status).with_message(message),
        close: None,
    }
}

/// Checks the bind `body` of the connection `handle` (at `remote`, speaking `protocol`, bound now
/// as `current`, if at all) and registers it: the account's other connections are kicked or closed as the hub's
/// kick policy says, and the event listeners are told. Returns the new session.
pub(crate) async fn bind(
    hub: &Arc<Hub>,
    handle: &ConnectionHandle,
    (remote, protocol): (SocketAddr, &'static str),
    current: Option<&Session>,
    body: &SentBody,
) -> Result<(Arc<Session>, BindOutcome), Refusal> {
    let metrics = hub.services().metrics();
    let mut session = Session::from_bind(body);
    if session.uid.is_empty() {
        metrics.bind_refused(BindRefusal::MissingUid);
        return Err(refuse(code::BAD_REQUEST, "uid is required"));
    }
    if let Err(e) = crate::check_uid(&session.uid, hub.max_uid_bytes) {
        metrics.bind_refused(BindRefusal::InvalidUid);
        return Err(refuse(code::BAD_REQUEST, format!("uid {e}")));
    }
    if let Err(e) = hub.authenticator().authenticate(body, &session).await {
        metrics.bind_refused(BindRefusal::Unauthorized);
        let mut refusal = refuse(code::UNAUTHORIZED, e.0.clone());
        refusal.close = Some(format!("bind refused: {e}"));
        return Err(refusal);
    }
    session.nid = handle.id().0;
    session.node = hub.services().node_name().clone();
    session.remote_addr = ecow::eco_format!("{remote}");
    session.protocol = protocol.into();
    session.bind_time = crate::now_ms();
    if let Some(old) = current
        && old.uid != session.uid
        && let Err(e) = hub.sessions().unbind(old).await
    {
        warn!(error = %e, "unbinding the previous account failed");
    }
    let session = Arc::new(session);
    let outcome = hub
        .sessions()
        .bind(Arc::clone(&session), handle.clone(), &**hub.kick_policy())
        .await
        .map_err(|e| {
            warn!(error = %e, "bind failed");
            metrics.bind_refused(BindRefusal::Failed);
            refuse(code::SERVER_ERROR, e.to_string())
        })?;
    metrics.binds.increment(1);
    metrics.kicks_by_bind.increment(outcome.kicked.len() as u64);
    let ctx = EventContext::new(hub.services());
    for l in hub.listeners() {
        l.on_bound(&ctx, &session);
        for k in &outcome.kicked {
            l.on_kicked(&ctx, k);
        }
    }
    Ok((session, outcome))
}

/// A replay of an account's stored messages, oldest first, up to the boundary the router gave
/// when it started ([`Router::replay_boundary`](crate::engine::Router::replay_boundary)): what is
/// stored later belongs to the next replay. For a client without receipts, what was written is
/// deleted by [`finish`](Self::finish); a client with receipts acknowledges it itself.
pub(crate) struct Replay {
    store: Arc<dyn MessageStore>,
    metrics: Arc<EngineMetrics>,
    uid: EcoString,
    client_ack: bool,
    boundary: Seq,
    /// The last sequence read.
    after: Seq,
    /// The last sequence written to the connection.
    written: Option<Seq>,
    /// The last sequence of the batch being written.
    pending: Option<Seq>,
    /// Messages handed out.
    total: usize,
    done: bool,
}

impl Replay {
    /// A replay for `session`'s account, or `None` when the hub keeps no messages or none is
    /// stored for the account.
    pub(crate) async fn start(services: &Services, session: &Session) -> Result<Option<Replay>> {
        let Some(store) = services.store() else {
            return Ok(None);
        };
        let boundary = services.router().replay_boundary(&session.uid).await?;
        if boundary == 0 {
            return Ok(None);
        }
        Ok(Some(Replay {
            store: Arc::clone(store),
            metrics: Arc::clone(services.metrics()),
            uid: session.uid.clone(),
            client_ack: session.client_ack,
            boundary,
            after: 0,
            written: None,
            pending: None,
            total: 0,
            done: false,
        }))
    }

    /// The next stored messages, at most `max` (and a page); `None` once the boundary is
    /// reached.
    pub(crate) async fn next_page(&mut self, max: usize) -> Result<Option<Vec<Stored>>> {
        if self.done || max == 0 {
            return Ok(None);
        }
        let want = max.min(REPLAY_PAGE);
        let mut page = self.store.pending(&self.uid, self.after, want).await?;
        if page.len() < want {
            self.done = true;
        }
        page.retain(|p| p.seq <= self.boundary);
        match page.last() {
            Some(last) => {
                self.after = last.seq;
                if self.after >= self.boundary {
                    self.done = true;
                }
                Ok(Some(page))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// Message `seq` of the last page reached the connection.
    pub(crate) fn written(&mut self, seq: Seq) {
        self.written = Some(seq);
    }

    /// Deletes what was written, for a client without receipts.
    pub(crate) async fn finish(self) -> Result<()> {
        match self.written {
            Some(last) if !self.client_ack => self.store.ack(&self.uid, last).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// [`start`](Self::start) for a connection's own replay, which logs what fails rather than
    /// failing the connection: `None` when there is nothing to replay or it cannot be read.
    pub(crate) async fn begin(services: &Services, session: &Session) -> Option<Replay> {
        Self::start(services, session)
            .await
            .inspect_err(|e| warn!(error = %e, "reading stored messages failed"))
            .ok()
            .flatten()
    }

    /// The next page as items for the connection to write, each id noted in `replayed` (so
    /// that a copy also pushed to the queue meanwhile is skipped there); `None` at the end.
    /// A message the connection cannot carry (`carry` says no: too large for its listener) is
    /// not written and is stored again at the end of the account's queue, for a connection that
    /// can — never deleted unsent. [`batch_written`](Self::batch_written) says it was written.
    pub(crate) async fn next_batch(
        &mut self,
        replayed: &mut Option<Box<Replayed>>,
        mut carry: impl FnMut(&SharedMessage) -> bool,
    ) -> Option<Vec<Outbound>> {
        let page = match self.next_page(usize::MAX).await {
            Ok(page) => page?,
            Err(e) => {
                warn!(error = %e, "reading stored messages failed");
                return None;
            }
        };
        self.pending = page.last().map(|p| p.seq);
        let mut batch = Vec::with_capacity(page.len());
        for p in page {
            let message = Arc::new(SharedMessage::new(p.message));
            if carry(&message) {
                replayed
                    .get_or_insert_default()
                    .ids
                    .insert(message.message().id);
                batch.push(Outbound::Message(message));
                continue;
            }
            let id = message.message().id;
            let appended = self
                .metrics
                .store
                .append(&*self.store, &self.uid, message.message())
                .await;
            match appended {
                Ok(_) => warn!(
                    id,
                    "a stored message this connection cannot carry is kept for another"
                ),
                Err(e) => {
                    // Not kept elsewhere: this page must not be deleted.
                    warn!(id, error = %e, "keeping a stored message this connection cannot carry failed");
                    self.pending = None;
                    self.done = true;
                }
            }
        }
        self.total += batch.len();
        Some(batch)
    }

    /// The batch [`next_batch`](Self::next_batch) gave reached the connection.
    pub(crate) fn batch_written(&mut self) {
        if let Some(seq) = self.pending.take() {
            self.written(seq);
        }
    }

    /// [`finish`](Self::finish) for a connection's own replay, logging what fails (the written
    /// messages are then sent again next time).
    pub(crate) async fn end(self) {
        if self.total > 0 {
            debug!(total = self.total, "stored messages delivered");
        }
        if let Err(e) = self.finish().await {
            warn!(error = %e, "deleting delivered messages failed; they may be sent again");
        }
    }
}

/// What a replay of stored messages wrote, for the connection to skip the copies of it that
/// were pushed to its queue meanwhile. (Boxed in the connection: one pointer when unused.)
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Ids of the messages written.
    pub(crate) ids: HashSet<i64>,
    /// Items of the queue still to look at for copies: those queued when the replay ended (a
    /// copy was pushed before then, and the queue is first in, first out).
    pub(crate) left: usize,
}

/// Takes out of `out`, a batch to write, the copies of messages the bind's replay wrote already
/// (ids in `replayed`), and the messages the connection cannot carry (`carry` says no: too
/// large for its listener), which it returns to be kept for the account
/// ([`keep_undelivered`]) rather than lost.
pub(crate) fn sort_out(
    out: &mut Vec<Outbound>,
    replayed: Option<&HashSet<i64>>,
    mut carry: impl FnMut(&SharedMessage) -> bool,
) -> Vec<Outbound> {
    let mut uncarried = Vec::new();
    out.retain(|o| match o {
        Outbound::Message(m) if replayed.is_some_and(|r| r.contains(&m.message().id)) => false,
        Outbound::Message(m) if !carry(m) => {
            uncarried.push(o.clone());
            false
        }
        _ => true,
    });
    uncarried
}

/// Cleans up after a connection that ended for `reason`: forgets its session, keeps what was
/// still queued for its account (through the router), runs the `client_closed` handler and tells
/// the event listeners.
pub(crate) async fn release(
    hub: &Arc<Hub>,
    handle: &ConnectionHandle,
    remote: SocketAddr,
    session: Option<&Session>,
    reason: &str,
    undelivered: Vec<Outbound>,
) {
    if let Some(s) = session
        && let Err(e) = hub.sessions().unbind(s).await
    {
        warn!(error = %e, "unbind failed");
    }
    keep_undelivered(hub, session, undelivered).await;
    if let Some(handler) = hub.handler(key::CLIENT_CLOSED).cloned() {
        let ctx = RequestContext {
            conn: handle.id(),
            session,
            remote,
            handle,
            services: hub.services(),
        };
        let body = SentBody::new(key::CLIENT_CLOSED).with("reason", reason);
        if let Err(e) = handler.handle(&ctx, body).await {
            warn!(error = %e, "client_closed handler failed");
        }
    }
    let ctx = EventContext::new(hub.services());
    for l in hub.listeners() {
        l.on_closed(&ctx, handle.id(), session, reason);
    }
}

/// Hands the messages to `session`'s account that were still queued to the router, which
/// stores them unless another connection of the account is live (it got them). Messages of a
/// client with receipts are stored already; kick notices and messages to other accounts are
/// not kept.
pub(crate) async fn keep_undelivered(
    hub: &Hub,
    session: Option<&Session>,
    undelivered: Vec<Outbound>,
) {
    let messages: Vec<Arc<SharedMessage>> = undelivered
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Message(m) => Some(m),
            Outbound::Frame(_) => None,
        })
        .collect();
    let Some(session) = session.filter(|_| hub.store().is_some()) else {
        if !messages.is_empty() {
            if hub.store().is_none() {
                let lost = messages.iter().filter(|m| !m.message().is_kick()).count();
                hub.services()
                    .metrics()
                    .dropped_no_store
                    .increment(lost as u64);
            }
            warn!(
                undelivered = messages.len(),
                "connection closed with messages still queued"
            );
        }
        return;
    };
    if session.client_ack {
        return;
    }
    let messages: Vec<_> = messages
        .into_iter()
        .filter(|m| m.message().receiver == session.uid && !m.message().is_kick())
        .collect();
    if messages.is_empty() {
        return;
    }
    let queued = messages.len();
    match hub.router().keep_undelivered(session, messages).await {
        Ok(0) => {}
        Ok(stored) => {
            hub.services().metrics().stored.increment(stored as u64);
            debug!(stored, "undelivered messages stored");
        }
        Err(e) => warn!(error = %e, queued, "storing undelivered messages failed"),
    }
}
