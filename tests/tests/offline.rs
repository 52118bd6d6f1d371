//! Nothing lost: offline messages in a real store on disk (redb, the default; the main paths
//! also with sled), delivery on bind, receipts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use cim_core::engine::{ConnectionConfig, MessageStore};
use cim_core::{Frame, SentBody};
use cim_server::{RunningServer, WsSettings};
use cim_store::{Durability, RedbStore, SledStore, StoreOptions};
use common::*;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Redb,
    Sled,
}

/// Opens the store in `dir`, retrying while a previous handle (its writer thread, or sled's
/// flusher) still holds the files.
async fn open(backend: Backend, dir: &std::path::Path, d: Durability) -> Arc<dyn MessageStore> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let opened: Result<Arc<dyn MessageStore>, String> = match backend {
            Backend::Redb => RedbStore::open(dir, StoreOptions::new(d, 10_000))
                .map(|s| Arc::new(s) as _)
                .map_err(|e| e.to_string()),
            Backend::Sled => SledStore::open(dir, StoreOptions::new(d, 10_000))
                .map(|s| Arc::new(s) as _)
                .map_err(|e| e.to_string()),
        };
        match opened {
            Ok(s) => return s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn start_with_store(
    dir: &std::path::Path,
    conn: ConnectionConfig,
) -> (RunningServer, Arc<dyn MessageStore>) {
    start_on(Backend::Redb, dir, conn, Durability::Always).await
}

async fn start_with_durability(
    dir: &std::path::Path,
    conn: ConnectionConfig,
    durability: Durability,
) -> (RunningServer, Arc<dyn MessageStore>) {
    start_on(Backend::Redb, dir, conn, durability).await
}

async fn start_on(
    backend: Backend,
    dir: &std::path::Path,
    conn: ConnectionConfig,
    durability: Durability,
) -> (RunningServer, Arc<dyn MessageStore>) {
    let store = open(backend, dir, durability).await;
    let s = store.clone();
    let (server, _) = start_with(conn, WsSettings::default(), move |b| b.store(s)).await;
    (server, store)
}

/// Waits until `uid` has nothing stored (the server deletes replayed messages once written).
async fn eventually_empty(store: &Arc<dyn MessageStore>, uid: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.count(uid).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored messages of {uid} were never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn receipt_client(server: &RunningServer, uid: &str) -> TcpClient {
    let mut c = tcp(server).await;
    c.send(Frame::Sent(
        bind_body(uid, "android", "d").with("clientAck", "true"),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
    c
}

#[tokio::test]
async fn offline_messages_arrive_in_order_on_bind_then_live_ones() {
    offline_order(Backend::Redb).await;
}

#[tokio::test]
async fn offline_messages_arrive_in_order_on_bind_then_live_ones_sled() {
    offline_order(Backend::Sled).await;
}

async fn offline_order(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let conn = ConnectionConfig::default();
    let (server, store) = start_on(backend, dir.path(), conn, Durability::Always).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let sent = server
            .hub()
            .send(message_to("off", &format!("m{i}")))
            .await
            .unwrap();
        assert!(sent.stored && sent.delivered == 0);
        ids.push(sent.id);
    }
    assert_eq!(store.count("off").await.unwrap(), 300);
    let mut c = bound_tcp(&server, "off").await;
    for (i, id) in ids.iter().enumerate() {
        let m = c.message().await;
        assert_eq!((m.id, m.content.clone()), (*id, format!("m{i}")));
    }
    // A stock client does not acknowledge: once written, they are gone from the store.
    eventually_empty(&store, "off").await;
    assert_receives(&server, &mut c, "off", "live").await;
}

#[tokio::test]
async fn pushes_during_the_hand_over_are_neither_reordered_nor_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the pushes that arrive while the stored ones are written.
    let conn = ConnectionConfig {
        queue_capacity: 4096,
        ..ConnectionConfig::default()
    };
    let (server, _store) = start_with_store(dir.path(), conn).await;
    for i in 0..2000 {
        server
            .hub()
            .send(message_to("race", &format!("{i}")))
            .await
            .unwrap();
    }
    // Keep sending while the client binds; every message must arrive once, in order.
    let hub = server.hub().clone();
    let sender = tokio::spawn(async move {
        for i in 2000..4000 {
            hub.send(message_to("race", &format!("{i}"))).await.unwrap();
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut c = bound_tcp(&server, "race").await;
    sender.await.unwrap();
    for i in 0..4000 {
        let m = c.message().await;
        assert_eq!(
            m.content,
            i.to_string(),
            "out of order or duplicated at {i}"
        );
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    assert!(
        extra.is_err(),
        "duplicate after the last message: {extra:?}"
    );
}

#[tokio::test]
async fn receipts_mean_resend_until_acknowledged() {
    receipts_resend(Backend::Redb).await;
}

#[tokio::test]
async fn receipts_mean_resend_until_acknowledged_sled() {
    receipts_resend(Backend::Sled).await;
}

async fn receipts_resend(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let conn = ConnectionConfig::default();
    let (server, store) = start_on(backend, dir.path(), conn, Durability::Always).await;
    let mut c = receipt_client(&server, "rc").await;
    let first = server.hub().send(message_to("rc", "one")).await.unwrap();
    assert!(
        first.stored && first.delivered == 1,
        "stored before it is pushed"
    );
    let second = server.hub().send(message_to("rc", "two")).await.unwrap();
    assert_eq!(c.message().await.id, first.id);
    assert_eq!(c.message().await.id, second.id);
    assert_eq!(store.count("rc").await.unwrap(), 2);
    // Acknowledge the first only, then drop the connection: the second comes again.
    c.send(Frame::Sent(
        SentBody::new("client_ack").with("id", first.id.to_string()),
    ))
    .await;
    let r = c.reply().await;
    assert_eq!((r.code.as_str(), r.data.get("acked")), ("200", Some("1")));
    drop(c);
    let mut c = receipt_client(&server, "rc").await;
    let again = c.message().await;
    assert_eq!((again.id, again.content.as_str()), (second.id, "two"));
    c.send(Frame::Sent(
        SentBody::new("client_ack").with("id", second.id.to_string()),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
    assert_eq!(store.count("rc").await.unwrap(), 0);
    drop(c);
    // Nothing left to re-send.
    let mut c = receipt_client(&server, "rc").await;
    let nothing = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    assert!(nothing.is_err(), "{nothing:?}");
}

#[tokio::test]
async fn client_message_to_an_offline_account_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_with_store(dir.path(), ConnectionConfig::default()).await;
    let mut a = bound_tcp(&server, "sender").await;
    a.send(Frame::Sent(
        SentBody::new("client_message")
            .with("receiver", "away")
            .with("content", "while you were out"),
    ))
    .await;
    assert_eq!(a.reply().await.code, "200");
    let mut b = bound_tcp(&server, "away").await;
    let m = b.message().await;
    assert_eq!(
        (m.sender.as_str(), m.content.as_str()),
        ("sender", "while you were out")
    );
}

#[tokio::test]
async fn pull_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (server, store) = start_with_store(dir.path(), ConnectionConfig::default()).await;
    let mut c = receipt_client(&server, "pull").await;
    // Stored directly (as if from another node) after the bind hand-over.
    for i in 0..3 {
        store
            .append("pull", &message_to("pull", &format!("p{i}")))
            .await
            .unwrap();
    }
    c.send(Frame::Sent(SentBody::new("client_get_offline_message")))
        .await;
    let mut got = Vec::new();
    let mut reply = None;
    while got.len() < 3 || reply.is_none() {
        match c.next_data().await.unwrap() {
            Frame::Message(m) => got.push(m.content),
            Frame::Reply(r) => reply = Some(r),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ["p0", "p1", "p2"]);
    assert_eq!(reply.unwrap().data.get("count"), Some("3"));
    // A receipt client keeps them until it acknowledges.
    assert_eq!(store.count("pull").await.unwrap(), 3);
}

#[tokio::test]
async fn a_full_queue_stores_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let conn = ConnectionConfig {
        queue_capacity: 4,
        write_timeout: Duration::from_secs(30),
        ..ConnectionConfig::default()
    };
    let (server, store) = start_with_store(dir.path(), conn).await;
    let slow = bound_tcp(&server, "slow").await;
    let mut sent = Vec::new();
    let mut overflowed = false;
    for i in 0..200_000u32 {
        let s = server
            .hub()
            .send(message_to("slow", &format!("{i:06}-{}", "x".repeat(200))))
            .await
            .unwrap();
        sent.push(s);
        if s.stored {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the queue never filled");
    // Everything sent after the overflow is stored too (the connection is closing or gone).
    for i in 0..5 {
        let s = server
            .hub()
            .send(message_to("slow", &format!("after-{i}")))
            .await
            .unwrap();
        sent.push(s);
    }
    drop(slow);
    // Reconnect and read everything: each message arrives at least once... and here exactly
    // once, because what was written reached the socket and what was not is stored.
    let mut c = bound_tcp(&server, "slow").await;
    let _ = store;
    let mut seen = std::collections::HashSet::new();
    let last_id = sent.last().unwrap().id;
    let mut got_last = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got_last {
        assert!(tokio::time::Instant::now() < deadline);
        let m = c.message().await;
        seen.insert(m.id);
        got_last = m.id == last_id;
    }
    let stored: Vec<_> = sent.iter().filter(|s| s.stored).collect();
    assert!(!stored.is_empty());
    for s in stored {
        assert!(
            seen.contains(&s.id),
            "stored message {} never arrived",
            s.id
        );
    }
}

#[tokio::test]
async fn restart_with_pending_messages() {
    restart_pending(Backend::Redb).await;
}

#[tokio::test]
async fn restart_with_pending_messages_sled() {
    restart_pending(Backend::Sled).await;
}

async fn restart_pending(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let conn = ConnectionConfig::default();
        let (server, store) = start_on(backend, dir.path(), conn, Durability::Always).await;
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(
                server
                    .hub()
                    .send(message_to("later", &format!("{i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        server.shutdown(Duration::from_secs(5)).await;
        drop(store);
        ids
    };
    // The store lets go of its files a moment after the last handle.
    let store = open(backend, dir.path(), Durability::Always).await;
    let s = store.clone();
    let (server, _) = start_with(
        ConnectionConfig::default(),
        WsSettings::default(),
        move |b| b.store(s),
    )
    .await;
    let mut c = bound_tcp(&server, "later").await;
    for id in ids {
        assert_eq!(c.message().await.id, id);
    }
}

#[tokio::test]
async fn a_kept_slow_reader_gets_everything_once_in_order_when_it_catches_up() {
    kept_slow_reader(ConnectionConfig::default()).await;
}

/// The same, with a queue that holds exactly two batches (as the defaults' 1 024 hold four of
/// 256): the catching up is seen on the write that empties the queue, not on a later look at
/// it that nothing would wake (no parking, no heartbeat due within the test's wait).
#[tokio::test]
async fn a_kept_slow_reader_whose_queue_holds_whole_batches_catches_up() {
    kept_slow_reader(ConnectionConfig {
        max_batch: 4,
        park_after: Duration::ZERO,
        ..ConnectionConfig::default()
    })
    .await;
}

async fn kept_slow_reader(base: ConnectionConfig) {
    use cim_core::engine::SlowConsumer;
    let dir = tempfile::tempdir().unwrap();
    let conn = ConnectionConfig {
        queue_capacity: 8,
        write_timeout: Duration::from_secs(60),
        slow_consumer: SlowConsumer::Keep,
        ..base
    };
    // A tiny queue overflows again and again as the reader catches up; spare the test an
    // fsync per round.
    let (server, store) = start_with_durability(dir.path(), conn, Durability::Os).await;
    let mut c = bound_tcp(&server, "kept").await;
    // The client reads nothing while more than the kernel buffers and the queue hold is sent:
    // until a message is refused (and stored), then 200 more, and on until some stay stored
    // (the connection may catch up while the kernel's buffers still take its writes).
    let body = "y".repeat(4000);
    let mut total = 0;
    let mut after_overflow: Option<u32> = None;
    loop {
        assert!(total < 100_000, "nothing stayed stored");
        let s = server
            .hub()
            .send(message_to("kept", &format!("{total:05}{body}")))
            .await
            .unwrap();
        total += 1;
        after_overflow = match after_overflow {
            None if s.stored => Some(200),
            Some(n) => Some(n.saturating_sub(1)),
            None => None,
        };
        if after_overflow == Some(0) && store.count("kept").await.unwrap() > 0 {
            break;
        }
    }
    // Now it reads: every message, once, in order, on the same connection.
    for i in 0..total {
        let m = c.message().await;
        assert_eq!(&m.content[..5], format!("{i:05}"), "at {i}");
    }
    // Written ones are deleted once the replay is done.
    eventually_empty(&store, "kept").await;
    assert_receives(&server, &mut c, "kept", "still open").await;
}
