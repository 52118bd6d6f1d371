//! The inbox reader: each node's stream `n:<nid>:in`, read on a connection of its own with a
//! blocking `XREAD`. Messages are handed to this node's connections; what none of them takes
//! (the account left, or its queue is full) is routed again through the send script, skipping
//! the nodes that had it, and so stored when nobody else takes it. An entry is deleted once its
//! messages are written to the connections ([`DeliveryListener`]) or handed on: a crash before
//! that leaves it for the reaper, which routes it again — duplicates are possible, loss is not.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cim_core::engine::{
    CloseRequest, ConnId, EventContext, EventListener, SessionManager, SharedMessage, kick_notice,
};
use cim_core::{Message, Session};
use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::Inner;
use crate::error::ClusterError;
use crate::store::decode_message;
use crate::value::{array, bytes, text};

/// Entries read per `XREAD`.
const READ_COUNT: usize = 512;
/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_millis(250);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Inbox entries whose messages are queued to connections here and not yet written.
#[derive(Default)]
pub(crate) struct Tracker {
    /// By message id: the entry of each queued copy, oldest first.
    by_message: HashMap<i64, VecDeque<Arc<str>>>,
    /// By entry: copies still to be written, and since when.
    entries: HashMap<Arc<str>, (usize, Instant)>,
    /// Entries ready to be deleted.
    done: Vec<String>,
}

impl Tracker {
    /// Entry `id` waits for `copies` (message id, connections queued to) to be written.
    fn hold(&mut self, id: &str, copies: &[(i64, usize)]) {
        let total: usize = copies.iter().map(|(_, n)| n).sum();
        if total == 0 {
            self.done.push(id.to_owned());
            return;
        }
        let id: Arc<str> = id.into();
        for (m, n) in copies {
            let q = self.by_message.entry(*m).or_default();
            for _ in 0..*n {
                q.push_back(Arc::clone(&id));
            }
        }
        self.entries.insert(id, (total, Instant::now()));
    }

    /// One copy of message `id` was written (or handed on).
    pub(crate) fn settle(&mut self, id: i64) {
        let Some(q) = self.by_message.get_mut(&id) else {
            return;
        };
        let entry = q.pop_front();
        if q.is_empty() {
            self.by_message.remove(&id);
        }
        let Some(entry) = entry else {
            return;
        };
        if let Some((left, _)) = self.entries.get_mut(&entry) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.entries.remove(&entry);
                self.done.push(entry.to_string());
            }
        }
    }

    /// Gives up waiting on entries older than `timeout`; returns them.
    fn expire(&mut self, timeout: Duration) -> Vec<String> {
        let now = Instant::now();
        let old: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) > timeout)
            .map(|(id, _)| Arc::clone(id))
            .collect();
        if old.is_empty() {
            return Vec::new();
        }
        for id in &old {
            self.entries.remove(id);
        }
        self.by_message.retain(|_, q| {
            q.retain(|e| !old.contains(e));
            !q.is_empty()
        });
        old.iter().map(|id| id.to_string()).collect()
    }

    fn take_done(&mut self) -> Vec<String> {
        std::mem::take(&mut self.done)
    }

    /// Forgets everything (Redis lost the inbox).
    pub(crate) fn clear(&mut self) {
        *self = Tracker::default();
    }
}

/// Tells the inbox reader that a routed message reached its connection. Register it with the
/// hub ([`Cluster::delivery_listener`](crate::Cluster::delivery_listener)); without it, entries
/// are deleted only after the hand-over timeout.
pub struct DeliveryListener {
    inner: Arc<Inner>,
}

impl DeliveryListener {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

impl std::fmt::Debug for DeliveryListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryListener").finish_non_exhaustive()
    }
}

impl EventListener for DeliveryListener {
    fn on_delivered(&self, _: &EventContext<'_>, _: &Session, message: &Message) {
        lock(&self.inner.tracker).settle(message.id);
    }

    fn wants_delivered(&self) -> bool {
        true
    }
}

/// One entry of an inbox: its id and fields.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Vec<Vec<u8>>,
}

impl Entry {
    fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .chunks_exact(2)
            .find(|kv| kv.first().map(Vec::as_slice) == Some(name))
            .and_then(|kv| kv.get(1))
            .map(Vec::as_slice)
    }

    pub(crate) fn kind(&self) -> &[u8] {
        self.field(b"k").unwrap_or_default()
    }

    /// The routed messages of a `m` entry: (stored already, nodes that had it, message).
    pub(crate) fn messages(&self) -> Vec<(bool, String, Message)> {
        let mut out = Vec::new();
        for kv in self.fields.chunks_exact(2).skip(1) {
            let (Some(header), Some(blob)) = (kv.first(), kv.get(1)) else {
                continue;
            };
            let header = String::from_utf8_lossy(header);
            let (stored, had) = header.split_once('|').unwrap_or(("0", ""));
            match decode_message(blob) {
                Ok(m) => out.push((stored == "1", had.to_owned(), m)),
                Err(e) => warn!(entry = %self.id, error = %e, "unreadable routed message dropped"),
            }
        }
        out
    }
}

