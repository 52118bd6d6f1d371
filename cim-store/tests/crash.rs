//! A process killed with SIGKILL before a checkpoint: what the per-account cap dropped stays
//! dropped when the store is opened again (the drops are in the write-ahead log, as acks are).
//!
//! The test runs itself as the child: with `CIM_STORE_CRASH_CHILD` set to a directory, the test
//! function appends past the cap there, says so on stdout and waits to be killed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use cim_core::Message;
use cim_core::engine::MessageStore;
use cim_store::{Durability, RedbStore, StoreOptions};

const CHILD_ENV: &str = "CIM_STORE_CRASH_CHILD";
const CAP: usize = 10;
const APPENDS: i64 = 35;

fn message(i: i64) -> Message {
    Message {
        id: i,
        content: format!("m{i}"),
        ..Message::default()
    }
}

/// The child: appends past the cap, reports, and waits (well within the 10 s after which the
/// next write would checkpoint).
async fn child(dir: &str) -> ! {
    let store = RedbStore::open(dir, StoreOptions::new(Durability::Always, CAP)).unwrap();
    let mut dropped = 0;
    for i in 0..APPENDS {
        dropped += store.append("capped", &message(i)).await.unwrap().dropped;
        store.append("other", &message(i)).await.unwrap();
    }
    // On a line of its own: the test harness may have begun one.
    println!("\nappended, {dropped} dropped");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[tokio::test]
async fn messages_dropped_by_the_cap_stay_dropped_after_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "messages_dropped_by_the_cap_stay_dropped_after_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines read by a thread of their own, so that a child that never reports fails the test
    // instead of hanging it.
    let stdout = BufReader::new(proc.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        match lines.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) if line.starts_with("appended, ") => break line,
            Ok(_) => {}
            Err(e) => {
                proc.kill().unwrap();
                panic!("the child did not report its appends: {e}");
            }
        }
    };
    let expected_drops = format!("{} dropped", APPENDS as usize - CAP);
    assert!(line.contains(&expected_drops), "{line}");
    // SIGKILL: no final checkpoint, nothing flushed on the way out.
    proc.kill().unwrap();
    proc.wait().unwrap();
    let wal = std::fs::metadata(dir.path().join("messages.wal"))
        .unwrap()
        .len();
    assert!(
        wal > 0,
        "no checkpoint was due: the log must hold the appends"
    );

    let store = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, CAP)).unwrap();
    let kept: Vec<i64> = store
        .pending("capped", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|s| s.message.id)
        .collect();
    assert_eq!(kept, (APPENDS - CAP as i64..APPENDS).collect::<Vec<_>>());
    assert_eq!(store.count("capped").await.unwrap(), CAP);
    assert_eq!(store.count("other").await.unwrap(), CAP);
    assert_eq!(store.last_seq("capped").await.unwrap(), APPENDS as u64);
    // The cap holds from there on.
    assert_eq!(
        store.append("capped", &message(99)).await.unwrap().dropped,
        1
    );
    assert_eq!(store.count("capped").await.unwrap(), CAP);
}
