//! [`SledStore`]: offline messages in a sled database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cim_core::engine::{Appended, MessageStore, Seq, Stored};
use cim_core::{Error, Message, Result};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{Durability, StoreOptions, keys, value};

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the message store at {path}: {source}")]
pub struct OpenError {
    /// The directory.
    pub path: PathBuf,
    /// What sled said.
    #[source]
    pub source: sled::Error,
}

#[derive(Clone, Copy, Default)]
struct Account {
    last: Seq,
    count: usize,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    accounts: Mutex<HashMap<String, Account>>,
    cap: usize,
    committer: Option<mpsc::UnboundedSender<CommitRequest>>,
}

/// Offline messages in sled: one ordered range of keys per account, values in a versioned
/// encoding (see the `value` module), and the last sequence of each account stored beside its
/// messages in the same atomic batch, so sequences survive restarts and acks.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::unavailable("message store", e)
}

impl SledStore {
    /// Opens (or creates) the store in `dir` as `options` say. Must be called inside a tokio
    /// runtime under [`Durability::Always`] (it starts the group-commit task).
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<SledStore, OpenError> {
        let path = dir.as_ref().to_path_buf();
        let durability = options.durability;
        let cap = options.max_per_account;
        let flush_every = match durability {
            Durability::Interval => Some(options.flush_interval.as_millis().max(1) as u64),
            Durability::Always | Durability::Os => None,
        };
        let open = || -> sled::Result<(sled::Db, sled::Tree)> {
            let db = sled::Config::new()
                .path(&path)
                .flush_every_ms(flush_every)
                .cache_capacity(64 * 1024 * 1024)
                .open()?;
            let tree = db.open_tree("messages")?;
            Ok((db, tree))
        };
        let (db, tree) = open().map_err(|source| OpenError {
            path: path.clone(),
            source,
        })?;
        let committer = (durability == Durability::Always).then(spawn_committer);
        info!(path = %path.display(), ?durability, "message store open");
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                tree,
                accounts: Mutex::new(HashMap::new()),
                cap: cap.max(1),
                committer,
            }),
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.inner.db.size_on_disk().map_err(unavailable)
    }

    /// The account's last sequence and count, loaded from disk on first use.
    fn account(&self, uid: &str) -> Result<Account> {
        if let Some(a) = self.lock().get(uid) {
            return Ok(*a);
        }
        let last = match self
            .inner
            .tree
            .get(keys::last_seq(uid))
            .map_err(unavailable)?
        {
            Some(v) => Seq::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| unavailable("corrupt sequence"))?,
            ),
            None => 0,
        };
        let count = self
            .inner
            .tree
            .scan_prefix(keys::account_prefix(uid))
            .keys()
            .count();
        let a = Account { last, count };
        Ok(*self.lock().entry(uid.to_owned()).or_insert(a))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
        self.inner
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn commit(&self) -> Result<()> {
        let Some(tx) = &self.inner.committer else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send((self.inner.db.clone(), done))
            .map_err(|_| unavailable("the commit task stopped"))?;
        wait.await
            .map_err(|_| unavailable("the commit task stopped"))?
            .map_err(unavailable)
    }

    fn decode(key: &[u8], v: &[u8]) -> Result<Stored> {
        let (stored_at, message) = value::decode(v).map_err(unavailable)?;
        let seq = keys::seq_of(key).ok_or_else(|| unavailable("corrupt key"))?;
        Ok(Stored {
            seq,
            stored_at,
            message,
        })
    }

    /// Deletes `uid`'s messages with sequences up to `upto` (all when `None`).
    fn delete_upto(&self, uid: &str, upto: Option<Seq>) -> Result<usize> {
        let prefix = keys::account_prefix(uid);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for key in self.inner.tree.scan_prefix(&prefix).keys() {
            let key = key.map_err(unavailable)?;
            if upto.is_some_and(|u| keys::seq_of(&key).is_none_or(|s| s > u)) {
                break;
            }
            batch.remove(key);
            n += 1;
        }
        self.inner.tree.apply_batch(batch).map_err(unavailable)?;
        if let Some(a) = self.lock().get_mut(uid) {
            a.count = a.count.saturating_sub(n);
        }
        Ok(n)
    }
}

