//! Measures how long a client waits for its pending messages: 10 000 messages are stored for an
//! offline account, then a raw TCP client binds and reads until it has them all. Each store
//! backend is measured in the same run.
//!
//! ```sh
//! cargo run --release -p cim-server --example replay_bench            # 10 000 messages
//! cargo run --release -p cim-server --example replay_bench -- 50000   # another count
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use cim_codec_binary::BinaryCodec;
use cim_core::StreamCodec;
use cim_core::engine::MessageStore;
use cim_core::{Frame, Message, SentBody};
use cim_server::{Listener, Server};
use cim_store::{Durability, RedbStore, SledStore, StoreOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn run(name: &str, store: Arc<dyn MessageStore>, n: usize) {
    let server = Server::builder()
        .listener(Listener::binary("127.0.0.1:0".parse().unwrap()))
        .store(Arc::clone(&store))
        .start()
        .await
        .unwrap();
    let addr = server.addr("tcp").unwrap();
    for i in 0..n {
        let m = Message {
            action: "2".into(),
            sender: "system".into(),
            receiver: "offline".into(),
            content: format!("{i:08}{}", "x".repeat(92)),
            format: "txt".into(),
            ..Message::default()
        };
        let sent = server.hub().send(m).await.unwrap();
        assert!(sent.stored);
    }
    assert_eq!(store.count("offline").await.unwrap(), n);

    let mut codec = BinaryCodec::default();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let bind = SentBody::new("client_bind")
        .with("uid", "offline")
        .with("channel", "android")
        .with("deviceId", "bench");
    let mut out = BytesMut::new();
    codec.encode(&Frame::Sent(bind), &mut out).unwrap();
    let start = Instant::now();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut got = 0;
    while got < n {
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            if let Frame::Message(m) = frame {
                assert_eq!(&m.content[..8], format!("{got:08}"), "out of order");
                got += 1;
            }
        }
        if got < n {
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
        }
    }
    let all = start.elapsed();
    println!(
        "{name}: {n} pending messages delivered on bind in {:.1} ms ({:.0} msgs/s)",
        all.as_secs_f64() * 1e3,
        n as f64 / all.as_secs_f64()
    );
    // Written messages are deleted (the client does not use receipts).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while store.count("offline").await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "replayed messages were not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::main]
async fn main() {
    let n = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a message count"));
    let cap = n.max(1_000);
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbStore::open(dir.path(), StoreOptions::new(Durability::Always, cap)).unwrap();
        run(&format!("round {round}, redb"), Arc::new(redb), n).await;
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path(), StoreOptions::new(Durability::Always, cap)).unwrap();
        run(&format!("round {round}, sled"), Arc::new(sled), n).await;
        let memory = cim_core::engine::MemoryStore::new(cap);
        run(&format!("round {round}, memory"), Arc::new(memory), n).await;
    }
}
