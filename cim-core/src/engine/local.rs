//! [`LocalSessionManager`]: the session registry of a single node, in memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use metrics::Counter;
use smallvec::SmallVec;

use crate::engine::conn::{CloseRequest, ConnId, ConnectionHandle, Outbound, PushError};
use crate::engine::locks::{read, write};
use crate::engine::policy::{KickDecision, KickPolicy};
use crate::engine::sessions::{BindOutcome, Delivery, OnlinePage, Page, SessionManager};
use crate::engine::shared::SharedMessage;
use crate::error::Result;
use crate::message::Message;
use crate::protocol::action;
use crate::session::Session;

struct Entry {
    /// Shared with the connection's task.
    session: Arc<Session>,
    handle: ConnectionHandle,
    tags: Tags,
}

/// A connection's tags: rarely any, so one pointer, null when there are none (a vector would
/// be three words in every entry).
#[derive(Default)]
#[allow(clippy::box_collection)] // one pointer in every entry, against a vector's three
struct Tags(Option<Box<Vec<String>>>);

impl Tags {
    fn as_slice(&self) -> &[String] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn add(&mut self, tag: &str) {
        let tags = self.0.get_or_insert_default();
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }

    fn remove(&mut self, tag: &str) {
        if let Some(tags) = &mut self.0 {
            tags.retain(|t| t != tag);
            if tags.is_empty() {
                self.0 = None;
            }
        }
    }
}

/// An account's connections: almost always one, kept inline in the map.
type Entries = SmallVec<[Entry; 1]>;

/// Accounts by the hash of their uid, with no owned key (the sessions hold the uid). Accounts
/// whose 64-bit hashes collide share a slot and are told apart by uid.
#[derive(Default)]
struct Shard {
    by_uid: HashMap<u64, Entries, BuildHasherDefault<Prehashed>>,
}

