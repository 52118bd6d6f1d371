//! A cluster of real `cim-server` processes sharing a real `redis-server` (started by each test
//! on a free port, append-only file fsynced at every write, its own directory, killed by pid):
//! routing, the kick rule across nodes, stored messages, order during a replay, nodes and Redis
//! killed, Redis down or restarted empty, inbox readers cut off, broadcasts and tags, dispatch.
//! Every wait is a bounded poll.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, Message, SentBody};
use common::cluster::*;
use common::process::*;
use common::*;
use tokio::time::Instant;

/// A synchronous connection to the test's Redis, for looking at keys.
fn redis_conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// The registered node id of the node named `name`.
fn nid_of(redis: &RedisServer, name: &str) -> String {
    let mut c = redis_conn(redis);
    let nids: Vec<String> = redis::cmd("ZRANGE")
        .arg("cim:nodes")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    nids.into_iter()
        .find(|n| n.split('#').next() == Some(name))
        .unwrap_or_else(|| panic!("node {name} is not registered"))
}

/// How many entries were ever added to a node's inbox (0 when it never had one).
fn inbox_added(redis: &RedisServer, nid: &str) -> i64 {
    let mut c = redis_conn(redis);
    let info: redis::RedisResult<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(format!("cim:n:{nid}:in"))
        .query(&mut c);
    match info {
        Ok(map) => match map.get("entries-added") {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XINFO entries-added: {other:?}"),
        },
        Err(e) if e.to_string().contains("no such key") => 0,
        Err(e) => panic!("XINFO: {e}"),
    }
}

/// The next message on `c` (PINGs skipped, and answered so the connection stays up).
async fn next_message(c: &mut TcpClient) -> Option<Message> {
    loop {
        match c.next().await? {
            Frame::Message(m) => return Some(m),
            Frame::Ping => c.send(Frame::Pong).await,
            _ => {}
        }
    }
}

/// Proves that nothing else was queued to `c`: a marker sent now through `via` is the next
/// message it gets.
async fn nothing_else(c: &mut TcpClient, uid: &str, via: SocketAddr) {
    let id = send_ok(via, uid, "marker").await;
    let m = next_message(c).await.expect("the marker");
    assert_eq!(
        (m.id, m.content.as_str()),
        (id, "marker"),
        "{uid} got {m:?}"
    );
}

