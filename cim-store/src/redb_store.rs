//! [`RedbStore`]: offline messages in a redb database file.
//!
//! Every write goes through one writer thread, which takes all operations waiting at that
//! moment and applies them in a single transaction with a single commit: concurrent senders
//! share one fsync (group commit), and per-account sequences need no locks. Reads run in their
//! own read transactions beside it, on the runtime's blocking threads (a read may wait for the
//! disk, which an async worker thread must not).
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use cim_core::engine::{Appended, MessageStore, Seq, Stored};
use cim_core::{Error, Message, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::value;
use crate::wal::{self, Record, Wal};
use crate::{Durability, StoreOptions};

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

/// The log is folded into the database (a durable commit) when it grows past this...
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this long after the last checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// When the writer makes a commit durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Every batch, through the write-ahead log.
    Always,
    /// At most this long after a change (`Os` is a second).
    Every(std::time::Duration),
}

/// Operations queued for the writer, most taking at most this many per transaction.
const MAX_BATCH: usize = 4096;

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

enum Op {
    Append {
        uid: String,
        stored_at: i64,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Ack {
        uid: String,
        upto: Option<Seq>,
        reply: oneshot::Sender<Result<usize>>,
    },
    Expire {
        older_than_ms: i64,
        reply: oneshot::Sender<Result<usize>>,
    },
    Flush {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Offline messages in redb: a table keyed by `(account, sequence)`, so one account's messages
/// are one ordered range, and a table of each account's last sequence, written in the same
/// transaction, so sequences survive restarts and acks.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    ops: mpsc::Sender<Op>,
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
        let mut writer = Writer {
            db: Arc::clone(&db),
            durability,
            cap: cap.max(1),
            accounts: HashMap::new(),
            last_durable: Instant::now(),
            dirty: false,
            wal: None,
        };
        if durability == Sync::Always {
            let wal_path = dir.join(WAL_FILE_NAME);
            let (log, records) = Wal::open(&wal_path).map_err(|e| err(&e))?;
            if !records.is_empty() {
                info!(records = records.len(), "replaying the write-ahead log");
                writer.replay(&records).map_err(|e| err(&e))?;
            }
            writer.wal = Some(log);
            writer.checkpoint().map_err(|e| err(&e))?;
        }
        let (ops, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cim-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| err(&e))?;
        info!(path = %path.display(), ?durability, "message store open");
        Ok(RedbStore { db, ops })
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .map_err(|_| unavailable("the writer stopped"))?;
        rx.await.map_err(|_| unavailable("the writer stopped"))?
    }

    /// Runs `f` with a read transaction on a blocking thread of the runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
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

fn count_in(txn: &redb::ReadTransaction, uid: &str) -> Result<usize> {
    let table = txn.open_table(MESSAGES).map_err(unavailable)?;
    Ok(table
        .range((uid, 0)..=(uid, u64::MAX))
        .map_err(unavailable)?
        .count())
}

#[derive(Clone, Copy)]
struct Account {
    last: Seq,
    count: usize,
}

struct Writer {
    db: Arc<Database>,
    durability: Sync,
    cap: usize,
    /// Per-account state, loaded on first use; only this thread writes, so it stays exact.
    accounts: HashMap<String, Account>,
    last_durable: Instant,
    /// Commits made without fsync since the last durable one.
    dirty: bool,
    /// The write-ahead log, under `Durability::Always`.
    wal: Option<Wal>,
}

struct Tables<'t> {
    messages: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    seqs: redb::Table<'t, &'static str, u64>,
    by_time: redb::Table<'t, (i64, &'static str, u64), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> std::result::Result<Self, redb::Error> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES)?,
            seqs: txn.open_table(SEQS)?,
            by_time: txn.open_table(BY_TIME)?,
        })
    }

    /// Stores `value` as message `seq` of `uid` (again, when replaying: the same value).
    fn insert(
        &mut self,
        uid: &str,
        seq: Seq,
        value: &[u8],
    ) -> std::result::Result<(), redb::Error> {
        self.messages.insert((uid, seq), value)?;
        if let Some(at) = value::stored_at(value) {
            self.by_time.insert((at, uid, seq), ())?;
        }
        let last = self.seqs.get(uid)?.map_or(0, |v| v.value());
        if seq > last {
            self.seqs.insert(uid, seq)?;
        }
        Ok(())
    }

    /// Deletes the oldest messages of `uid` up to `upto`, at most `limit` of them; returns how
    /// many, and the sequence of the last one deleted. Takes time in proportion to that number.
    fn delete_oldest(
        &mut self,
        uid: &str,
        upto: Seq,
        limit: usize,
    ) -> std::result::Result<(usize, Seq), redb::Error> {
        let mut gone = Vec::new();
        for entry in self
            .messages
            .extract_from_if((uid, 0)..=(uid, upto), |_, _| true)?
            .take(limit)
        {
            let (k, v) = entry?;
            gone.push((k.value().1, value::stored_at(v.value())));
        }
        for &(seq, at) in &gone {
            if let Some(at) = at {
                self.by_time.remove((at, uid, seq))?;
            }
        }
        Ok((gone.len(), gone.last().map_or(0, |&(seq, _)| seq)))
    }

    /// Deletes the messages stored before `older_than_ms`; returns how many, per account. Reads
    /// only the index entries of what it deletes.
    fn expire(
        &mut self,
        older_than_ms: i64,
    ) -> std::result::Result<HashMap<String, usize>, redb::Error> {
        let mut due = Vec::new();
        for entry in self
            .by_time
            .extract_from_if(..(older_than_ms, "", 0), |_, _| true)?
        {
            let (k, _) = entry?;
            let (_, uid, seq) = k.value();
            due.push((uid.to_owned(), seq));
        }
        #[cfg(test)]
        tests::note_expiry_visits(due.len());
        let mut gone: HashMap<String, usize> = HashMap::new();
        for (uid, seq) in due {
            if self.messages.remove((uid.as_str(), seq))?.is_some() {
                *gone.entry(uid).or_default() += 1;
            }
        }
        Ok(gone)
    }
}

