//! `SledStore` passes the message store conformance suite, restart included.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cim_store::{Durability, RedbStore, SledStore, StoreOptions};

/// Opens a store, retrying for a moment while the previous owner of the files lets go.
async fn open_retrying<S, E: std::fmt::Display>(open: impl Fn() -> Result<S, E>) -> S {
    let mut tries = 0;
    loop {
        match open() {
            Ok(s) => return s,
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

async fn redb_conforms(options: StoreOptions) {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let base = dir.path().to_path_buf();
    let make = || {
        let path = base.join(format!(
            "db{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        async move { RedbStore::open(path, options).unwrap() }
    };
    let reopen = |s: RedbStore| {
        let path = base.join("db0");
        async move {
            drop(s);
            open_retrying(|| RedbStore::open(&path, options)).await
        }
    };
    cim_core::testing::store::conformance(make, Some(reopen), 5).await;
}

#[tokio::test]
async fn redb_store_conforms_always() {
    redb_conforms(StoreOptions::new(Durability::Always, 5)).await;
}

#[tokio::test]
async fn redb_store_conforms_interval() {
    redb_conforms(
        StoreOptions::new(Durability::Interval, 5)
            .flush_interval(std::time::Duration::from_millis(50)),
    )
    .await;
}

#[tokio::test]
async fn redb_store_conforms_os() {
    redb_conforms(StoreOptions::new(Durability::Os, 5)).await;
}

#[tokio::test]
async fn redb_unopenable_directory_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = RedbStore::open(&file, StoreOptions::new(Durability::Os, 5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

async fn conforms(options: StoreOptions) {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let base = dir.path().to_path_buf();
    let make = || {
        let path = base.join(format!(
            "db{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        async move { SledStore::open(path, options).unwrap() }
    };
    let reopen = |s: SledStore| {
        let path = base.join("db0");
        async move {
            drop(s);
            // sled releases its file lock when its last internal handle is gone, which its
            // background threads may delay by a moment.
            open_retrying(|| SledStore::open(&path, options)).await
        }
    };
    cim_core::testing::store::conformance(make, Some(reopen), 5).await;
}

#[tokio::test]
async fn sled_store_conforms_always() {
    conforms(StoreOptions::new(Durability::Always, 5)).await;
}

#[tokio::test]
async fn sled_store_conforms_interval() {
    conforms(
        StoreOptions::new(Durability::Interval, 5)
            .flush_interval(std::time::Duration::from_millis(50)),
    )
    .await;
}

#[tokio::test]
async fn sled_store_conforms_os() {
    conforms(StoreOptions::new(Durability::Os, 5)).await;
}

#[tokio::test]
async fn an_unopenable_directory_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SledStore::open(&file, StoreOptions::new(Durability::Os, 5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