/// Sends until a send is answered 200 (bounded): while Redis comes back, a send may be
/// refused with 503, never answered otherwise. Returns the id.
async fn send_until_ok(h: SocketAddr, to: &str, content: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(h, to, content).await;
        assert!(r.status == 200 || r.status == 503, "{r:?}");
        if r.status == 200 {
            return r.json()["id"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "sends never succeeded again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tag_push(h: SocketAddr, content: &str) -> u64 {
    let r = http(
        h,
        "POST",
        "/api/v1/tags/grp/messages",
        &[JSON],
        &format!(r#"{{"content":"{content}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["delivered"].as_u64().unwrap()
}

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

/// Collects messages for `uid` from `conn`, and — once it is cut off — from a connection bound
/// on `rebind`, until every id the sender reports (`want`, set once it is done) arrived.
/// Returns how many copies of each id came.
async fn collect_across_rebind(
    mut conn: TcpClient,
    rebind: SocketAddr,
    uid: &str,
    want: tokio::sync::watch::Receiver<Option<Vec<i64>>>,
) -> HashMap<i64, usize> {
    let mut got: HashMap<i64, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(all) = &*want.borrow()
            && all.iter().all(|id| got.contains_key(id))
        {
            return got;
        }
        if Instant::now() >= deadline {
            let missing: Vec<usize> = want.borrow().as_ref().map_or_else(Vec::new, |all| {
                all.iter()
                    .enumerate()
                    .filter(|(_, id)| !got.contains_key(id))
                    .map(|(i, _)| i)
                    .collect()
            });
            panic!(
                "{} messages missing (by send index, first and last: {:?} {:?})",
                missing.len(),
                missing.first(),
                missing.last()
            );
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.next()).await {
            Ok(Some(Frame::Message(m))) => *got.entry(m.id).or_default() += 1,
            Ok(Some(Frame::Ping)) => conn.send(Frame::Pong).await,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => {
                // Cut off: bind again elsewhere.
                conn = StreamClient::connect(rebind, BinaryCodec::new()).await;
                conn.bind(uid, "android", "p").await;
            }
        }
    }
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

/// 7. Redis killed with `kill -9` and started again on the same directory: nothing lost, no
/// live node reaped, sending resumes without restarting a node.
#[tokio::test]
async fn a_redis_restart_loses_nothing() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut rx = bound(&b, "rk", "android", "p").await;
    for i in 0..20 {
        send_ok(a.addr("http"), "rk-off", &i.to_string()).await;
    }
    let id = send_ok(a.addr("http"), "rk", "before").await;
    assert_eq!(next_message(&mut rx).await.unwrap().id, id);
    let nids = (nid_of(&redis, "a"), nid_of(&redis, "b"));
    redis.restart();
    // The nodes beat again (had Redis been down past the deadline, a send meanwhile would be
    // stored, for the next bind, rather than routed).
    let h = a.addr("http");
    eventually("node b is live again", Duration::from_secs(10), || async {
        let r = http(h, "GET", "/api/v1/accounts/rk/sessions", &[], "").await;
        r.status == 200 && r.json().as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    // Sending resumes: a send may still meet the reconnection (503), never a silent loss.
    let resumed = send_until_ok(h, "rk", "after").await;
    assert_eq!(next_message(&mut rx).await.unwrap().id, resumed);
    assert_eq!(
        (nid_of(&redis, "a"), nid_of(&redis, "b")),
        nids,
        "no node re-registered"
    );
    assert_eq!(
        sessions_of(&a, "rk").await,
        [("b".into(), "android".into(), "p".into())]
    );
    let r = http(h, "GET", "/api/v1/accounts/rk-off/pending", &[], "").await;
    assert_eq!(r.json()["pending"], 20, "{r:?}");
    let mut off = bound(&b, "rk-off", "android", "p").await;
    for i in 0..20 {
        assert_eq!(next_message(&mut off).await.unwrap().content, i.to_string());
    }
    // No node was reaped meanwhile.
    for p in [&a, &b] {
        let log: Vec<String> = p.stderr.try_iter().collect();
        assert!(!log.iter().any(|l| l.contains("reaped")), "{log:?}");
    }
}

/// 8. Redis down: sends answer 503, never 200; once it is back they succeed again.
#[tokio::test]
async fn sends_answer_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let mut rx = bound(&a, "down", "android", "p").await;
    let mut sender = bound(&a, "sender", "web", "w").await;
    redis.kill();
    for i in 0..10 {
        let r = send(a.addr("http"), "down", &i.to_string()).await;
        let reason = r.json_error(503);
        assert!(reason.contains("redis"), "{reason}");
    }
    // A client's own send gets 503 too.
    sender
        .send(Frame::Sent(
            SentBody::new("client_message")
                .with("receiver", "down")
                .with("content", "x"),
        ))
        .await;
    let r = sender.reply().await;
    assert_eq!(r.code, "503", "{r:?}");
    redis.restart();
    let h = a.addr("http");
    eventually(
        "the node is live again",
        Duration::from_secs(10),
        || async {
            let r = http(h, "GET", "/api/v1/accounts/down/sessions", &[], "").await;
            r.status == 200 && r.json().as_array().is_some_and(|s| s.len() == 1)
        },
    )
    .await;
    let id = send_until_ok(h, "down", "back").await;
    assert_eq!(next_message(&mut rx).await.unwrap().id, id);
}

/// 9. Redis restarted empty: detected and logged as an error; every node registers again and
/// asserts its sessions again, yielding to a newer bind; routing works again.
#[tokio::test]
async fn a_redis_that_came_back_empty_is_repopulated() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut on_b = bound(&b, "e1", "android", "old").await;
    let mut stays = bound(&b, "e2", "android", "p").await;
    redis.restart_empty();
    // A newer bind of e1 from another android device, while the nodes recover.
    let mut newer = bound(&a, "e1", "android", "new").await;
    let seen = on_b.expect_closed().await;
    assert!(
        seen.iter().any(
            |f| matches!(f, Frame::Message(m) if m.action == "999" && m.content == "new-name")
        ),
        "the older session yields with the kick notice: {seen:?}"
    );
    eventually(
        "sessions are asserted again",
        Duration::from_secs(10),
        || async { sessions_of(&a, "e2").await == [("b".into(), "android".into(), "p".into())] },
    )
    .await;
    assert_eq!(
        sessions_of(&b, "e1").await,
        [("a".into(), "android".into(), "new".into())]
    );
    let id = send_ok(a.addr("http"), "e2", "routed").await;
    assert_eq!(next_message(&mut stays).await.unwrap().id, id);
    let id = send_ok(b.addr("http"), "e1", "routed").await;
    assert_eq!(next_message(&mut newer).await.unwrap().id, id);
    for p in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = p
                .stderr
                .recv_timeout(Duration::from_millis(100))
                .unwrap_or_default();
            if line.contains("ERROR") && line.contains("redis lost the cluster's data") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the loss was not logged as an error"
            );
        }
    }
}