enum Done {
    Appended(oneshot::Sender<Result<Appended>>, Appended),
    Count(oneshot::Sender<Result<usize>>, usize),
    Flushed(oneshot::Sender<Result<()>>),
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let first = match self.durability {
                Sync::Every(every) if self.dirty => {
                    let wait = every.saturating_sub(self.last_durable.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(op) => op,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.commit_durable_now();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
        if self.wal.is_some() {
            if let Err(e) = self.checkpoint() {
                warn!(error = %e, "final checkpoint of the message store failed");
            }
        } else if self.dirty {
            self.commit_durable_now();
        }
    }

    fn durable_now(&self, batch_wants_flush: bool) -> bool {
        match self.durability {
            // The log makes each batch durable; the database catches up at checkpoints.
            Sync::Always => self.wal.is_none(),
            Sync::Every(every) => batch_wants_flush || self.last_durable.elapsed() >= every,
        }
    }

    /// Applies logged records again (each is idempotent) and commits durably.
    fn replay(&mut self, records: &[Record]) -> std::result::Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = Tables::open(&txn)?;
            for rec in records {
                match rec {
                    Record::Append { uid, seq, value } => t.insert(uid, *seq, value)?,
                    Record::Ack { uid, upto } => {
                        t.delete_oldest(uid, *upto, usize::MAX)?;
                    }
                    Record::Expire { older_than_ms } => {
                        t.expire(*older_than_ms)?;
                    }
                }
            }
        }
        txn.commit()?;
        self.accounts.clear();
        Ok(())
    }

