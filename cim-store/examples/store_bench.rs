//! Measures the sled store: appends per second under each durability policy with 1 and 64
//! concurrent senders, and disk use under churn (1 000 000 messages appended and acknowledged,
//! 10 000 left pending).
//!
//! ```sh
//! cargo run --release -p cim-store --example store_bench                    # everything, both backends
//! cargo run --release -p cim-store --example store_bench -- append redb     # appends only, one backend
//! cargo run --release -p cim-store --example store_bench -- churn sled      # disk use only
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_core::Message;
use cim_core::engine::MessageStore;
use cim_store::{Durability, RedbStore, SledStore, StoreOptions};

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Redb,
    Sled,
}

fn open(b: Backend, dir: &Path, d: Durability) -> Arc<dyn MessageStore> {
    match b {
        Backend::Redb => Arc::new(RedbStore::open(dir, StoreOptions::new(d, 1_000_000)).unwrap()),
        Backend::Sled => Arc::new(SledStore::open(dir, StoreOptions::new(d, 1_000_000)).unwrap()),
    }
}

fn typical(i: u64) -> Message {
    Message {
        id: i as i64,
        action: "2".into(),
        title: "news".into(),
        content: "x".repeat(100),
        sender: "system".into(),
        receiver: format!("user-{}", i % 1000),
        format: "txt".into(),
        extra: "ext".into(),
        timestamp: 1_700_000_000_000,
        ..Message::default()
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn appends(
    backend: Backend,
    durability: Durability,
    senders: usize,
    per_sender: usize,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open(backend, dir.path(), durability);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                let m = typical((s * per_sender + i) as u64);
                store.append(&format!("user-{s}"), &m).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (senders * per_sender) as f64 / start.elapsed().as_secs_f64()
}

async fn churn(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(backend, dir.path(), Durability::Os);
    let accounts = 1000u64;
    let total = 1_000_000u64;
    let keep = 10u64;
    let start = Instant::now();
    for i in 0..total {
        let a = (i % accounts) as usize;
        let uid = format!("user-{a}");
        let appended = store.append(&uid, &typical(i)).await.unwrap();
        if appended.seq > keep {
            store.ack(&uid, appended.seq - keep).await.unwrap();
        }
        if i % 200_000 == 0 && i > 0 {
            println!(
                "  {i} appended, {:.1} MB on disk",
                dir_size(dir.path()) as f64 / 1e6
            );
        }
    }
    store.flush().await.unwrap();
    let mut pending = 0;
    for a in 0..accounts {
        pending += store.count(&format!("user-{a}")).await.unwrap();
    }
    let live: u64 = (0..accounts)
        .map(|a| {
            let m = typical(a);
            (cim_core::testing::typical_message().content.len() + m.receiver.len() + 40) as u64
        })
        .sum::<u64>()
        * keep;
    println!(
        "churn: {total} appended and {} acknowledged in {:.1} s; {pending} pending",
        total - pending as u64,
        start.elapsed().as_secs_f64()
    );
    println!(
        "  on disk: {:.1} MB; live data about {:.1} MB",
        dir_size(dir.path()) as f64 / 1e6,
        live as f64 / 1e6
    );
    drop(store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reopened = open(backend, dir.path(), Durability::Os);
    println!(
        "  after reopening: {:.1} MB on disk, {} pending for user-0",
        dir_size(dir.path()) as f64 / 1e6,
        reopened.count("user-0").await.unwrap()
    );
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let backends = match std::env::args().nth(2).as_deref() {
        Some("redb") => vec![Backend::Redb],
        Some("sled") => vec![Backend::Sled],
        _ => vec![Backend::Redb, Backend::Sled],
    };
    for backend in backends {
        let name = if backend == Backend::Redb {
            "redb"
        } else {
            "sled"
        };
        if what.is_empty() || what == "append" {
            for (policy, d) in [
                ("always", Durability::Always),
                // (StoreOptions flush every 100 ms by default.)
                ("interval(100ms)", Durability::Interval),
                ("os", Durability::Os),
            ] {
                for senders in [1, 64] {
                    let per = if senders == 1 && policy == "always" {
                        2_000
                    } else {
                        200_000 / senders
                    };
                    let rate = appends(backend, d, senders, per).await;
                    println!("{name} append {policy:>16} senders {senders:>2}: {rate:>9.0} msgs/s");
                }
            }
        }
        if what.is_empty() || what == "churn" {
            println!("{name}:");
            churn(backend).await;
        }
    }
}
