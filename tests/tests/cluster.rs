//! A cluster of real `cim-server` processes sharing a real `redis-server` (started by each test
//! on a free port, append-only file fsynced at every write, its own directory, killed by pid):
//! routing, the kick rule across nodes, stored messages, order during a replay, nodes killed,
//! node names and numbers taken. Redis restarted, down or emptied, inbox readers cut off,
//! broadcasts and tags, and dispatch are in `cluster_redis.rs`. Every wait is a bounded poll.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, Message, SentBody};
use common::cluster::*;
use common::process::*;
use common::*;

/// 1. Routed, not broadcast: the receiver on B, sent through A's HTTP API — B's connection gets
/// every message, C's inbox never sees one.
#[tokio::test]
async fn routed_to_the_receivers_node_only() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let c = node(&redis, "c", 3);
    let mut rx = bound(&b, "r1", "android", "p").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = send(a.addr("http"), "r1", &format!("m{i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        assert_eq!(
            (j["delivered"].as_u64(), j["stored"].as_bool()),
            (Some(1), Some(false))
        );
        ids.push(j["id"].as_str().unwrap().parse::<i64>().unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let m = next_message(&mut rx).await.unwrap();
        assert_eq!((m.id, m.content), (*id, format!("m{i}")));
    }
    assert!(inbox_added(&redis, &nid_of(&redis, "b")) >= 1);
    assert_eq!(inbox_added(&redis, &nid_of(&redis, "c")), 0);
    assert_eq!(inbox_added(&redis, &nid_of(&redis, "a")), 0);
    drop(c);
}

/// 2. The kick rule across nodes, case by case.
#[tokio::test]
async fn the_kick_rule_holds_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    // Another device of the same class: `999` with the new device's name, then closed.
    let mut first = bound(&a, "k1", "android", "one").await;
    let _second = bound(&b, "k1", "ios", "two").await;
    let seen = first.expect_closed().await;
    let kicks: Vec<&Message> = seen
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(kicks.len(), 1, "{seen:?}");
    assert_eq!(
        (kicks[0].action.as_str(), kicks[0].content.as_str()),
        ("999", "two-name")
    );
    assert_eq!(
        sessions_of(&a, "k1").await,
        [("b".into(), "ios".into(), "two".into())]
    );
    // The same device again: closed silently.
    let mut old = bound(&a, "k2", "android", "same").await;
    let _new = bound(&b, "k2", "android", "same").await;
    let seen = old.expect_closed().await;
    assert!(
        !seen.iter().any(|f| matches!(f, Frame::Message(_))),
        "closed silently, got {seen:?}"
    );
    assert_eq!(
        sessions_of(&b, "k2").await,
        [("b".into(), "android".into(), "same".into())]
    );
    // Web tabs of one browser, and channels of different classes, are kept.
    let mut tab1 = bound(&a, "k3", "web", "browser").await;
    let mut tab2 = bound(&b, "k3", "web", "browser").await;
    let mut phone = bound(&b, "k3", "android", "phone").await;
    let id = send_ok(a.addr("http"), "k3", "to all").await;
    for c in [&mut tab1, &mut tab2, &mut phone] {
        assert_eq!(next_message(c).await.unwrap().id, id);
    }
    assert_eq!(sessions_of(&a, "k3").await.len(), 3);
    // The session list and the kick of the HTTP API cover every node.
    let r = http(a.addr("http"), "GET", "/api/v1/sessions?limit=10", &[], "").await;
    assert_eq!(r.json()["total"], 5, "{r:?}");
    let r = http(
        b.addr("http"),
        "GET",
        "/api/v1/sessions?channel=web",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["total"], 2, "{r:?}");
    let r = http(
        a.addr("http"),
        "DELETE",
        "/api/v1/accounts/k3/sessions",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["kicked"], 3, "{r:?}");
    for c in [&mut tab1, &mut tab2, &mut phone] {
        let seen = c.expect_closed().await;
        assert!(
            seen.iter()
                .any(|f| matches!(f, Frame::Message(m) if m.action == "999")),
            "{seen:?}"
        );
    }
    assert!(sessions_of(&b, "k3").await.is_empty());
}

