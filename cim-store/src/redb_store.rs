//! [`RedbStore`]: offline messages in a redb database file.
//!
//! Every write goes through one writer thread, which takes all operations waiting at that
//! moment and applies them in a single transaction with a single commit: concurrent senders
//! share one fsync (group commit), and per-account sequences need no locks. Reads run in their
//! own read transactions beside it.

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

use crate::Durability;
use crate::value;
use crate::wal::{self, Record, Wal};

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const SEQS: TableDefinition<&str, u64> = TableDefinition::new("seqs");

/// File name of the database inside the store directory.
pub const FILE_NAME: &str = "messages.redb";

/// File name of the write-ahead log (`Durability::Always`) inside the store directory.
pub const WAL_FILE_NAME: &str = "messages.wal";

/// The log is folded into the database (a durable commit) when it grows past this...
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this long after the last checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Opens (or creates) the store in directory `dir` (file `messages.redb`). `cap` is the most
    /// messages kept per account; older ones are dropped first, counted and logged.
    pub fn open(
        dir: impl AsRef<Path>,
        durability: Durability,
        cap: usize,
    ) -> Result<RedbStore, RedbOpenError> {
        let dir = dir.as_ref();
        let path = dir.join(FILE_NAME);
        let err = |e: &dyn std::fmt::Display| RedbOpenError {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = Database::create(&path).map_err(|e| err(&e))?;
        // Create the tables, so readers find them.
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(MESSAGES).map_err(|e| err(&e))?;
        txn.open_table(SEQS).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        let db = Arc::new(db);
        // redb commits are either durable or lost on a crash; "left to the OS" becomes a durable
        // commit once a second.
        let durability = match durability {
            Durability::Os => Durability::Interval(std::time::Duration::from_secs(1)),
            d => d,
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
        if durability == Durability::Always {
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

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<(&str, u64), &[u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(MESSAGES).map_err(unavailable)?;
        f(&table)
    }
}

fn count_in(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    uid: &str,
) -> Result<usize> {
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
    durability: Durability,
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
                Durability::Interval(every) if self.dirty => {
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
            Durability::Always => self.wal.is_none(),
            Durability::Interval(every) => {
                batch_wants_flush || self.last_durable.elapsed() >= every
            }
            Durability::Os => batch_wants_flush,
        }
    }

    /// Applies logged records again (each is idempotent) and commits durably.
    fn replay(&mut self, records: &[Record]) -> std::result::Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = Tables {
                messages: txn.open_table(MESSAGES)?,
                seqs: txn.open_table(SEQS)?,
            };
            for rec in records {
                match rec {
                    Record::Append { uid, seq, value } => {
                        t.messages.insert((uid.as_str(), *seq), value.as_slice())?;
                        let last = t.seqs.get(uid.as_str())?.map_or(0, |v| v.value());
                        t.seqs.insert(uid.as_str(), last.max(*seq))?;
                    }
                    Record::Ack { uid, upto } => {
                        t.messages
                            .retain_in((uid.as_str(), 0)..=(uid.as_str(), *upto), |_, _| false)?;
                    }
                    Record::Expire { older_than_ms } => {
                        let cut = *older_than_ms;
                        t.messages
                            .retain(|_, v| value::decode(v).map_or(true, |(at, _)| at >= cut))?;
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

    /// Deletes `uid`'s messages up to `upto` (all when `None`), at most `limit`.
    fn delete(
        &mut self,
        t: &mut Tables<'_>,
        uid: &str,
        upto: Option<Seq>,
        limit: usize,
    ) -> std::result::Result<usize, redb::Error> {
        let table = &mut t.messages;
        let end = upto.unwrap_or(u64::MAX);
        let mut n = 0;
        table.retain_in((uid, 0)..=(uid, end), |_, _| {
            if n < limit {
                n += 1;
                false
            } else {
                true
            }
        })?;
        if let Some(a) = self.accounts.get_mut(uid) {
            a.count = a.count.saturating_sub(n);
        }
        Ok(n)
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
            let mut t = Tables {
                messages: txn.open_table(MESSAGES)?,
                seqs: txn.open_table(SEQS)?,
            };
            for op in batch {
                match op {
                    Op::Append { uid, value, reply } => {
                        let mut a = self.account(&t, &uid)?;
                        a.last += 1;
                        a.count += 1;
                        t.messages
                            .insert((uid.as_str(), a.last), value.as_slice())?;
                        t.seqs.insert(uid.as_str(), a.last)?;
                        if logging {
                            wal::encode_append(&mut log, &uid, a.last, &value);
                        }
                        if let Some(slot) = self.accounts.get_mut(&uid) {
                            *slot = a;
                        }
                        let mut dropped = 0;
                        if a.count > self.cap {
                            dropped = self.delete(&mut t, &uid, None, a.count - self.cap)?;
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
                        let n = self.delete(&mut t, &uid, upto, usize::MAX)?;
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
                        let table = &mut t.messages;
                        let mut gone: HashMap<String, usize> = HashMap::new();
                        table.retain(|(uid, _), v| {
                            let keep = value::decode(v).map_or(true, |(at, _)| at >= older_than_ms);
                            if !keep {
                                *gone.entry(uid.to_owned()).or_default() += 1;
                            }
                            keep
                        })?;
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
        let value = value::encode(cim_core::now_ms(), msg);
        let uid = uid.to_owned();
        self.ask(|reply| Op::Append { uid, value, reply }).await
    }

    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>> {
        self.read(|table| {
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
        let txn = self.db.begin_read().map_err(unavailable)?;
        let seqs = txn.open_table(SEQS).map_err(unavailable)?;
        Ok(seqs.get(uid).map_err(unavailable)?.map_or(0, |v| v.value()))
    }

    async fn count(&self, uid: &str) -> Result<usize> {
        self.read(|table| count_in(table, uid))
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
