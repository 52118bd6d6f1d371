//! [`RedbStore`]: offline messages in a redb database file.
//!
//! Every write goes through one writer thread, which takes all operations waiting at that
//! moment and applies them in a single transaction with a single commit: concurrent senders
//! share one fsync (group commit), and per-account sequences need no locks. Reads run in their
//! own read transactions beside it, on the runtime's blocking threads (a read may wait for the
//! disk, which an async worker thread must not) — except where an in-memory filter of the
//! accounts that have ever stored a message ([`accounts`]) says there is nothing to read, as for
//! most binds.
//!
//! Tables:
//! - `messages`: `(account, sequence)` → the stored value ([`value`](crate::value)), so one
//!   account's messages are one ordered range;
//! - `seqs`: account → its last sequence, written in the same transaction, so sequences survive
//!   restarts and acks;
//! - `by_time`: `(stored at, account, sequence)` → `()`, the expiry index: expiring finds what is
//!   older than the cut-off without reading anything else. Every write that deletes a message
//!   deletes its index entry. A database written before the index existed gets it on open (one
//!   pass over its messages, recorded in `meta`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cim_core::engine::{Appended, MessageStore, Seq, Stored};
use cim_core::{Error, Message, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::info;

use crate::value;
use crate::wal::Wal;

mod accounts;
mod writer;

use crate::{Durability, StoreOptions};
use accounts::AccountFilter;
use writer::{Op, Sync, Writer};

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const SEQS: TableDefinition<&str, u64> = TableDefinition::new("seqs");
const BY_TIME: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The `meta` entry recording that `by_time` indexes every message.
const META_TIME_INDEX: &str = "by_time";

/// File name of the database inside the store directory.
pub const FILE_NAME: &str = "messages.redb";

/// File name of the write-ahead log (`Durability::Always`) inside the store directory.
pub const WAL_FILE_NAME: &str = "messages.wal";

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::unavailable("message store", e)
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the message store at {path}: {reason}")]
pub struct RedbOpenError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Offline messages in redb: a table keyed by `(account, sequence)`, so one account's messages
/// are one ordered range, and a table of each account's last sequence, written in the same
/// transaction, so sequences survive restarts and acks.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    ops: mpsc::Sender<Op>,
    /// Permits for the reads that may run at once ([`StoreOptions::read_threads`]).
    reads: Arc<tokio::sync::Semaphore>,
    /// The accounts that may have a row in `seqs`.
    accounts: Arc<AccountFilter>,
    #[cfg(test)]
    overlap: Arc<tests::Overlap>,
}

impl RedbStore {
    /// Opens (or creates) the store in directory `dir` (file `messages.redb`) as `options` say.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<RedbStore, RedbOpenError> {
        let cap = options.max_per_account;
        let dir = dir.as_ref();
        let path = dir.join(FILE_NAME);
        let err = |e: &dyn std::fmt::Display| RedbOpenError {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = Database::create(&path).map_err(|e| err(&e))?;
        // Create the tables, so readers find them, and index what an older version wrote.
        prepare(&db).map_err(|e| err(&e))?;
        let db = Arc::new(db);
        // redb commits are either durable or lost on a crash; "left to the OS" becomes a durable
        // commit once a second.
        let durability = match options.durability {
            Durability::Always => Sync::Always,
            Durability::Interval => Sync::Every(options.flush_interval),
            Durability::Os => Sync::Every(std::time::Duration::from_secs(1)),
        };
        let mut writer = Writer::new(Arc::clone(&db), durability, cap);
        if durability == Sync::Always {
            let wal_path = dir.join(WAL_FILE_NAME);
            let (log, records) = Wal::open(&wal_path).map_err(|e| err(&e))?;
            if !records.is_empty() {
                info!(records = records.len(), "replaying the write-ahead log");
                writer.replay(&records).map_err(|e| err(&e))?;
            }
            writer.set_wal(log);
            writer.checkpoint().map_err(|e| err(&e))?;
        }
        let accounts = Arc::new(known_accounts(&db).map_err(|e| err(&e))?);
        let (ops, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cim-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| err(&e))?;
        info!(path = %path.display(), ?durability, "message store open");
        let reads = Arc::new(tokio::sync::Semaphore::new(options.read_threads.max(1)));
        Ok(RedbStore {
            db,
            ops,
            reads,
            accounts,
            #[cfg(test)]
            overlap: Arc::default(),
        })
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .map_err(|_| unavailable("the writer stopped"))?;
        rx.await.map_err(|_| unavailable("the writer stopped"))?
    }

