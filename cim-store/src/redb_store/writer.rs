//! The writer thread of [`RedbStore`](super::RedbStore): it takes every operation queued at a
//! moment and applies them in one transaction with one commit (group commit), logging them first
//! under `Durability::Always`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use cim_core::Result;
use cim_core::engine::{Appended, Seq};
use redb::{Database, ReadableTable};
use tokio::sync::oneshot;
use tracing::warn;

use super::{BY_TIME, MESSAGES, SEQS, unavailable};
use crate::value;
use crate::wal::{self, Record, Wal};

/// The log is folded into the database (a durable commit) when it grows past this...
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// ...or this long after the last checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Operations queued for the writer, most taking at most this many per transaction.
const MAX_BATCH: usize = 4096;

/// When the writer makes a commit durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sync {
    /// Every batch, through the write-ahead log.
    Always,
    /// At most this long after a change (`Os` is a second).
    Every(std::time::Duration),
}

pub(super) enum Op {
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

#[derive(Clone, Copy)]
struct Account {
    last: Seq,
    count: usize,
}

pub(super) struct Writer {
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
        super::tests::note_expiry_visits(due.len());
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
    /// A writer for `db`, keeping at most `cap` messages per account, without a log yet.
    pub(super) fn new(db: Arc<Database>, durability: Sync, cap: usize) -> Self {
        Self {
            db,
            durability,
            cap: cap.max(1),
            accounts: HashMap::new(),
            last_durable: Instant::now(),
            dirty: false,
            wal: None,
        }
    }

    /// Logs every batch to `wal` from now on.
    pub(super) fn set_wal(&mut self, wal: Wal) {
        self.wal = Some(wal);
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
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
    pub(super) fn replay(&mut self, records: &[Record]) -> std::result::Result<(), redb::Error> {
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
    pub(super) fn checkpoint(&mut self) -> std::result::Result<(), redb::Error> {
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
