//! The [`MessageStore`] seam: messages kept for accounts until they are delivered (or, for
//! clients that acknowledge, until they are acknowledged), and [`MemoryStore`], its in-memory
//! implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::Message;

/// A per-account sequence number: strictly increasing within an account, across restarts.
pub type Seq = u64;

/// A stored message and its sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its place in the account's queue.
    pub seq: Seq,
    /// When it was stored, milliseconds since the Unix epoch.
    pub stored_at: i64,
    /// The message.
    pub message: Message,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence.
    pub seq: Seq,
    /// Oldest messages dropped to keep the account under its cap.
    pub dropped: usize,
}

/// Offline messages, per account, in order.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Appends `msg` to `uid`'s queue. Returns once it is as durable as the store's policy says.
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended>;

    /// Up to `limit` messages of `uid` with a sequence above `after`, oldest first.
    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>>;

    /// Deletes `uid`'s messages up to and including `upto`; returns how many.
    async fn ack(&self, uid: &str, upto: Seq) -> Result<usize>;

    /// Deletes the message of `uid` with message id `id` and every older one; returns how many
    /// (0 when no stored message has that id).
    async fn ack_id(&self, uid: &str, id: i64) -> Result<usize> {
        let mut after = 0;
        loop {
            let page = self.pending(uid, after, 256).await?;
            let Some(last) = page.last() else {
                return Ok(0);
            };
            if let Some(hit) = page.iter().find(|s| s.message.id == id) {
                return self.ack(uid, hit.seq).await;
            }
            after = last.seq;
        }
    }

    /// The last sequence given to a message of `uid` (0 before any).
    async fn last_seq(&self, uid: &str) -> Result<Seq>;

    /// Number of messages waiting for `uid`.
    async fn count(&self, uid: &str) -> Result<usize>;

    /// Deletes every message of `uid`; returns how many.
    async fn clear(&self, uid: &str) -> Result<usize>;

    /// Deletes messages stored before `older_than_ms` (Unix milliseconds); returns how many.
    async fn expire(&self, older_than_ms: i64) -> Result<usize>;

    /// Makes everything appended so far durable.
    async fn flush(&self) -> Result<()>;
}

#[derive(Default)]
struct Account {
    next: Seq,
    queue: BTreeMap<Seq, Stored>,
}

/// Messages in memory: for tests and embedding; gone at exit. `cap` messages per account at
/// most (oldest dropped first).
pub struct MemoryStore {
    accounts: Mutex<HashMap<String, Account>>,
    cap: usize,
}

impl MemoryStore {
    /// A store keeping up to `cap` messages per account.
    pub fn new(cap: usize) -> Self {
        Self {
            accounts: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
        crate::engine::locks::lock(&self.accounts)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(10_000)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended> {
        let mut accounts = self.lock();
        let acc = accounts.entry(uid.to_owned()).or_default();
        acc.next += 1;
        let seq = acc.next;
        acc.queue.insert(
            seq,
            Stored {
                seq,
                stored_at: crate::now_ms(),
                message: msg.clone(),
            },
        );
        let mut dropped = 0;
        while acc.queue.len() > self.cap {
            acc.queue.pop_first();
            dropped += 1;
        }
        Ok(Appended { seq, dropped })
    }

    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>> {
        let accounts = self.lock();
        Ok(accounts
            .get(uid)
            .map(|a| {
                a.queue
                    .range(after.saturating_add(1)..)
                    .take(limit)
                    .map(|(_, s)| s.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn ack(&self, uid: &str, upto: Seq) -> Result<usize> {
        let mut accounts = self.lock();
        let Some(acc) = accounts.get_mut(uid) else {
            return Ok(0);
        };
        let keep = acc.queue.split_off(&upto.saturating_add(1));
        let n = acc.queue.len();
        acc.queue = keep;
        Ok(n)
    }

    async fn last_seq(&self, uid: &str) -> Result<Seq> {
        Ok(self.lock().get(uid).map_or(0, |a| a.next))
    }

    async fn count(&self, uid: &str) -> Result<usize> {
        Ok(self.lock().get(uid).map_or(0, |a| a.queue.len()))
    }

    async fn clear(&self, uid: &str) -> Result<usize> {
        let mut accounts = self.lock();
        Ok(accounts
            .get_mut(uid)
            .map_or(0, |a| std::mem::take(&mut a.queue).len()))
    }

    async fn expire(&self, older_than_ms: i64) -> Result<usize> {
        let mut accounts = self.lock();
        let mut n = 0;
        for acc in accounts.values_mut() {
            let before = acc.queue.len();
            acc.queue.retain(|_, s| s.stored_at >= older_than_ms);
            n += before - acc.queue.len();
        }
        Ok(n)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