/// A request to make everything written so far durable: the database (each request carries a
/// handle, so the task holds none while idle and the store closes when its last handle drops)
/// and where to say it is done.
type CommitRequest = (sled::Db, oneshot::Sender<std::result::Result<(), String>>);

/// One task that fsyncs for every waiting appender at once: appends that arrive during an
/// fsync wait for the next, so a burst of concurrent senders costs a few fsyncs, not one each.
fn spawn_committer() -> mpsc::UnboundedSender<CommitRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CommitRequest>();
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        while let Some((db, first)) = rx.recv().await {
            waiting.push(first);
            while let Ok((_, more)) = rx.try_recv() {
                waiting.push(more);
            }
            let res = match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &res {
                warn!(error = %e, "message store flush failed");
            }
            for w in waiting.drain(..) {
                let _ = w.send(res.clone());
            }
        }
    });
    tx
}

#[async_trait]
impl MessageStore for SledStore {
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended> {
        let mut acc = self.account(uid)?;
        let seq = {
            let mut map = self.lock();
            let a = map.entry(uid.to_owned()).or_insert(acc);
            a.last += 1;
            a.count += 1;
            acc = *a;
            a.last
        };
        let mut batch = sled::Batch::default();
        batch.insert(
            keys::message(uid, seq),
            value::encode(cim_core::now_ms(), msg),
        );
        batch.insert(keys::last_seq(uid), &seq.to_be_bytes());
        if let Err(e) = self.inner.tree.apply_batch(batch) {
            if let Some(a) = self.lock().get_mut(uid) {
                a.count = a.count.saturating_sub(1);
            }
            return Err(unavailable(e));
        }
        let mut dropped = 0;
        if acc.count > self.inner.cap {
            let excess = acc.count - self.inner.cap;
            let oldest: Vec<_> = self
                .inner
                .tree
                .scan_prefix(keys::account_prefix(uid))
                .keys()
                .take(excess)
                .filter_map(std::result::Result::ok)
                .collect();
            if let Some(last) = oldest.last().and_then(|k| keys::seq_of(k)) {
                dropped = self.delete_upto(uid, Some(last))?;
                warn!(
                    uid,
                    dropped,
                    cap = self.inner.cap,
                    "offline queue full: oldest messages dropped"
                );
            }
        }
        self.commit().await?;
        Ok(Appended { seq, dropped })
    }

    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>> {
        let start = keys::message(uid, after.saturating_add(1));
        let prefix = keys::account_prefix(uid);
        let mut out = Vec::new();
        for kv in self.inner.tree.range(start..) {
            let (k, v) = kv.map_err(unavailable)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(Self::decode(&k, &v)?);
        }
        Ok(out)
    }

    async fn ack(&self, uid: &str, upto: Seq) -> Result<usize> {
        let n = self.delete_upto(uid, Some(upto))?;
        self.commit().await?;
        Ok(n)
    }

    async fn last_seq(&self, uid: &str) -> Result<Seq> {
        Ok(self.account(uid)?.last)
    }

    async fn count(&self, uid: &str) -> Result<usize> {
        Ok(self.account(uid)?.count)
    }

    async fn clear(&self, uid: &str) -> Result<usize> {
        let n = self.delete_upto(uid, None)?;
        self.commit().await?;
        Ok(n)
    }

    async fn expire(&self, older_than_ms: i64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut touched: HashMap<String, usize> = HashMap::new();
        for kv in self.inner.tree.scan_prefix(keys::MESSAGES) {
            let (k, v) = kv.map_err(unavailable)?;
            let Ok((stored_at, _)) = value::decode(&v) else {
                continue;
            };
            if stored_at < older_than_ms {
                if let Some(uid) = keys::uid_of(&k) {
                    *touched.entry(uid.to_owned()).or_default() += 1;
                }
                batch.remove(k);
            }
        }
        self.inner.tree.apply_batch(batch).map_err(unavailable)?;
        let mut n = 0;
        {
            let mut map = self.lock();
            for (uid, gone) in touched {
                n += gone;
                if let Some(a) = map.get_mut(&uid) {
                    a.count = a.count.saturating_sub(gone);
                }
            }
        }
        self.commit().await?;
        Ok(n)
    }

    async fn flush(&self) -> Result<()> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(())
    }
}