    /// Makes everything committed so far durable and empties the log.
    fn checkpoint(&mut self) -> std::result::Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        self.dirty = false;
        self.last_durable = Instant::now();
        if let Some(log) = &mut self.wal {
            log.reset().map_err(redb::StorageError::from)?;
        }
        Ok(())
    }

    fn commit_durable_now(&mut self) {
        let res = (|| -> std::result::Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        match res {
            Ok(()) => {
                self.dirty = false;
                self.last_durable = Instant::now();
            }
            Err(e) => warn!(error = %e, "message store flush failed"),
        }
    }

    fn account(&mut self, t: &Tables<'_>, uid: &str) -> std::result::Result<Account, redb::Error> {
        if let Some(a) = self.accounts.get(uid) {
            return Ok(*a);
        }
        let last = t.seqs.get(uid)?.map_or(0, |v| v.value());
        let count = t.messages.range((uid, 0)..=(uid, u64::MAX))?.count();
        let a = Account { last, count };
        self.accounts.insert(uid.to_owned(), a);
        Ok(a)
    }

    /// Deletes `uid`'s oldest messages up to `upto` (all when `None`), at most `limit`; returns
    /// how many and the sequence of the last one deleted.
    fn delete(
        &mut self,
        t: &mut Tables<'_>,
        uid: &str,
        upto: Option<Seq>,
        limit: usize,
    ) -> std::result::Result<(usize, Seq), redb::Error> {
        let (n, last) = t.delete_oldest(uid, upto.unwrap_or(u64::MAX), limit)?;
        if let Some(a) = self.accounts.get_mut(uid) {
            a.count = a.count.saturating_sub(n);
        }
        Ok((n, last))
    }

    fn apply(&mut self, batch: Vec<Op>) {
        let wants_flush = batch.iter().any(|op| matches!(op, Op::Flush { .. }));
        let durable = self.durable_now(wants_flush);
        let mut done = Vec::with_capacity(batch.len());
        let mut log = Vec::new();
        let logging = self.wal.is_some();
        let res = (|| -> std::result::Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if durable {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            })?;
            let mut t = Tables::open(&txn)?;
            for op in batch {
                match op {
                    Op::Append {
                        uid,
                        stored_at,
                        value,
                        reply,
                    } => {
                        let mut a = self.account(&t, &uid)?;
                        a.last += 1;
                        a.count += 1;
                        t.messages
                            .insert((uid.as_str(), a.last), value.as_slice())?;
                        t.by_time.insert((stored_at, uid.as_str(), a.last), ())?;
                        t.seqs.insert(uid.as_str(), a.last)?;
                        if logging {
                            wal::encode_append(&mut log, &uid, a.last, &value);
                        }
                        if let Some(slot) = self.accounts.get_mut(&uid) {
                            *slot = a;
                        }
                        let mut dropped = 0;
                        if a.count > self.cap {
                            let last_dropped;
                            (dropped, last_dropped) =
                                self.delete(&mut t, &uid, None, a.count - self.cap)?;
                            // Logged like an ack, so that a replay drops them again.
                            if logging && dropped > 0 {
                                wal::encode_ack(&mut log, &uid, last_dropped);
                            }
                            warn!(uid = %uid, dropped, cap = self.cap, "offline queue full: oldest messages dropped");
                        }
                        done.push(Done::Appended(
                            reply,
                            Appended {
                                seq: a.last,
                                dropped,
                            },
                        ));
                    }
                    Op::Ack { uid, upto, reply } => {
                        self.account(&t, &uid)?;
                        let (n, _) = self.delete(&mut t, &uid, upto, usize::MAX)?;
                        if logging && n > 0 {
                            wal::encode_ack(&mut log, &uid, upto.unwrap_or(u64::MAX));
                        }
                        done.push(Done::Count(reply, n));
                    }
                    Op::Expire {
                        older_than_ms,
                        reply,
                    } => {
                        if logging {
                            wal::encode_expire(&mut log, older_than_ms);
                        }
                        let gone = t.expire(older_than_ms)?;
                        let mut n = 0;
                        for (uid, k) in gone {
                            n += k;
                            if let Some(a) = self.accounts.get_mut(&uid) {
                                a.count = a.count.saturating_sub(k);
                            }
                        }
                        done.push(Done::Count(reply, n));
                    }
                    Op::Flush { reply } => done.push(Done::Flushed(reply)),
                }
            }
            drop(t);
            // Durable in the log first; a failed log write abandons the transaction.
            if let Some(wal) = &mut self.wal
                && !log.is_empty()
            {
                wal.append_sync(&log).map_err(redb::StorageError::from)?;
            }
            txn.commit()?;
            Ok(())
        })();
        let res = res.and_then(|()| {
            let due = self.wal.as_ref().is_some_and(|w| {
                wants_flush
                    || w.len() > CHECKPOINT_BYTES
                    || self.last_durable.elapsed() > CHECKPOINT_EVERY
            });
            if due { self.checkpoint() } else { Ok(()) }
        });
        match res {
            Ok(()) => {
                if durable {
                    self.dirty = false;
                    self.last_durable = Instant::now();
                } else if self.wal.is_none() {
                    self.dirty = true;
                }
                for d in done {
                    match d {
                        Done::Appended(r, a) => drop(r.send(Ok(a))),
                        Done::Count(r, n) => drop(r.send(Ok(n))),
                        Done::Flushed(r) => drop(r.send(Ok(()))),
                    }
                }
            }
            Err(e) => {
                // Nothing of the batch happened: forget the cached sequences and counts (they
                // are read again from disk on next use), and tell everyone.
                self.accounts.clear();
                warn!(error = %e, "message store write failed");
                let reason = e.to_string();
                for d in done {
                    match d {
                        Done::Appended(r, _) => drop(r.send(Err(unavailable(&reason)))),
                        Done::Count(r, _) => drop(r.send(Err(unavailable(&reason)))),
                        Done::Flushed(r) => drop(r.send(Err(unavailable(&reason)))),
                    }
                }
                // Operations of the batch not reached before the error were dropped with their
                // reply senders, so their callers get "the writer stopped"-style errors.
            }
        }
    }
}