/// The entries of an `XRANGE` reply, or of the one stream of an `XREAD` reply's.
pub(crate) fn entries(v: Value) -> Result<Vec<Entry>, ClusterError> {
    let mut out = Vec::new();
    for e in array(v)? {
        let mut parts = array(e)?.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(ClusterError::Reply("an inbox entry without fields".into()));
        };
        let fields = array(fields)?
            .into_iter()
            .map(bytes)
            .collect::<Result<_, _>>()?;
        out.push(Entry {
            id: text(id)?,
            fields,
        });
    }
    Ok(out)
}

fn xread_entries(v: Value) -> Result<Vec<Entry>, ClusterError> {
    let mut out = Vec::new();
    for stream in array(v)? {
        let mut parts = array(stream)?.into_iter();
        let _name = parts.next();
        if let Some(items) = parts.next() {
            out.extend(entries(items)?);
        }
    }
    Ok(out)
}

impl Inner {
    /// Hands one entry to this node's connections. Returns when the entry's fate is settled
    /// (deleted at once, or held until its messages are written); routes again what nobody
    /// here took, retrying while Redis is down.
    async fn handle(&self, entry: Entry) {
        match entry.kind() {
            b"m" => {
                let mut copies = Vec::new();
                let mut again = Vec::new();
                for (stored, had, m) in entry.messages() {
                    let id = m.id;
                    let msg = Arc::new(SharedMessage::new(m));
                    let d = self.local.push(Arc::clone(&msg)).await.unwrap_or_default();
                    if stored {
                        // Kept in the store until delivered or acknowledged: nothing to track.
                        continue;
                    }
                    if d.delivered > 0 {
                        copies.push((id, d.delivered));
                    } else {
                        // Skips the sessions that had it (those here refused it): a session
                        // bound since, here or elsewhere, gets it; else it is stored.
                        again.push((msg, had));
                    }
                }
                if !again.is_empty() {
                    if !self.route_again(&again).await {
                        return;
                    }
                    self.metrics
                        .rerouted_not_taken
                        .increment(again.len() as u64);
                }
                lock(&self.tracker).hold(&entry.id, &copies);
            }
            b"x" => {
                let uid =
                    String::from_utf8_lossy(entry.field(b"u").unwrap_or_default()).into_owned();
                let conn = std::str::from_utf8(entry.field(b"c").unwrap_or_default())
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let notice = (entry.field(b"n") == Some(b"1".as_slice())).then(|| {
                    kick_notice(
                        &uid,
                        &String::from_utf8_lossy(entry.field(b"d").unwrap_or_default()),
                    )
                });
                // An operator's kick (the HTTP API) says so in its close.
                let why = if entry.field(b"o") == Some(b"1".as_slice()) {
                    CloseRequest::KickedByOperator
                } else {
                    CloseRequest::Kicked
                };
                if let Some(tags) = self.local.release(&uid, ConnId(conn), notice, Some(why)) {
                    self.untag_all(&tags).await;
                }
                lock(&self.tracker).done.push(entry.id);
            }
            b"b" | b"t" => {
                match entry.field(b"p").map(decode_message) {
                    Some(Ok(m)) => {
                        let msg = Arc::new(SharedMessage::new(m));
                        if entry.kind() == b"b" {
                            let _ = self.local.broadcast(msg).await;
                        } else {
                            let tag =
                                String::from_utf8_lossy(entry.field(b"g").unwrap_or_default());
                            let _ = self.local.push_tag(&tag, msg).await;
                        }
                    }
                    Some(Err(e)) => {
                        warn!(entry = %entry.id, error = %e, "unreadable message dropped")
                    }
                    None => warn!(entry = %entry.id, "inbox entry without a message dropped"),
                }
                lock(&self.tracker).done.push(entry.id);
            }
            other => {
                warn!(entry = %entry.id, kind = %String::from_utf8_lossy(other), "unknown inbox entry dropped");
                lock(&self.tracker).done.push(entry.id);
            }
        }
    }

