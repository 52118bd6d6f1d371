//! Drains and shutdown in a cluster of real `cim-server` processes on a real `redis-server`,
//! with SDK clients that follow dispatch: every client moved elsewhere, nothing lost, the closes
//! paced, dispatch never naming the draining node; on one node too; the drain endpoint; and
//! SIGTERM's deregistration. Every wait is a bounded poll; nothing asserts on how long anything
//! took.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_client::{Client, DispatchUrl};
use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
use common::clients::*;
use common::cluster::*;
use common::process::*;
use common::*;
use tokio::time::Instant;

/// The busiest second of a drain report ("… closed over 2.90 s, at most 10 in any second").
fn closes_per_second(report: &str) -> usize {
    report
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"))
}

/// A drain moves every client of the drained node to the other nodes: nothing sent to them
/// meanwhile is lost or reaches them twice, the drained node reports its closes paced to
/// `shutdown.drain_ms`, dispatch never names it from the moment it is asked to drain, and it
/// exits 0.
#[tokio::test]
async fn a_drain_moves_every_client_elsewhere_at_the_configured_pace() {
    const N: usize = 30;
    const DRAIN_MS: u64 = 3000;
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let drain_ms = DRAIN_MS.to_string();
    let mut c = node_with(
        &redis,
        "c",
        3,
        &[
            ("CIM_SHUTDOWN__DRAIN_MS", drain_ms.as_str()),
            ("CIM_SHUTDOWN__GRACE_MS", "10000"),
        ],
    );
    // Nodes a and b carry more than twice N each (a dispatch reserves a slot, a bind counts
    // too, until the next heartbeat), so dispatch sends every new client to c.
    let mut held = Vec::new();
    for i in 0..2 * N + 5 {
        held.push(bound(&a, &format!("ha{i}"), "android", "p").await);
        held.push(bound(&b, &format!("hb{i}"), "android", "p").await);
    }
    let mut clients = Vec::new();
    for i in 0..N {
        let uid = format!("d{i}");
        let (client, events) = Client::connect(dispatched(a.addr("http"), "ws", &uid))
            .await
            .unwrap();
        assert_eq!(client.node().as_deref(), Some("c"), "{uid}");
        clients.push((uid, client, events));
    }

    // A sender through node b, round robin over the accounts, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let sender = tokio::spawn({
        let (stop, acked, h) = (Arc::clone(&stop), Arc::clone(&acked), b.addr("http"));
        async move {
            let mut k = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let uid = format!("d{}", k % N);
                let id = send_ok(h, &uid, &format!("m{k}")).await;
                acked.lock().unwrap().entry(uid).or_default().push(id);
                k += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Dispatch, asked through every node, from the drain request on.
    let named: Arc<Mutex<HashSet<String>>> = Arc::default();
    let drain_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (named, asked, stop) = (
            Arc::clone(&named),
            Arc::clone(&drain_asked),
            Arc::clone(&stop),
        );
        let via: Vec<DispatchUrl> = [a.addr("http"), b.addr("http"), c.addr("http")]
            .iter()
            .map(|h| format!("http://{h}").parse().unwrap())
            .collect();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if asked.load(std::sync::atomic::Ordering::Acquire) {
                    for url in &via {
                        // c answers 503 while it drains, then is gone.
                        if let Ok(node) = cim_client::dispatch::ask(url, None, 65536).await {
                            named.lock().unwrap().insert(node.node);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = http(c.addr("http"), "POST", "/api/v1/admin/drain", &[], "").await;
    assert_eq!(r.status, 202, "{r:?}");
    drain_asked.store(true, std::sync::atomic::Ordering::Release);
    let v = r.json();
    assert_eq!(
        (v["node"].as_str(), v["draining"].as_bool()),
        (Some("c"), Some(true))
    );
    assert_eq!(
        (v["drain_ms"].as_u64(), v["started"].as_bool()),
        (Some(DRAIN_MS), Some(true))
    );
    // From the answer on, dispatch skips c, whichever node is asked.
    for h in [a.addr("http"), b.addr("http"), c.addr("http")] {
        let r = http(h, "GET", "/api/v1/dispatch", &[], "").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.json()["node"], "c", "{r:?}");
    }

    // The drained node exits 0 once its connections are gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the drained node never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let out: Vec<String> = c.stdout.try_iter().collect();
    let report = out
        .iter()
        .find(|l| l.starts_with("cim-server: drained:"))
        .unwrap_or_else(|| panic!("no drain report: {out:?}"));
    // "drained: 30 connection(s) closed over 2.90 s, at most 10 in any second"
    assert!(
        report.contains(&format!("drained: {N} connection(s) closed")),
        "{report}"
    );
    let per_second = closes_per_second(report);
    let allowed =
        cim_server::drain::DrainReport::allowed_per_second(N, Duration::from_millis(DRAIN_MS));
    assert_eq!(allowed, 10);
    assert!(
        (1..=allowed).contains(&per_second),
        "{per_second} closes in one second, more than the {allowed} the window allows: {report}"
    );

    // Every client is bound again elsewhere, and gets everything sent to it.
    for (uid, client, _) in &clients {
        eventually(
            &format!("{uid} bound again"),
            Duration::from_secs(30),
            || async { client.is_connected() && client.node().is_some_and(|n| n != "c") },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    watcher.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let mut moved: HashMap<String, usize> = HashMap::new();
    for (uid, client, events) in &mut clients {
        let want = acked.get(uid.as_str()).cloned().unwrap_or_default();
        let mut got = HashMap::new();
        take_until(events, &mut got, Duration::from_secs(30), |g| {
            want.iter().all(|id| g.contains_key(id))
        })
        .await;
        let marker = send_ok(a.addr("http"), uid, "marker").await;
        take_until(events, &mut got, WAIT, |g| g.contains_key(&marker)).await;
        assert!(got.values().all(|n| *n == 1), "{uid}: {got:?}");
        let on = client.node().unwrap();
        assert_eq!(
            nodes_of(a.addr("http"), uid).await,
            std::slice::from_ref(&on),
            "{uid}"
        );
        *moved.entry(on).or_default() += 1;
    }
    assert_eq!(moved.values().sum::<usize>(), N, "{moved:?}");
    assert!(moved.keys().all(|n| n == "a" || n == "b"), "{moved:?}");
    let named = named.lock().unwrap().clone();
    assert!(
        !named.is_empty() && !named.contains("c"),
        "dispatch named {named:?}"
    );
    let total: usize = acked.values().map(Vec::len).sum();
    println!("moved {moved:?}; {total} messages sent during the drain; {report}");
    for (_, client, _) in clients {
        client.destroy().await;
    }
    drop(held);
}

/// On one node a drain (SIGUSR1) spreads the closes just the same: dispatch answers 503 at
/// once, what is sent meanwhile to an account whose connection is closed is stored, and the
/// node exits 0.
#[tokio::test]
async fn a_single_node_drains_on_sigusr1_and_keeps_what_was_sent() {
    const N: usize = 10;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().to_str().unwrap().to_owned();
    let mut p = ServerProcess::start(&[
        ("CIM_NODE", "solo"),
        ("CIM_STORE__PATH", store.as_str()),
        ("CIM_SHUTDOWN__DRAIN_MS", "2000"),
    ]);
    let h = p.addr("http");
    let mut held = Vec::new();
    for i in 0..N {
        let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
        c.bind(&format!("u{i}"), "android", "p").await;
        held.push(c);
    }
    let r = http(h, "GET", "/api/v1/dispatch", &[], "").await;
    assert_eq!(r.json()["node"], "solo", "{r:?}");
    let pid = p.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-USR1", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("dispatch stops naming the node", WAIT, || async {
        http(h, "GET", "/api/v1/dispatch", &[], "").await.status == 503
    })
    .await;
    let reason = http(h, "GET", "/api/v1/dispatch", &[], "")
        .await
        .json_error(503);
    assert!(reason.contains("draining"), "{reason}");
    // The oldest connection closes first; a message to its account is then stored.
    held[0].expect_closed().await;
    let r = http(
        h,
        "POST",
        "/api/v1/messages",
        &[JSON],
        r#"{"receiver":"u0","content":"kept"}"#,
    )
    .await;
    assert_eq!(r.json()["stored"], true, "{r:?}");
    for c in &mut held[1..] {
        c.expect_closed().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the node never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let out: Vec<String> = p.stdout.try_iter().collect();
    assert!(
        out.iter().any(|l| l.contains("SIGUSR1 received, draining")),
        "{out:?}"
    );
    let report = out
        .iter()
        .find(|l| l.contains("drained:"))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(report.contains("drained: 10 connection(s)"), "{report}");
    // 10 over 2 s: one every 200 ms.
    let allowed =
        cim_server::drain::DrainReport::allowed_per_second(N, Duration::from_millis(2000));
    assert_eq!(allowed, 5);
    assert!(
        (1..=allowed).contains(&closes_per_second(report)),
        "{report}"
    );
    // The message waits in the store for the next start.
    drop(p);
    let p = ServerProcess::start(&[("CIM_STORE__PATH", store.as_str())]);
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind("u0", "android", "p").await;
    assert_eq!(c.message().await.content, "kept");
}

/// `POST /api/v1/admin/drain` takes the API key as every endpoint does; a second request says
/// the drain was under way; the node cannot then go back into dispatch; dispatch itself needs
/// no key.
#[tokio::test]
async fn the_drain_endpoint_answers_as_the_api_does() {
    const KEY: &str = "drain-test-key";
    // Six connections over six seconds: the node drains for five, long enough to be asked
    // again.
    let mut p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_SHUTDOWN__DRAIN_MS", "6000"),
    ]);
    let h = p.addr("http");
    let key = ("x-api-key", KEY);
    assert_eq!(
        http(h, "GET", "/api/v1/dispatch", &[], "").await.status,
        200
    );
    let reason = http(h, "POST", "/api/v1/admin/drain", &[], "")
        .await
        .json_error(401);
    assert!(reason.contains("API key"), "{reason}");
    http(h, "GET", "/api/v1/admin/drain", &[key], "")
        .await
        .json_error(405);
    let mut held = Vec::new();
    for i in 0..6 {
        let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
        c.bind(&format!("held{i}"), "android", "p").await;
        held.push(c);
    }
    let r = http(h, "POST", "/api/v1/admin/drain", &[key], "").await;
    assert_eq!(
        (r.status, r.json()["started"].as_bool()),
        (202, Some(true)),
        "{r:?}"
    );
    let r = http(h, "POST", "/api/v1/admin/drain", &[key], "").await;
    assert_eq!(
        (r.status, r.json()["started"].as_bool()),
        (202, Some(false)),
        "{r:?}"
    );
    let r = http(
        h,
        "POST",
        "/api/v1/drain",
        &[key, JSON],
        r#"{"draining":false}"#,
    )
    .await;
    let reason = r.json_error(409);
    assert!(reason.contains("draining to exit"), "{reason}");
    http(h, "GET", "/api/v1/dispatch", &[], "")
        .await
        .json_error(503);
    for c in &mut held {
        c.expect_closed().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.child.try_wait().unwrap().unwrap().success());
}

/// SIGTERM in a cluster: today's graceful shutdown, and the node is deregistered by the time it
/// has exited (its sessions gone from every view at once, not after the deadline).
#[tokio::test]
async fn sigterm_deregisters_the_node_at_once() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let mut b = node_with(
        &redis,
        "b",
        2,
        &[("CIM_CLUSTER__NODE_DEADLINE_MS", "600000")],
    );
    let mut c = bound(&b, "leaving", "android", "p").await;
    assert_eq!(nodes_of(a.addr("http"), "leaving").await, ["b"]);
    let status = b.terminate();
    assert!(status.success(), "{status:?}");
    c.expect_closed().await;
    // With a deadline of ten minutes, only the deregistration can have removed it.
    assert!(nodes_of(a.addr("http"), "leaving").await.is_empty());
    let nodes = redis.command("ZCARD cim:nodes");
    assert!(nodes.starts_with(":1"), "{nodes}");
}
