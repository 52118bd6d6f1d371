//! A cluster of real `cim-server` processes sharing a real `redis-server` (started by each test
//! on a free port, append-only file fsynced at every write, its own directory, killed by pid),
//! and what Redis does to it: Redis killed and restarted, down, or restarted empty; inbox readers
//! cut off; broadcasts and tags across nodes; dispatch. The numbered tests continue the list of
//! `cluster.rs`. Every wait is a bounded poll.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_core::{Frame, SentBody};
use common::cluster::*;
use common::process::*;
use common::*;
use tokio::time::Instant;

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

/// A batch Redis refuses part way (out of memory after its first 256 messages, one script
/// call): the answer names the first message not sent and says the ones before it were; those
/// are stored, the others not, so a client sends again only the rest.
#[tokio::test]
async fn a_batch_refused_part_way_says_how_far_it_went() {
    let redis = RedisServer::start();
    let a = node_with(&redis, "a", 1, &[("CIM_HTTP__MAX_BODY", "4194304")]);
    let h = a.addr("http");
    let content = "x".repeat(4096);
    let batch: Vec<_> = (0..600)
        .map(|i| serde_json::json!({ "receiver": format!("pw{i}"), "content": content }))
        .collect();
    let body = serde_json::json!({ "messages": batch }).to_string();
    // Room for the first call's arguments (about 1 MiB) but not for them and its stored
    // messages (as much again).
    let limit = redis.used_memory() + 1536 * 1024;
    assert!(
        redis
            .command(&format!("CONFIG SET maxmemory {limit}"))
            .starts_with("+OK")
    );
    let r = http(h, "POST", "/api/v1/messages/batch", &[JSON], &body).await;
    redis.command("CONFIG SET maxmemory 0");
    let reason = r.json_error(503);
    assert!(
        reason.starts_with("messages[256]: ") && reason.ends_with("; the 256 before it were sent"),
        "{reason}"
    );
    for (uid, stored) in [("pw0", 1), ("pw255", 1), ("pw256", 0), ("pw599", 0)] {
        assert_eq!(pending(h, uid).await, stored, "{uid}");
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