#[async_trait]
impl MessageStore for RedbStore {
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended> {
        let stored_at = cim_core::now_ms();
        let value = value::encode(stored_at, msg);
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
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::ThreadId;

    static READ_THREADS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());
    static EXPIRY_VISITS: AtomicUsize = AtomicUsize::new(0);

    /// Records the thread a read runs on.
    pub(super) fn note_read_thread() {
        READ_THREADS
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }

    /// Records how many index entries the last expiry read.
    pub(super) fn note_expiry_visits(n: usize) {
        EXPIRY_VISITS.store(n, Ordering::SeqCst);
    }

    fn msg(i: i64) -> Message {
        Message {
            id: i,
            content: format!("m{i}"),
            ..Message::default()
        }
    }

    /// Appends `msg(i)` as if it had been stored at `stored_at`.
    async fn append_at(store: &RedbStore, uid: &str, stored_at: i64, i: i64) -> Appended {
        let uid = uid.to_owned();
        let value = value::encode(stored_at, &msg(i));
        store
            .ask(|reply| Op::Append {
                uid,
                stored_at,
                value,
                reply,
            })
            .await
            .unwrap()
    }

    /// Opens the store in `dir`, waiting a moment for the writer of the previous opening to let
    /// go of the file.
    async fn reopen(dir: &Path, cap: usize) -> RedbStore {
        for _ in 0..200 {
            if let Ok(store) = RedbStore::open(dir, StoreOptions::new(Durability::Always, cap)) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the store at {} did not open again", dir.display());
    }

    /// Entries of the messages table and of the expiry index.
    fn table_sizes(store: &RedbStore) -> (u64, u64) {
        use redb::ReadableTableMetadata;
        let txn = store.db.begin_read().unwrap();
        let m = txn.open_table(MESSAGES).unwrap().len().unwrap();
        let t = txn.open_table(BY_TIME).unwrap().len().unwrap();
        (m, t)
    }

    /// `pending`, `count` and `last_seq` do not run redb on the runtime's own thread.
    #[test]
    fn reads_run_off_the_runtime_threads() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let runtime_thread = std::thread::current().id();
        rt.block_on(async {
            let store =
                RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 10)).unwrap();
            store.append("u", &msg(1)).await.unwrap();
            READ_THREADS.lock().unwrap().clear();
            assert_eq!(store.pending("u", 0, 10).await.unwrap().len(), 1);
            assert_eq!(store.count("u").await.unwrap(), 1);
            assert_eq!(store.last_seq("u").await.unwrap(), 1);
        });
        let threads = READ_THREADS.lock().unwrap().clone();
        assert!(threads.len() >= 3, "{threads:?}");
        assert!(!threads.contains(&runtime_thread), "{threads:?}");
    }

    /// Expiry reads the index entries of what it deletes and nothing else: 10 old messages
    /// among 2 000 recent ones cost 10 reads, not 2 010.
    #[tokio::test]
    async fn expiry_reads_only_what_expires() {
        let dir = tempfile::tempdir().unwrap();
        let every = std::time::Duration::from_secs(60);
        let options = StoreOptions::new(Durability::Interval, 100_000).flush_interval(every);
        let store = RedbStore::open(dir.path(), options).unwrap();
        for i in 0..10 {
            append_at(&store, &format!("old{}", i % 3), 1_000 + i, i).await;
        }
        for i in 0..2000 {
            store
                .append(&format!("new{}", i % 7), &msg(i))
                .await
                .unwrap();
        }
        assert_eq!(store.expire(5_000).await.unwrap(), 10);
        assert_eq!(EXPIRY_VISITS.load(Ordering::SeqCst), 10);
        assert_eq!(store.count("old0").await.unwrap(), 0);
        assert_eq!(store.count("new0").await.unwrap(), 286);
        assert_eq!(table_sizes(&store), (2000, 2000));
        // Sequences are kept: an expired account goes on where it was.
        assert_eq!(append_at(&store, "old0", 9_000, 99).await.seq, 5);
        assert_eq!(store.expire(5_000).await.unwrap(), 0);
        assert_eq!(EXPIRY_VISITS.load(Ordering::SeqCst), 0);
    }

    /// Acks, clears and the cap delete index entries with their messages, so the index never
    /// holds more than the messages.
    #[tokio::test]
    async fn the_index_follows_every_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 5)).unwrap();
        for i in 0..20 {
            store.append("capped", &msg(i)).await.unwrap();
        }
        for i in 0..10 {
            store.append("acked", &msg(i)).await.unwrap();
        }
        assert_eq!(table_sizes(&store), (10, 10));
        assert_eq!(store.ack("acked", 2).await.unwrap(), 0);
        assert_eq!(store.ack("acked", 8).await.unwrap(), 3);
        assert_eq!(table_sizes(&store), (7, 7));
        assert_eq!(store.clear("capped").await.unwrap(), 5);
        assert_eq!(table_sizes(&store), (2, 2));
        // After a restart that replays the log, the same.
        drop(store);
        let store = reopen(dir.path(), 5).await;
        assert_eq!(table_sizes(&store), (2, 2));
        assert_eq!(store.expire(i64::MAX).await.unwrap(), 2);
        assert_eq!(table_sizes(&store), (0, 0));
    }

    /// A database written before the expiry index existed is indexed on open, and its old
    /// messages expire.
    #[tokio::test]
    async fn a_database_without_the_index_is_indexed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an earlier version wrote: messages and sequences only.
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut m = txn.open_table(MESSAGES).unwrap();
                let mut s = txn.open_table(SEQS).unwrap();
                for seq in 1..=6u64 {
                    let at = if seq <= 4 { 1_000 } else { cim_core::now_ms() };
                    m.insert(("u", seq), value::encode(at, &msg(seq as i64)).as_slice())
                        .unwrap();
                }
                s.insert("u", 6).unwrap();
            }
            txn.commit().unwrap();
        }
        let store =
            RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 100)).unwrap();
        assert_eq!(table_sizes(&store), (6, 6));
        assert_eq!(store.expire(5_000).await.unwrap(), 4);
        let left: Vec<i64> = store
            .pending("u", 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|s| s.message.id)
            .collect();
        assert_eq!(left, [5, 6]);
        assert_eq!(store.append("u", &msg(7)).await.unwrap().seq, 7);
        // Indexed once: the second opening finds the mark and builds nothing.
        drop(store);
        let store = reopen(dir.path(), 100).await;
        assert_eq!(table_sizes(&store), (3, 3));
    }
}