/// 10. The inbox readers' connections killed with `CLIENT KILL` again and again while sending:
/// nothing lost.
#[tokio::test]
async fn readers_cut_off_lose_nothing() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let rx = bound(&b, "ck", "android", "p").await;
    let h = a.addr("http");
    let (want_tx, want_rx) = tokio::sync::watch::channel(None);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let url = redis.url();
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut killed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
                for line in list.lines().filter(|l| l.contains("name=cim-inbox-")) {
                    let id = line
                        .split(' ')
                        .find_map(|f| f.strip_prefix("id="))
                        .unwrap()
                        .to_owned();
                    let n: i64 = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(id)
                        .query(&mut c)
                        .unwrap_or(0);
                    killed += n;
                }
                std::thread::sleep(Duration::from_millis(15));
            }
            killed
        })
    };
    let sender = tokio::spawn(async move {
        let mut answered = Vec::new();
        for i in 0..500 {
            answered.push(send_ok(h, "ck", &i.to_string()).await);
        }
        want_tx.send_replace(Some(answered));
    });
    let got = collect_across_rebind(rx, b.addr("tcp"), "ck", want_rx).await;
    sender.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.join().unwrap();
    assert!(killed >= 5, "the readers were cut off {killed} times only");
    assert_eq!(got.len(), 500);
}

/// 11. A broadcast reaches every connection on every node once; a tag push exactly the tagged
/// ones; after the tag is removed, none.
#[tokio::test]
async fn broadcasts_and_tags_cross_nodes() {
    let redis = RedisServer::start();
    let nodes = [
        node(&redis, "a", 1),
        node(&redis, "b", 2),
        node(&redis, "c", 3),
    ];
    let mut clients = Vec::new();
    for (i, p) in nodes.iter().enumerate() {
        for j in 0..2 {
            let uid = format!("bt{i}{j}");
            clients.push((uid.clone(), bound(p, &uid, "android", "p").await));
        }
    }
    let h = nodes[0].addr("http");
    let r = http(
        h,
        "POST",
        "/api/v1/broadcast",
        &[JSON],
        r#"{"content":"all"}"#,
    )
    .await;
    assert_eq!(r.json()["delivered"], 6, "{r:?}");
    for (uid, c) in &mut clients {
        assert_eq!(next_message(c).await.unwrap().content, "all");
        nothing_else(c, uid, h).await;
    }
    // Tag one client on the first node and one on the last.
    for k in [0, 5] {
        let c = &mut clients[k].1;
        c.send(Frame::Sent(
            SentBody::new("client_set_tag").with("tag", "grp"),
        ))
        .await;
        assert_eq!(c.reply().await.code, "200");
    }
    let via = nodes[1].addr("http");
    assert_eq!(tag_push(via, "tagged").await, 2);
    for (k, (uid, c)) in clients.iter_mut().enumerate() {
        if k == 0 || k == 5 {
            assert_eq!(next_message(c).await.unwrap().content, "tagged");
        }
        nothing_else(c, uid, h).await;
    }
    for k in [0, 5] {
        let c = &mut clients[k].1;
        c.send(Frame::Sent(
            SentBody::new("client_remove_tag").with("tag", "grp"),
        ))
        .await;
        assert_eq!(c.reply().await.code, "200");
    }
    assert_eq!(tag_push(via, "untagged").await, 0);
    for (uid, c) in &mut clients {
        nothing_else(c, uid, h).await;
    }
}

/// 12. Dispatch prefers the least loaded, spreads a burst over the two least loaded, and never
/// names a draining or a dead node.
#[tokio::test]
async fn dispatch_picks_among_the_least_loaded_live_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let mut b = node(&redis, "b", 2);
    let c = node(&redis, "c", 3);
    let mut held = Vec::new();
    // Loads 25, 2 and 0: 16 picks (each reserving a slot) never lift b or c to a's load.
    for i in 0..25 {
        held.push(bound(&a, &format!("la{i}"), "android", "p").await);
    }
    for i in 0..2 {
        held.push(bound(&b, &format!("lb{i}"), "android", "p").await);
    }
    let mut named: HashMap<String, usize> = HashMap::new();
    for _ in 0..16 {
        let d = dispatch(&a).await;
        let node = d["node"].as_str().unwrap().to_owned();
        let want = match node.as_str() {
            "b" => &b,
            "c" => &c,
            other => panic!("dispatch named {other}, not one of the two least loaded"),
        };
        assert_eq!(d["tcp"], want.addr("tcp").to_string(), "{d}");
        assert_eq!(d["websocket"], want.addr("websocket").to_string(), "{d}");
        assert_eq!(d["http"], want.addr("http").to_string(), "{d}");
        *named.entry(node).or_default() += 1;
    }
    assert_eq!(named.len(), 2, "the burst spread over both: {named:?}");
    // Draining: never named.
    let r = http(
        c.addr("http"),
        "POST",
        "/api/v1/drain",
        &[JSON],
        r#"{"draining":true}"#,
    )
    .await;
    assert_eq!(r.json()["draining"], true, "{r:?}");
    for _ in 0..20 {
        assert_ne!(dispatch(&a).await["node"], "c");
    }
    // Dead: never named once its deadline passed.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    eventually(
        "the dead node's sessions vanish",
        Duration::from_secs(5),
        || async { sessions_of(&a, "lb0").await.is_empty() },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(dispatch(&a).await["node"], "a");
    }
    // Back from draining.
    let r = http(
        c.addr("http"),
        "POST",
        "/api/v1/drain",
        &[JSON],
        r#"{"draining":false}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let mut seen = Vec::new();
    for _ in 0..16 {
        seen.push(dispatch(&a).await["node"].as_str().unwrap().to_owned());
    }
    assert!(seen.iter().any(|n| n == "c"), "{seen:?}");
}

