//! A batch of sends larger than one script call, refused by Redis part way (out of memory, on a
//! real redis-server): the messages of the calls that went through are reported sent, and
//! only the others refused, so that a sender sends again only what was not sent.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_cluster::{Cluster, ClusterConfig};
use cim_core::Message;
use cim_core::engine::SharedMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_part_way_reports_what_was_sent() {
    let redis = RedisServer::start();
    let mut config = ClusterConfig::new(redis.url(), "node-0", 0);
    config.prefix = "b:".into();
    let cluster = Cluster::connect(config).await.unwrap();
    let sessions = cluster.sessions();
    sessions.start().await.unwrap();
    let router = cluster.router();

    // 600 messages of 4 KiB to accounts with no connection: each is stored. One script call
    // takes 256 of them, about 1 MiB of arguments and 1 MiB stored. With room for 1.5 MiB
    // more, the first call starts under the limit (its arguments in memory) and ends over it
    // (its messages stored): the second is refused, and so the third.
    let content = "x".repeat(4096);
    let messages: Vec<Arc<SharedMessage>> = (0..600)
        .map(|i| {
            Arc::new(SharedMessage::new(Message {
                id: i + 1,
                action: "2".into(),
                sender: "system".into(),
                receiver: format!("u{i}"),
                content: content.clone(),
                ..Message::default()
            }))
        })
        .collect();
    let limit = redis.used_memory() + 1536 * 1024;
    assert!(
        redis
            .command(&format!("CONFIG SET maxmemory {limit}"))
            .starts_with("+OK")
    );
    let results = router.send_many(messages).await;
    redis.command("CONFIG SET maxmemory 0");

    assert_eq!(results.len(), 600);
    let sent = results.iter().take_while(|r| r.is_ok()).count();
    assert_eq!(sent, 256, "the first call's messages, and only those");
    for r in &results[..sent] {
        assert!(r.as_ref().unwrap().stored);
    }
    for r in &results[sent..] {
        let e = r.as_ref().unwrap_err().to_string();
        assert!(e.contains("OOM") || e.contains("maxmemory"), "{e}");
    }
    // What was reported sent is stored, and nothing else.
    let store = cluster.store();
    for (i, expected) in [(0, 1), (255, 1), (256, 0), (599, 0)] {
        let stored = tokio::time::timeout(Duration::from_secs(5), store.count(&format!("u{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored, expected, "u{i}");
    }
}
