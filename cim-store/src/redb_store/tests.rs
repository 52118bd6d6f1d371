//! Tests of the redb store.

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

/// How many reads of one store run at once, and the most that did; with `slow` set each read
/// takes a few milliseconds, so that reads asked for together overlap if they may.
#[derive(Default)]
pub(super) struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
    slow: std::sync::atomic::AtomicBool,
}

/// A read in progress (see [`Overlap`]).
pub(super) struct Reading<'a>(&'a Overlap);

impl Overlap {
    pub(super) fn enter(&self) -> Reading<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Reading(self)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
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
        let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 10)).unwrap();
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

/// An account that never had a message stored is answered without a read thread, and one that
/// had is read as before — also after the store is opened again, when the filter is rebuilt
/// from the `seqs` table, and after its messages are acknowledged.
#[tokio::test]
async fn accounts_without_stored_messages_are_answered_without_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 10)).unwrap();
    store.append("stored", &msg(1)).await.unwrap();
    store.append("acked", &msg(2)).await.unwrap();
    store.ack("acked", 1).await.unwrap();
    drop(store);
    let store = reopen(dir.path(), 10).await;
    store.overlap.most.store(0, Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(store.last_seq("never").await.unwrap(), 0);
        assert_eq!(store.count("never").await.unwrap(), 0);
        assert!(store.pending("never", 0, 10).await.unwrap().is_empty());
    }
    assert_eq!(
        store.overlap.most.load(Ordering::SeqCst),
        0,
        "an unknown account was read"
    );
    assert_eq!(store.last_seq("stored").await.unwrap(), 1);
    assert_eq!(store.count("stored").await.unwrap(), 1);
    assert_eq!(store.last_seq("acked").await.unwrap(), 1);
    assert_eq!(store.count("acked").await.unwrap(), 0);
    assert!(store.overlap.most.load(Ordering::SeqCst) >= 1);
    // A new account is found as soon as its first append has returned.
    store.append("new", &msg(3)).await.unwrap();
    assert_eq!(store.last_seq("new").await.unwrap(), 1);
    assert_eq!(store.pending("new", 0, 10).await.unwrap().len(), 1);
}

/// No more reads run at once than `read_threads` allows: 40 asked for together with 1, 2 and
/// 8 permits (the blocking pool would otherwise start a thread for each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_once_stay_within_read_threads() {
    for permits in [1, 2, 8] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(Durability::Always, 10).read_threads(permits);
        let store = RedbStore::open(dir.path(), options).unwrap();
        store.append("u", &msg(1)).await.unwrap();
        store.overlap.slow.store(true, Ordering::SeqCst);
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let store = store.clone();
            reads.spawn(async move { store.last_seq("u").await });
        }
        while let Some(seq) = reads.join_next().await {
            assert_eq!(seq.unwrap().unwrap(), 1);
        }
        let most = store.overlap.most.load(Ordering::SeqCst);
        assert!(
            most <= permits,
            "{most} reads at once with {permits} permits"
        );
        // The limit is what bounds them: with 8 permits, 40 slow reads do overlap.
        if permits == 8 {
            assert!(most > 2, "{most}");
        }
    }
    // At least one, whatever is asked.
    assert_eq!(
        StoreOptions::new(Durability::Always, 1)
            .read_threads(0)
            .read_threads,
        1
    );
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
    let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, 100)).unwrap();
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