    /// Runs `f` with a read transaction on a blocking thread of the runtime, once one of the
    /// read permits is free.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = Arc::clone(&self.db);
        let permit = Arc::clone(&self.reads)
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the store is closed"))?;
        #[cfg(test)]
        let overlap = Arc::clone(&self.overlap);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            #[cfg(test)]
            let _reading = overlap.enter();
            #[cfg(test)]
            tests::note_read_thread();
            let txn = db.begin_read().map_err(unavailable)?;
            f(&txn)
        })
        .await
        .map_err(|e| unavailable(format_args!("a read failed: {e}")))?
    }
}

/// Creates the tables and, for a database written before the expiry index existed, builds it.
fn prepare(db: &Database) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let messages = txn.open_table(MESSAGES)?;
        txn.open_table(SEQS)?;
        let mut by_time = txn.open_table(BY_TIME)?;
        let mut meta = txn.open_table(META)?;
        if meta.get(META_TIME_INDEX)?.is_none() {
            let mut indexed = 0usize;
            for entry in messages.range::<(&str, u64)>(..)? {
                let (k, v) = entry?;
                let (uid, seq) = k.value();
                // A value this build cannot read is kept, as it was, and never expires.
                if let Some(at) = value::stored_at(v.value()) {
                    by_time.insert((at, uid, seq), ())?;
                    indexed += 1;
                }
            }
            meta.insert(META_TIME_INDEX, 1)?;
            if indexed > 0 {
                info!(
                    messages = indexed,
                    "built the expiry index of the message store"
                );
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// The filter of the accounts `seqs` holds, from one pass over it.
fn known_accounts(db: &Database) -> std::result::Result<AccountFilter, redb::Error> {
    use redb::ReadableTableMetadata;
    let txn = db.begin_read()?;
    let seqs = txn.open_table(SEQS)?;
    let filter = AccountFilter::with_capacity(seqs.len()?);
    for entry in seqs.iter()? {
        filter.insert(entry?.0.value());
    }
    Ok(filter)
}

fn count_in(txn: &redb::ReadTransaction, uid: &str) -> Result<usize> {
    let table = txn.open_table(MESSAGES).map_err(unavailable)?;
    Ok(table
        .range((uid, 0)..=(uid, u64::MAX))
        .map_err(unavailable)?
        .count())
}

#[async_trait]
impl MessageStore for RedbStore {
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended> {
        let stored_at = cim_core::now_ms();
        let value = value::encode(stored_at, msg);
        self.accounts.insert(uid);
        let uid = uid.to_owned();
        self.ask(|reply| Op::Append {
            uid,
            stored_at,
            value,
            reply,
        })
        .await
    }

    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>> {
        if !self.accounts.may_contain(uid) {
            return Ok(Vec::new());
        }
        let uid = uid.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let uid = uid.as_str();
            let mut out = Vec::new();
            let start = after.saturating_add(1);
            if start == 0 {
                return Ok(out);
            }
            for entry in table
                .range((uid, start)..=(uid, u64::MAX))
                .map_err(unavailable)?
            {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = entry.map_err(unavailable)?;
                let (stored_at, message) = value::decode(v.value()).map_err(unavailable)?;
                out.push(Stored {
                    seq: k.value().1,
                    stored_at,
                    message,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ack(&self, uid: &str, upto: Seq) -> Result<usize> {
        let uid = uid.to_owned();
        self.ask(|reply| Op::Ack {
            uid,
            upto: Some(upto),
            reply,
        })
        .await
    }

    async fn last_seq(&self, uid: &str) -> Result<Seq> {
        if !self.accounts.may_contain(uid) {
            return Ok(0);
        }
        let uid = uid.to_owned();
        self.read(move |txn| {
            let seqs = txn.open_table(SEQS).map_err(unavailable)?;
            Ok(seqs
                .get(uid.as_str())
                .map_err(unavailable)?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn count(&self, uid: &str) -> Result<usize> {
        if !self.accounts.may_contain(uid) {
            return Ok(0);
        }
        let uid = uid.to_owned();
        self.read(move |txn| count_in(txn, &uid)).await
    }

    async fn clear(&self, uid: &str) -> Result<usize> {
        let uid = uid.to_owned();
        self.ask(|reply| Op::Ack {
            uid,
            upto: None,
            reply,
        })
        .await
    }

    async fn expire(&self, older_than_ms: i64) -> Result<usize> {
        self.ask(|reply| Op::Expire {
            older_than_ms,
            reply,
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.ask(|reply| Op::Flush { reply }).await
    }
}

#[cfg(test)]
mod tests;
