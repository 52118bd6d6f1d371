//! What `Durability::Always` acknowledged survives a crash: the files are copied while the store
//! is running (what a crash leaves on disk), and the copy is opened.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use cim_core::Message;
use cim_core::engine::MessageStore;
use cim_store::{Durability, RedbStore, StoreOptions};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn acknowledged_appends_and_acks_survive_a_crash_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = RedbStore::open(&live, StoreOptions::new(Durability::Always, 10_000)).unwrap();
    for i in 0..300i64 {
        let m = Message {
            id: i,
            content: format!("m{i}"),
            ..Message::default()
        };
        store.append(&format!("u{}", i % 3), &m).await.unwrap();
    }
    // u0's first 50 are acknowledged.
    let first50 = store.pending("u0", 0, 50).await.unwrap();
    store.ack("u0", first50.last().unwrap().seq).await.unwrap();

    let snapshot = dir.path().join("snapshot");
    copy_dir(&live, &snapshot);
    let wal_len = std::fs::metadata(snapshot.join("messages.wal"))
        .unwrap()
        .len();
    assert!(wal_len > 0, "the snapshot should need the log");

    let recovered =
        RedbStore::open(&snapshot, StoreOptions::new(Durability::Always, 10_000)).unwrap();
    assert_eq!(recovered.count("u0").await.unwrap(), 50);
    assert_eq!(recovered.count("u1").await.unwrap(), 100);
    assert_eq!(recovered.count("u2").await.unwrap(), 100);
    let u1 = recovered.pending("u1", 0, 1000).await.unwrap();
    let ids: Vec<i64> = u1.iter().map(|s| s.message.id).collect();
    assert_eq!(ids, (0..300).filter(|i| i % 3 == 1).collect::<Vec<_>>());
    // Sequences go on from where they were.
    let next = recovered.append("u1", &Message::default()).await.unwrap();
    assert_eq!(next.seq, 101);
    // The log was folded in: a second opening needs nothing from it.
    drop(recovered);
    drop(store);
}