    /// Routes messages again until Redis takes them (or the node stops: the entry then stays
    /// in the inbox, for this node's shutdown or the reaper).
    pub(crate) async fn route_again(&self, msgs: &[(Arc<SharedMessage>, String)]) -> bool {
        let mut wait = Duration::from_millis(20);
        // Routed so far: a retry starts after them.
        let mut done = 0;
        loop {
            let left = msgs.get(done..).unwrap_or_default();
            match self.route(left).await {
                Ok(_) => return true,
                Err(s) => {
                    done += s.routed.len();
                    let remaining = msgs.len().saturating_sub(done);
                    warn!(error = %s.error, messages = remaining, "routing refused messages again failed; retrying");
                    if self.is_stopping() {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Deletes the entries whose messages are written or handed on.
    pub(crate) async fn delete_done(&self) {
        let done = lock(&self.tracker).take_done();
        if done.is_empty() {
            return;
        }
        let key = self.inbox_key(&self.nid);
        for chunk in done.chunks(512) {
            let mut c = redis::cmd("XDEL");
            c.arg(&key);
            for id in chunk {
                c.arg(id);
            }
            if let Err(e) = self.cmd(&c).await {
                debug!(error = %e, "deleting inbox entries failed; trying again");
                lock(&self.tracker).done.extend(chunk.iter().cloned());
            }
        }
    }

    /// Entries whose messages were queued here but not reported written within the hand-over
    /// timeout (the connection's write failed, or the listener is missing): their messages are
    /// routed again, skipping the sessions that had them — so stored, unless a session bound
    /// since takes them. Duplicates are possible, loss is not.
    pub(crate) async fn expire_handovers(&self) {
        let old = lock(&self.tracker).expire(self.config.handover_timeout);
        if old.is_empty() {
            return;
        }
        let key = self.inbox_key(&self.nid);
        for id in old {
            let v = self
                .cmd(redis::cmd("XRANGE").arg(&key).arg(&id).arg(&id))
                .await;
            let Ok(found) = v.and_then(entries) else {
                // Tried again at the next expiry.
                lock(&self.tracker)
                    .entries
                    .insert(id.as_str().into(), (1, Instant::now()));
                continue;
            };
            let again: Vec<_> = found
                .iter()
                .filter(|e| e.kind() == b"m")
                .flat_map(Entry::messages)
                .filter(|(stored, _, _)| !stored)
                .map(|(_, had, m)| (Arc::new(SharedMessage::new(m)), had))
                .collect();
            if !again.is_empty() {
                warn!(entry = %id, messages = again.len(), "messages not reported written in time: routing them again");
                if !self.route_again(&again).await {
                    return;
                }
                self.metrics.rerouted_handover.increment(again.len() as u64);
            }
            lock(&self.tracker).done.push(id);
        }
    }

    async fn reader_connection(&self) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.response_timeout))
            .set_response_timeout(Some(BLOCK + self.config.response_timeout));
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("cim-inbox-{}", self.nid.replace('#', "-")))
            .query_async::<()>(&mut c)
            .await?;
        Ok(c)
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, for comparing.
pub(crate) fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Inner {
    /// Waits (at most the response timeout) until the reader has handled every entry the inbox
    /// holds now: what was routed here before a connection leaves this node's table reaches its
    /// queue first (a tag push or a broadcast is never stored, so it would be lost otherwise).
    pub(crate) async fn catch_up(&self) {
        let key = self.inbox_key(&self.nid);
        let Ok(v) = self
            .cmd(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
        else {
            return;
        };
        let Some(newest) = entries(v)
            .ok()
            .and_then(|e| e.first().and_then(|e| stream_id(&e.id)))
        else {
            return;
        };
        let mut handled = self.handled.subscribe();
        let _ = tokio::time::timeout(
            self.config.response_timeout,
            handled.wait_for(|at| *at >= newest),
        )
        .await;
    }
}

/// Reads this node's inbox until the node stops.
pub(crate) async fn reader(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let key = inner.inbox_key(&inner.nid);
    let mut last = "0-0".to_owned();
    let mut conn = None;
    let mut wait = Duration::from_millis(20);
    let mut failing = false;
    while !*stop.borrow() {
        if inner.reset_inbox.swap(false, Ordering::AcqRel) {
            last = "0-0".to_owned();
            lock(&inner.tracker).clear();
        }
        inner.delete_done().await;
        let c = match &mut conn {
            Some(c) => c,
            None => match inner.reader_connection().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    inner.metrics.inbox_errors.increment(1);
                    if !failing {
                        warn!(error = %e, "the inbox reader cannot reach redis; retrying");
                        failing = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last);
        let read = xread.query_async::<Value>(c);
        let v = tokio::select! {
            v = read => v,
            _ = stop.changed() => break,
        };
        let batch = match v.map_err(ClusterError::from).and_then(xread_entries) {
            Ok(batch) => batch,
            Err(e) => {
                inner.metrics.inbox_errors.increment(1);
                if !failing {
                    warn!(error = %e, "reading the inbox failed; connecting again");
                    failing = true;
                }
                conn = None;
                continue;
            }
        };
        if failing {
            info!("the inbox reader is reading again");
            failing = false;
        }
        wait = Duration::from_millis(20);
        let now = crate::metrics::now_ms();
        for entry in batch {
            if let Some((added, _)) = stream_id(&entry.id) {
                inner.metrics.inbox_entry_taken(added, now);
            }
            last.clone_from(&entry.id);
            inner.handle(entry).await;
        }
        if let Some(at) = stream_id(&last) {
            inner.handled.send_replace(at);
        }
    }
    inner.delete_done().await;
}