/// A node killed with `kill -9` leaves dispatch once it has missed two heartbeats, long before
/// its deadline passes: a reconnect storm after its death does not keep landing on it. And a
/// client that names the node it lost (`?avoid=`) is sent elsewhere at once.
#[tokio::test]
async fn dispatch_passes_over_a_node_that_missed_its_heartbeats() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    // Its deadline is ten minutes: only its silence can take it out of dispatch.
    let mut b = node_with(
        &redis,
        "b",
        2,
        &[("CIM_CLUSTER__NODE_DEADLINE_MS", "600000")],
    );
    let mut held = Vec::new();
    for i in 0..100 {
        held.push(bound(&a, &format!("la{i}"), "android", "p").await);
    }
    let _on_b = bound(&b, "lb", "android", "p").await;
    // The client that just lost b (or could not reach it) asks to pass over it.
    let r = http(a.addr("http"), "GET", "/api/v1/dispatch?avoid=b", &[], "").await;
    assert_eq!(r.json()["node"], "a", "{r:?}");
    assert_eq!(dispatch(&a).await["node"], "b", "the least loaded");
    let b_nid = nid_of(&redis, "b");
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    eventually(
        "dispatch passes over b",
        Duration::from_secs(10),
        || async {
            let mut named = Vec::new();
            for _ in 0..10 {
                named.push(dispatch(&a).await["node"].as_str().unwrap().to_owned());
            }
            named.iter().all(|n| n == "a")
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(dispatch(&a).await["node"], "a");
    }
    // Not reaped: its deadline is still far off, so its session is still listed.
    assert_eq!(sessions_of(&a, "lb").await.len(), 1);
    // And still by far the least loaded (its session and the slots reserved on it while it was
    // named): by load alone dispatch would name it.
    let mut r = redis_conn(&redis);
    let load: f64 = redis::cmd("ZSCORE")
        .arg("cim:load")
        .arg(&b_nid)
        .query(&mut r)
        .unwrap();
    assert!(load + 1.0 < 100.0, "b's load {load}");
}

/// On one node, dispatch names the node itself.
#[tokio::test]
async fn a_single_node_dispatches_to_itself() {
    let p = ServerProcess::start(&[("CIM_NODE", "solo")]);
    let d = dispatch(&p).await;
    assert_eq!(d["node"], "solo");
    assert_eq!(d["tcp"], p.addr("tcp").to_string());
    assert_eq!(d["websocket"], p.addr("websocket").to_string());
    assert_eq!(d["http"], p.addr("http").to_string());
    // Asked to pass over itself, the only node still names itself.
    let h = p.addr("http");
    let r = http(h, "GET", "/api/v1/dispatch?avoid=solo", &[], "").await;
    assert_eq!(
        (r.status, r.json()["node"].as_str()),
        (200, Some("solo")),
        "{r:?}"
    );
    // `avoid` is a node name: 64 bytes at most, of letters, digits, '.', '_' and '-'.
    let longest = "n".repeat(64);
    let r = http(
        h,
        "GET",
        &format!("/api/v1/dispatch?avoid={longest}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    for bad in ["n".repeat(65), "a%20b".to_owned(), String::new()] {
        let reason = http(h, "GET", &format!("/api/v1/dispatch?avoid={bad}"), &[], "")
            .await
            .json_error(400);
        assert!(reason.contains("is not a node name"), "{bad:?}: {reason}");
    }
    http(h, "GET", "/api/v1/dispatch?zone=eu", &[], "")
        .await
        .json_error(400);
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

/// A node whose Redis cannot be reached does not start, and says which key and why.
#[test]
fn an_unreachable_redis_stops_start_up_naming_the_key() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let store = dir.path().display().to_string();
    let mut env: Vec<(String, String)> = free_ports();
    env.extend(
        [
            ("CIM_CLUSTER__REDIS", url.as_str()),
            ("CIM_STORE__PATH", store.as_str()),
            ("PATH", path.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, err) = run_once(&[], &env);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cluster.redis") && err.contains(&url), "{err}");
}
