//! Durability: what the HTTP API answered as sent survives `kill -9` with `durability = always`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use cim_codec_binary::BinaryCodec;
use common::process::*;
use common::*;

const ACCOUNTS: usize = 8;
const PER_ACCOUNT: usize = 100;

#[tokio::test]
async fn acknowledged_sends_survive_kill_9() {
    survives_kill_9("redb").await;
}

#[tokio::test]
async fn acknowledged_sends_survive_kill_9_sled() {
    survives_kill_9("sled").await;
}

async fn survives_kill_9(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("CIM_STORE__PATH", path.as_str()),
        ("CIM_STORE__DURABILITY", "always"),
        ("CIM_STORE__BACKEND", backend),
    ];
    let mut p = ServerProcess::start(&env);
    let http_addr = p.addr("http");

    // One sender per account (so each account's order is defined), all at once.
    let mut senders = Vec::new();
    for a in 0..ACCOUNTS {
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_ACCOUNT {
                let body = format!(r#"{{"receiver":"crash-{a}","action":"2","content":"{i}"}}"#);
                let r = http(http_addr, "POST", "/api/v1/messages", &[JSON], &body).await;
                assert_eq!(r.status, 200, "{r:?}");
                let j = r.json();
                assert_eq!(j["stored"], true);
                ids.push(j["id"].as_str().unwrap().parse::<i64>().unwrap());
            }
            ids
        }));
    }
    let mut expected = Vec::new();
    for s in senders {
        expected.push(s.await.unwrap());
    }
    // Right after the last 200: no graceful anything.
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    let p = ServerProcess::start(&env);
    for (a, ids) in expected.iter().enumerate() {
        let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
        c.bind(&format!("crash-{a}"), "android", "d").await;
        for (i, id) in ids.iter().enumerate() {
            let m = c.message().await;
            assert_eq!(
                (m.id, m.content.clone()),
                (*id, i.to_string()),
                "account {a}"
            );
        }
        // Exactly once: nothing follows.
        let extra = tokio::time::timeout(std::time::Duration::from_millis(200), c.next()).await;
        assert!(extra.is_err(), "account {a}: extra {extra:?}");
    }
}

#[tokio::test]
async fn pending_counts_and_deletion_over_http() {
    let p = ServerProcess::start(&[]);
    let h = p.addr("http");
    for i in 0..3 {
        let body = format!(r#"{{"receiver":"pend","content":"{i}"}}"#);
        assert_eq!(
            http(h, "POST", "/api/v1/messages", &[JSON], &body)
                .await
                .status,
            200
        );
    }
    let r = http(h, "GET", "/api/v1/accounts/pend/pending", &[], "").await;
    assert_eq!(r.json()["pending"], 3);
    let r = http(h, "DELETE", "/api/v1/accounts/pend/pending", &[], "").await;
    assert_eq!(r.json()["deleted"], 3);
    let r = http(h, "GET", "/api/v1/accounts/pend/pending", &[], "").await;
    assert_eq!(r.json()["pending"], 0);
    // Nothing arrives on bind.
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind("pend", "android", "d").await;
    let extra = tokio::time::timeout(std::time::Duration::from_millis(200), c.next()).await;
    assert!(extra.is_err(), "{extra:?}");
}

#[test]
fn an_unopenable_store_stops_startup_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file-not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, err) = run_once(&[], &[("CIM_STORE__PATH", file.to_str().unwrap())]);
    assert_ne!(code, 0);
    assert!(err.contains("a-file-not-a-dir"), "{err}");
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop. Needs root (as CI and the
/// development machines run); fails with a clear message otherwise.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_and_loses_nothing_answered_200() {
    let disk = SmallDisk::mount("8m");
    let store = disk.dir.path().join("data");
    let p = ServerProcess::start(&[("CIM_STORE__PATH", store.to_str().unwrap())]);
    let h = p.addr("http");
    let content = "x".repeat(60 * 1024);
    let mut ok = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let body = format!(r#"{{"receiver":"full","content":"{i}-{content}"}}"#);
        let r = http(h, "POST", "/api/v1/messages", &[JSON], &body).await;
        match r.status {
            200 => ok.push(r.json()["id"].as_str().unwrap().parse::<i64>().unwrap()),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("message store unavailable"),
        "{refused:?}"
    );
    assert!(!ok.is_empty());
    // sled stops serving after an I/O error; once there is room again and the server is
    // restarted, every message answered 200 is delivered, in order.
    drop(p);
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(disk.dir.path())
        .status()
        .unwrap();
    assert!(grown.success());
    let p = ServerProcess::start(&[("CIM_STORE__PATH", store.to_str().unwrap())]);
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind("full", "android", "d").await;
    for id in &ok {
        assert_eq!(c.message().await.id, *id);
    }
}