/// 3. Offline, then a bind on another node: delivered once, in order; with receipts, sent again
/// after a rebind elsewhere until acknowledged, then gone.
#[tokio::test]
async fn stored_messages_follow_the_account_to_any_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = send(a.addr("http"), "off", &format!("s{i}")).await;
        assert_eq!(r.json()["stored"], true, "{r:?}");
        ids.push(r.json()["id"].as_str().unwrap().parse::<i64>().unwrap());
    }
    let mut c = bound(&b, "off", "android", "p").await;
    for (i, id) in ids.iter().enumerate() {
        let m = next_message(&mut c).await.unwrap();
        assert_eq!((m.id, m.content), (*id, format!("s{i}")));
    }
    nothing_else(&mut c, "off", a.addr("http")).await;
    let pending = |p: SocketAddr| async move {
        http(p, "GET", "/api/v1/accounts/off/pending", &[], "")
            .await
            .json()["pending"]
            .clone()
    };
    eventually(
        "the replayed messages are deleted",
        Duration::from_secs(5),
        || async { pending(a.addr("http")).await == 0 },
    )
    .await;
    drop(c);

    // Receipts: bound on A, messages pushed and kept; the client leaves without acknowledging.
    let ack_bind = |dev: &str| bind_body("rc", "android", dev).with("clientAck", "true");
    let mut c = client(&a).await;
    c.send(Frame::Sent(ack_bind("d"))).await;
    assert_eq!(c.reply().await.code, "200");
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = send(b.addr("http"), "rc", &format!("r{i}")).await;
        assert_eq!(
            (r.json()["delivered"].as_u64(), r.json()["stored"].as_bool()),
            (Some(1), Some(true))
        );
        ids.push(r.json()["id"].as_str().unwrap().parse::<i64>().unwrap());
    }
    for id in &ids {
        assert_eq!(next_message(&mut c).await.unwrap().id, *id);
    }
    drop(c);
    eventually("the session is gone", Duration::from_secs(5), || async {
        sessions_of(&b, "rc").await.is_empty()
    })
    .await;
    // A rebind on B gets them again, acknowledges them, and they are gone.
    let mut c = client(&b).await;
    c.send(Frame::Sent(ack_bind("d"))).await;
    assert_eq!(c.reply().await.code, "200");
    for id in &ids {
        assert_eq!(next_message(&mut c).await.unwrap().id, *id);
    }
    c.send(Frame::Sent(
        SentBody::new("client_ack").with("id", ids[2].to_string()),
    ))
    .await;
    let r = c.reply().await;
    assert_eq!(
        (r.code.as_str(), r.data.get("acked")),
        ("200", Some("3")),
        "{r:?}"
    );
    drop(c);
    eventually("the session is gone", Duration::from_secs(5), || async {
        sessions_of(&a, "rc").await.is_empty()
    })
    .await;
    let mut c = client(&a).await;
    c.send(Frame::Sent(ack_bind("d"))).await;
    assert_eq!(c.reply().await.code, "200");
    let marker = send_ok(b.addr("http"), "rc", "marker").await;
    assert_eq!(next_message(&mut c).await.unwrap().id, marker);
}

/// 4. Order during a replay: 200 stored, then live sends while a bind on another node replays
/// them — the client sees send order, without duplicates.
#[tokio::test]
async fn a_replay_keeps_send_order_with_live_sends() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let h = a.addr("http");
    let batch: Vec<_> = (0..200)
        .map(|i| serde_json::json!({ "receiver": "ord", "content": i.to_string() }))
        .collect();
    let r = http(
        h,
        "POST",
        "/api/v1/messages/batch",
        &[JSON],
        &serde_json::json!({ "messages": batch }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let live = tokio::spawn(async move {
        let mut started = Some(started_tx);
        for i in 200..400 {
            send_ok(h, "ord", &i.to_string()).await;
            if i == 210
                && let Some(s) = started.take()
            {
                let _ = s.send(());
            }
        }
    });
    started_rx.await.unwrap();
    let mut c = bound(&b, "ord", "android", "p").await;
    live.await.unwrap();
    for want in 0..400 {
        let m = next_message(&mut c).await.unwrap();
        assert_eq!(m.content, want.to_string());
    }
    nothing_else(&mut c, "ord", h).await;
}

/// 5. A node killed with `kill -9`: its sessions vanish from every node's view within the
/// deadline, dispatch stops naming it, a rebind elsewhere works at once.
#[tokio::test]
async fn a_killed_nodes_sessions_vanish() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut c = node(&redis, "c", 3);
    let _held = bound(&c, "v1", "android", "p").await;
    for p in [&a, &b] {
        assert_eq!(
            sessions_of(p, "v1").await,
            [("c".into(), "android".into(), "p".into())]
        );
    }
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    // The bound: the deadline, one heartbeat, and slack for a loaded machine.
    let bound_in = Duration::from_millis(DEADLINE_MS + 100) + Duration::from_secs(3);
    for p in [&a, &b] {
        eventually("the dead node's sessions vanish", bound_in, || async {
            sessions_of(p, "v1").await.is_empty()
        })
        .await;
    }
    for _ in 0..20 {
        let d = dispatch(&a).await;
        assert_ne!(d["node"], "c", "{d}");
    }
    let mut again = bound(&b, "v1", "android", "p").await;
    let id = send_ok(a.addr("http"), "v1", "after").await;
    assert_eq!(next_message(&mut again).await.unwrap().id, id);
}