impl Shard {
    /// The entries of `uid` (whose hash is `h`).
    fn of<'a>(&'a self, h: u64, uid: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.by_uid
            .get(&h)
            .into_iter()
            .flatten()
            .filter(move |e| e.session.uid == uid)
    }

    fn of_mut<'a>(&'a mut self, h: u64, uid: &'a str) -> impl Iterator<Item = &'a mut Entry> + 'a {
        self.by_uid
            .get_mut(&h)
            .into_iter()
            .flatten()
            .filter(move |e| e.session.uid == uid)
    }

    /// Takes out the entries in slot `h` that `take` picks; forgets the slot once empty.
    fn remove_where(&mut self, h: u64, mut take: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let mut out = Vec::new();
        let Some(entries) = self.by_uid.get_mut(&h) else {
            return out;
        };
        let mut i = 0;
        while let Some(e) = entries.get(i) {
            if take(e) {
                out.push(entries.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if entries.is_empty() {
            self.by_uid.remove(&h);
        }
        out
    }
}

/// A `Hasher` for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TagMap = HashMap<String, HashMap<ConnId, ConnectionHandle>>;

/// Sessions of one node, in memory, sharded by account so that binds and pushes on different
/// accounts rarely contend. Pushes take a shard's read lock only.
pub struct LocalSessionManager {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// Applied to every uid's hash: all ones, except in the test that makes every account
    /// collide with every other.
    hash_mask: u64,
    tags: RwLock<TagMap>,
    /// Pushes refused by a full queue (`cim_queue_full_total`).
    queue_full: Counter,
}

/// Who an operator's kick names as the new device (the kick notice's content).
pub const OPERATOR: &str = "admin";

/// The notice a kicked connection gets: action `999`, sender `"0"`, content = the new
/// device's name.
pub fn kick_notice(uid: &str, new_device_name: &str) -> Message {
    Message {
        action: action::KICK.to_owned(),
        sender: action::KICK_SENDER.to_owned(),
        receiver: uid.to_owned(),
        content: new_device_name.to_owned(),
        timestamp: crate::now_ms(),
        ..Message::default()
    }
}

/// Whether `a` and `b` are sessions of one connection: the same node and connection id (and so
/// the same account, as a connection is bound to one at a time).
fn same_connection(a: &Session, b: &Session) -> bool {
    a.nid == b.nid && a.node == b.node && a.uid == b.uid
}

/// Queues `msg` to `handle`, counted in `d`; a push its full queue refused is counted in
/// `queue_full` too.
fn deliver(
    handle: &ConnectionHandle,
    msg: &Arc<SharedMessage>,
    d: &mut Delivery,
    queue_full: &Counter,
) {
    match handle.push(Outbound::Message(Arc::clone(msg))) {
        Ok(()) => d.delivered += 1,
        Err((e, _)) => {
            d.failed += 1;
            if e == PushError::Full {
                queue_full.increment(1);
            }
        }
    }
}

impl LocalSessionManager {
    /// A manager with 64 shards.
    pub fn new() -> Self {
        Self::with_shards(64)
    }

    /// A manager with `n` shards (at least 1). Its series (pushes refused by a full queue) are
    /// registered with the metrics recorder installed now.
    pub fn with_shards(n: usize) -> Self {
        Self {
            shards: (0..n.max(1))
                .map(|_| RwLock::new(Shard::default()))
                .collect(),
            hasher: RandomState::new(),
            hash_mask: u64::MAX,
            tags: RwLock::new(HashMap::new()),
            queue_full: metrics::counter!(crate::engine::metrics::QUEUE_FULL),
        }
    }

    /// The shard of `uid` and the uid's hash (its key there). The shard is chosen by the
    /// hash's upper half, so that it does not correlate with the map's buckets.
    #[allow(clippy::indexing_slicing)] // the index is reduced modulo the (non-zero) length
    fn locate(&self, uid: &str) -> (&RwLock<Shard>, u64) {
        let h = self.hasher.hash_one(uid) & self.hash_mask;
        (&self.shards[((h >> 32) as usize) % self.shards.len()], h)
    }

    fn untag(&self, conn: ConnId, tags: &[String]) {
        if tags.is_empty() {
            return;
        }
        let mut map = write(&self.tags);
        for tag in tags {
            if let Some(members) = map.get_mut(tag) {
                members.remove(&conn);
                if members.is_empty() {
                    map.remove(tag);
                }
            }
        }
    }
}

impl LocalSessionManager {
    /// The tags of the connection of `session` on this node (empty when it is not bound here).
    pub fn tags_of(&self, session: &Session) -> Vec<String> {
        let (lock, h) = self.locate(&session.uid);
        read(lock)
            .of(h, &session.uid)
            .find(|e| same_connection(&e.session, session))
            .map(|e| e.tags.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Every tag held by a connection of this node, with how many connections hold it.
    pub fn tag_counts(&self) -> Vec<(String, usize)> {
        read(&self.tags)
            .iter()
            .map(|(tag, members)| (tag.clone(), members.len()))
            .collect()
    }

    /// Takes connection `conn` of `uid` out of this node's table. With `close`, it is asked to
    /// close for that reason (after `notice`, when given, is queued to it). Returns the tags it had, or `None`
    /// when it was not bound here to `uid`. (A cluster uses this to carry out, on the node that
    /// holds a connection, what a bind or a kick on another node decided.)
    pub fn release(
        &self,
        uid: &str,
        conn: ConnId,
        notice: Option<Message>,
        close: Option<CloseRequest>,
    ) -> Option<Vec<String>> {
        let removed = {
            let (lock, h) = self.locate(uid);
            write(lock).remove_where(h, |e| e.session.uid == uid && e.handle.id() == conn)
        };
        let mut tags: Option<Vec<String>> = None;
        for e in removed {
            self.untag(e.handle.id(), e.tags.as_slice());
            if let Some(n) = &notice {
                let _ = e
                    .handle
                    .push(Outbound::Message(Arc::new(SharedMessage::new(n.clone()))));
            }
            if let Some(why) = &close {
                e.handle.close(why.clone());
            }
            tags.get_or_insert_default()
                .extend(e.tags.as_slice().iter().cloned());
        }
        tags
    }
}

impl Default for LocalSessionManager {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SessionManager for LocalSessionManager {
    async fn bind(
        &self,
        session: Arc<Session>,
        conn: ConnectionHandle,
        policy: &dyn KickPolicy,
    ) -> Result<BindOutcome> {
        let mut outcome = BindOutcome::default();
        let mut removed: Vec<(Entry, KickDecision)> = Vec::new();
        {
            let (lock, h) = self.locate(&session.uid);
            let mut shard = write(lock);
            let entries = shard.by_uid.entry(h).or_default();
            let mut i = 0;
            while let Some(e) = entries.get(i) {
                let decision = if e.session.uid != session.uid {
                    // Another account whose uid hashes alike.
                    Some(KickDecision::Keep)
                } else if e.handle.id() == conn.id() {
                    // This connection bound again: its old entry is replaced, not kicked.
                    None
                } else {
                    Some(policy.decide(&e.session, &session))
                };
                match decision {
                    Some(KickDecision::Keep) => i += 1,
                    Some(d) => removed.push((entries.swap_remove(i), d)),
                    None => {
                        let old = entries.swap_remove(i);
                        self.untag(old.handle.id(), old.tags.as_slice());
                    }
                }
            }
            entries.push(Entry {
                session: Arc::clone(&session),
                handle: conn,
                tags: Tags::default(),
            });
        }
        for (entry, decision) in removed {
            self.untag(entry.handle.id(), entry.tags.as_slice());
            if decision == KickDecision::Kick {
                let notice = kick_notice(&session.uid, &session.device_name);
                let _ = entry
                    .handle
                    .push(Outbound::Message(Arc::new(SharedMessage::new(notice))));
                outcome.kicked.push(Arc::unwrap_or_clone(entry.session));
            } else {
                outcome.closed.push(Arc::unwrap_or_clone(entry.session));
            }
            entry.handle.close(CloseRequest::Kicked);
        }
        Ok(outcome)
    }

    async fn unbind(&self, session: &Session) -> Result<()> {
        let removed = {
            let (lock, h) = self.locate(&session.uid);
            write(lock).remove_where(h, |e| same_connection(&e.session, session))
        };
        for e in removed {
            self.untag(e.handle.id(), e.tags.as_slice());
        }
        Ok(())
    }

    async fn push(&self, msg: Arc<SharedMessage>) -> Result<Delivery> {
        let uid = msg.message().receiver.as_str();
        let mut d = Delivery::default();
        let (lock, h) = self.locate(uid);
        for e in read(lock).of(h, uid) {
            deliver(&e.handle, &msg, &mut d, &self.queue_full);
        }
        Ok(d)
    }

    async fn push_unless_receipts(&self, msg: Arc<SharedMessage>) -> Result<Option<Delivery>> {
        let uid = msg.message().receiver.as_str();
        let (lock, h) = self.locate(uid);
        let shard = read(lock);
        if shard.of(h, uid).any(|e| e.session.client_ack) {
            return Ok(None);
        }
        let mut d = Delivery::default();
        for e in shard.of(h, uid) {
            deliver(&e.handle, &msg, &mut d, &self.queue_full);
        }
        Ok(Some(d))
    }

    async fn push_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> Result<Delivery> {
        let mut d = Delivery::default();
        let tags = read(&self.tags);
        for handle in tags.get(tag).into_iter().flat_map(HashMap::values) {
            deliver(handle, &msg, &mut d, &self.queue_full);
        }
        Ok(d)
    }

    async fn broadcast(&self, msg: Arc<SharedMessage>) -> Result<Delivery> {
        let mut d = Delivery::default();
        for shard in self.shards.iter() {
            let shard = read(shard);
            for e in shard.by_uid.values().flatten() {
                deliver(&e.handle, &msg, &mut d, &self.queue_full);
            }
        }
        Ok(d)
    }

    async fn set_tag(&self, session: &Session, tag: &str) -> Result<()> {
        let handle = {
            let (lock, h) = self.locate(&session.uid);
            let mut shard = write(lock);
            let Some(e) = shard
                .of_mut(h, &session.uid)
                .find(|e| same_connection(&e.session, session))
            else {
                return Ok(());
            };
            e.tags.add(tag);
            e.handle.clone()
        };
        write(&self.tags)
            .entry(tag.to_owned())
            .or_default()
            .insert(handle.id(), handle);
        Ok(())
    }

    async fn remove_tag(&self, session: &Session, tag: &str) -> Result<()> {
        let conn = {
            let (lock, h) = self.locate(&session.uid);
            let mut shard = write(lock);
            let Some(e) = shard
                .of_mut(h, &session.uid)
                .find(|e| same_connection(&e.session, session))
            else {
                return Ok(());
            };
            e.tags.remove(tag);
            e.handle.id()
        };
        self.untag(conn, &[tag.to_owned()]);
        Ok(())
    }

    async fn sessions(&self, uid: &str) -> Result<Vec<Session>> {
        let (lock, h) = self.locate(uid);
        Ok(read(lock)
            .of(h, uid)
            .map(|e| Session::clone(&e.session))
            .collect())
    }

    async fn wants_receipts(&self, uid: &str) -> Result<bool> {
        let (lock, h) = self.locate(uid);
        Ok(read(lock).of(h, uid).any(|e| e.session.client_ack))
    }

    async fn online(&self, page: &Page) -> Result<OnlinePage> {
        let matches = |s: &Session| {
            page.uid.as_deref().is_none_or(|u| s.uid == u)
                && page.channel.as_deref().is_none_or(|c| s.channel == c)
        };
        let mut all: Vec<Session> = Vec::new();
        for shard in self.shards.iter() {
            let shard = read(shard);
            all.extend(
                shard
                    .by_uid
                    .values()
                    .flatten()
                    .map(|e| &*e.session)
                    .filter(|s| matches(s))
                    .cloned(),
            );
        }
        all.sort_by(|a, b| (&a.node, a.nid).cmp(&(&b.node, b.nid)));
        let total = all.len();
        let sessions = all.into_iter().skip(page.offset).take(page.limit).collect();
        Ok(OnlinePage { total, sessions })
    }

    async fn kick(&self, uid: &str) -> Result<usize> {
        let (lock, h) = self.locate(uid);
        let entries = write(lock).remove_where(h, |e| e.session.uid == uid);
        let n = entries.len();
        for e in entries {
            self.untag(e.handle.id(), e.tags.as_slice());
            let notice = kick_notice(uid, OPERATOR);
            let _ = e
                .handle
                .push(Outbound::Message(Arc::new(SharedMessage::new(notice))));
            e.handle.close(CloseRequest::KickedByOperator);
        }
        Ok(n)
    }

    async fn count(&self) -> Result<usize> {
        Ok(self
            .shards
            .iter()
            .map(|s| read(s).by_uid.values().map(|es| es.len()).sum::<usize>())
            .sum())
    }
}

#[cfg(test)]
mod sizes {
    use super::*;

    /// Every bound connection keeps one entry in its account's slot: the shared session, the
    /// queue handle and the tags, one pointer each. 24 bytes; an account with one connection
    /// keeps it inline in the map (32 bytes with the small vector's length).
    #[test]
    fn an_entry_is_three_pointers() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<Entries>(), 32);
    }

    #[test]
    fn tags_are_kept_once_and_freed_when_the_last_goes() {
        let mut tags = Tags::default();
        tags.add("a");
        tags.add("b");
        tags.add("a");
        assert_eq!(tags.as_slice(), ["a", "b"]);
        tags.remove("a");
        tags.remove("c");
        assert_eq!(tags.as_slice(), ["b"]);
        tags.remove("b");
        assert!(tags.0.is_none(), "no allocation is kept for no tags");
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    /// Every uid hashes alike: every account shares one shard and one slot, and each operation
    /// must still tell the accounts apart.
    #[tokio::test]
    async fn conforms_when_every_uid_collides() {
        crate::testing::sessions::conformance(|| async {
            let colliding = LocalSessionManager {
                hash_mask: 0,
                ..LocalSessionManager::new()
            };
            vec![crate::testing::sessions::Node::local(
                "node-0",
                Arc::new(colliding),
            )]
        })
        .await;
    }
}