/// 6. A node killed with `kill -9` while 1000 numbered messages are sent through another: every
/// send answered 200 is received (duplicates allowed, counted). The receiver reads nothing until
/// its node is killed, and the messages are large, so that the node dies with messages it took
/// from its inbox still queued (not yet written): they must come back through the reaper.
#[tokio::test]
async fn nothing_answered_is_lost_when_the_receivers_node_dies() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let mut b = node(&redis, "b", 2);
    let c = node(&redis, "c", 3);
    let rx = bound(&b, "many", "android", "p").await;
    let h = a.addr("http");
    let (want_tx, want_rx) = tokio::sync::watch::channel(None);
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let filler = "x".repeat(32 * 1024);
    let sender = tokio::spawn(async move {
        let mut answered = Vec::new();
        let mut half = Some(half_tx);
        for i in 0..1000 {
            let r = send(h, "many", &format!("{i} {filler}")).await;
            if r.status == 200 {
                answered.push(r.json()["id"].as_str().unwrap().parse::<i64>().unwrap());
            }
            if i == 300
                && let Some(t) = half.take()
            {
                let _ = t.send(());
            }
        }
        let n = answered.len();
        want_tx.send_replace(Some(answered));
        n
    });
    half_rx.await.unwrap();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let collector = tokio::spawn({
        let rebind = c.addr("tcp");
        async move { collect_across_rebind(rx, rebind, "many", want_rx).await }
    });
    let answered = sender.await.unwrap();
    let got = match collector.await {
        Ok(got) => got,
        Err(e) => {
            for l in c.stderr.try_iter().chain(a.stderr.try_iter()) {
                if !l.contains("DEBUG") {
                    eprintln!("LOG {l}");
                }
            }
            panic!("{e}");
        }
    };
    assert_eq!(answered, 1000, "node a answered every send");
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!("received {} distinct, {duplicates} duplicates", got.len());
}

/// A second node with the name or the number of a live node is refused, saying why.
#[tokio::test]
async fn a_taken_name_or_number_is_refused() {
    let redis = RedisServer::start();
    let _a = node(&redis, "a", 1);
    let url = redis.url();
    for (name, id) in [("a", "2"), ("z", "1")] {
        let mut env: Vec<(String, String)> = free_ports();
        for (k, v) in [
            ("CIM_CLUSTER__REDIS", url.as_str()),
            ("CIM_NODE", name),
            ("CIM_NODE_ID", id),
            ("PATH", &std::env::var("PATH").unwrap_or_default()),
        ] {
            env.push((k.into(), v.into()));
        }
        let dir = tempfile::tempdir().unwrap();
        env.push(("CIM_STORE__PATH".into(), dir.path().display().to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, _, err) = run_once(&[], &env);
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains("cannot join the cluster") && err.contains("\"a\""),
            "{err}"
        );
    }
}

/// A burst of `client_message` requests from one connection is routed as one batch: every reply
/// comes back in order with its `requestId`, and the receiver on the other node gets every
/// message in send order.
#[tokio::test]
async fn a_burst_of_client_messages_crosses_nodes_in_order() {
    use bytes::BytesMut;
    use cim_core::StreamCodec;
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut rx = bound(&b, "burst-rx", "android", "p").await;
    let mut tx = bound(&a, "burst-tx", "web", "w").await;
    let mut out = BytesMut::new();
    let mut codec = BinaryCodec::new();
    for i in 0..300 {
        let body = SentBody::new("client_message")
            .with("receiver", "burst-rx")
            .with("content", i.to_string())
            .with("requestId", format!("r{i}"));
        codec.encode(&Frame::Sent(body), &mut out).unwrap();
    }
    tx.send_raw(&out).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let r = tx.reply().await;
        assert_eq!(
            (r.code.as_str(), r.data.get("requestId")),
            ("200", Some(format!("r{i}").as_str())),
            "{r:?}"
        );
        ids.push(r.data.get("messageId").unwrap().parse::<i64>().unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let m = next_message(&mut rx).await.unwrap();
        assert_eq!((m.id, m.content), (*id, i.to_string()));
        assert_eq!(m.sender, "burst-tx");
    }
}
