//! The cluster in users' hands, against real `cim-server` processes on a real `redis-server`:
//! an SDK client that follows dispatch (the least-loaded node, then a live one after its node is
//! killed, with what was sent meanwhile and no duplicate reaching the application; the last good
//! address when dispatch cannot be asked), the de-duplication window, drains (every client moved elsewhere, nothing lost, the closes paced,
//! dispatch never naming the draining node; on one node too), the drain endpoint, and SIGTERM's
//! deregistration. Every wait is a bounded poll; nothing asserts on how long anything took.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_client::{Backoff, BindInfo, Client, ClientConfig, DispatchUrl, Event, Events, Protocol};
use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
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

/// An SDK client that follows dispatch at `via`, speaking `protocol`, quick to retry.
fn dispatched(via: SocketAddr, protocol: &str, uid: &str) -> ClientConfig {
    let url: DispatchUrl = format!("http://{via}").parse().unwrap();
    let mut bind = BindInfo::new(uid);
    bind.channel = "android".into();
    bind.device_id = format!("dev-{uid}");
    let mut cfg = ClientConfig::dispatched(url, protocol.parse::<Protocol>().unwrap(), bind);
    cfg.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(800),
    };
    cfg.stable_after = Duration::from_millis(100);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

/// Takes events until `want` holds for the messages taken so far (each id counted as often as
/// the application got it); fails after `within`. Returns the reasons of the failed connect
/// attempts seen meanwhile.
async fn take_until(
    events: &mut Events,
    got: &mut HashMap<i64, usize>,
    within: Duration,
    want: impl Fn(&HashMap<i64, usize>) -> bool,
) -> Vec<String> {
    let mut failed = Vec::new();
    let deadline = Instant::now() + within;
    while !want(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the messages never all arrived: got {got:?}"
        );
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Message(m))) => *got.entry(m.id).or_default() += 1,
            Ok(Some(Event::ConnectFailed { reason, .. })) => failed.push(reason),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the client ended"),
            Err(_) => {}
        }
    }
    failed
}

/// A client with only a dispatch URL binds on the least-loaded node; when that node is killed
/// it reconnects through dispatch to a live one (dispatch told to pass over the node it lost)
/// and gets what was sent meanwhile (stored), and no message reaches the application twice.
#[tokio::test]
async fn a_dispatched_client_follows_its_node_through_a_kill() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 1);
    let b = node(&redis, "b", 2);
    let mut c = node(&redis, "c", 3);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(bound(&a, &format!("la{i}"), "android", "p").await);
        held.push(bound(&b, &format!("lb{i}"), "android", "p").await);
    }
    let (client, mut events) = Client::connect(dispatched(a.addr("http"), "tcp", "roamer"))
        .await
        .unwrap();
    assert_eq!(client.node().as_deref(), Some("c"), "the least loaded");
    assert_eq!(
        client.endpoint().unwrap().to_string(),
        format!("tcp://{}", c.addr("tcp"))
    );
    assert_eq!(nodes_of(a.addr("http"), "roamer").await, ["c"]);

    // Messages the client takes just before its node dies: their inbox entries may still be in
    // Redis when it dies, and come again through the reaper.
    let h = a.addr("http");
    let mut got = HashMap::new();
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(send_ok(h, "roamer", &format!("before {i}")).await);
    }
    take_until(&mut events, &mut got, WAIT, |g| {
        before.iter().all(|id| g.contains_key(id))
    })
    .await;
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    // Sent while the client has no node: routed to the dead node until its deadline, then
    // stored by the reaper, or delivered once the client is bound again.
    let mut meanwhile = Vec::new();
    for i in 0..20 {
        meanwhile.push(send_ok(h, "roamer", &format!("meanwhile {i}")).await);
    }
    let failed = take_until(&mut events, &mut got, Duration::from_secs(30), |g| {
        meanwhile.iter().all(|id| g.contains_key(id))
    })
    .await;
    // The client asks dispatch to pass over the node it lost: c, live in the registry until
    // its deadline, is never named to it again.
    assert!(
        failed.iter().all(|r| !r.starts_with("node c at")),
        "{failed:?}"
    );
    let now_on = client.node().unwrap();
    assert!(now_on == "a" || now_on == "b", "bound again on {now_on}");
    assert_eq!(nodes_of(h, "roamer").await, std::slice::from_ref(&now_on));
    // Anything still to come (copies routed late) has arrived once a marker sent now has.
    let marker = send_ok(h, "roamer", "marker").await;
    take_until(&mut events, &mut got, WAIT, |g| g.contains_key(&marker)).await;
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "reached the application twice: {twice:?}");
    assert_eq!(got.len(), 41);
    println!(
        "bound again on {now_on}; {} copies dropped by the client",
        client.duplicates_dropped()
    );
    client.destroy().await;
}

/// When dispatch cannot be asked, a client that follows it connects to the last address a bind
/// succeeded on: its node is killed, the dispatch URL answers nothing, and a new server on the
/// same TCP port takes the client back.
#[tokio::test]
async fn a_dispatched_client_falls_back_to_its_last_good_address() {
    let mut first = ServerProcess::start(&[("CIM_NODE", "first")]);
    let (tcp, dispatch_at) = (first.addr("tcp"), first.addr("http"));
    let (client, mut events) = Client::connect(dispatched(dispatch_at, "tcp", "fb"))
        .await
        .unwrap();
    assert_eq!(client.node().as_deref(), Some("first"));
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The dispatch URL now closes every connection without an answer (and its port stays
    // taken, so no new server can answer there).
    let gone = tokio::net::TcpListener::bind(dispatch_at).await.unwrap();
    let refusing = tokio::spawn(async move {
        while let Ok((s, _)) = gone.accept().await {
            drop(s);
        }
    });
    // Until a server listens at the last good address again, the attempts fail and are retried.
    let mut failed = 0;
    while failed == 0 {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(Event::ConnectFailed { reason, .. }) => {
                // Why not dispatch, and where it went instead.
                assert!(
                    reason.contains(&format!("dispatch http://{dispatch_at}")),
                    "{reason}"
                );
                assert!(
                    reason.contains(&format!("the last good address tcp://{tcp}: ")),
                    "{reason}"
                );
                failed += 1;
            }
            Some(_) => {}
            None => panic!("the client ended"),
        }
    }
    let port = tcp.port().to_string();
    let second = ServerProcess::start(&[("CIM_NODE", "second"), ("CIM_TCP__PORT", &port)]);
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(Event::Connected { rebound }) => {
                assert!(rebound);
                break;
            }
            Some(_) => {}
            None => panic!("the client ended"),
        }
    }
    assert_eq!(client.node(), None, "not named by dispatch");
    assert_eq!(
        client.endpoint().unwrap().to_string(),
        format!("tcp://{tcp}")
    );
    assert_eq!(nodes_of(second.addr("http"), "fb").await, ["second"]);
    let id = send_ok(second.addr("http"), "fb", "after the fallback").await;
    let mut got = HashMap::new();
    take_until(&mut events, &mut got, WAIT, |g| g.contains_key(&id)).await;
    client.destroy().await;
    refusing.abort();
}

/// With several dispatch URLs the client asks the next when one cannot answer: the first names
/// a port nobody listens on, the second a live node, which the client binds on.
#[tokio::test]
async fn a_dispatched_client_asks_the_next_url_when_one_cannot() {
    let p = ServerProcess::start(&[("CIM_NODE", "solo")]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody: DispatchUrl = format!("http://{}", free.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(free);
    let live: DispatchUrl = format!("http://{}", p.addr("http")).parse().unwrap();
    let mut cfg = dispatched(p.addr("http"), "tcp", "two-urls");
    cfg.target = cim_client::Target::Dispatch {
        urls: vec![nobody, live.clone()],
        protocol: cim_client::Protocol::Tcp,
    };
    let (client, mut events) = Client::connect(cfg).await.unwrap();
    assert_eq!(client.node().as_deref(), Some("solo"));
    assert_eq!(client.dispatched_by(), Some(live));
    let id = send_ok(p.addr("http"), "two-urls", "through the second").await;
    let mut got = HashMap::new();
    take_until(&mut events, &mut got, WAIT, |g| g.contains_key(&id)).await;
    client.destroy().await;
}

/// A copy of a message the client has seen (the server sends it again after a reconnect,
/// its receipt never having reached the server) is dropped within `dedup_window`, and reaches
/// the application with a window of 0.
#[tokio::test]
async fn the_dedup_window_drops_a_copy_across_a_reconnect() {
    let p = ServerProcess::start(&[]);
    let h = p.addr("http");
    for (window, copies) in [(4096, 0), (0, 1)] {
        let uid = format!("dd{window}");
        let mut cfg = ClientConfig::new(
            format!("tcp://{}", p.addr("tcp")).parse().unwrap(),
            BindInfo::new(&uid),
        );
        cfg.receipts = true;
        cfg.dedup_window = window;
        let (client, mut events) = Client::connect(cfg).await.unwrap();
        let first = send_ok(h, &uid, "once").await;
        // An operator's kick: the notice is queued after the message, and the client stays down.
        let r = http(
            h,
            "DELETE",
            &format!("/api/v1/accounts/{uid}/sessions"),
            &[],
            "",
        )
        .await;
        assert_eq!(r.json()["kicked"], 1, "{r:?}");
        eventually("the client is down", WAIT, || async {
            !client.is_connected()
        })
        .await;
        // Taken while down: the receipt cannot be sent, so the message stays on the server.
        let mut taken = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
                Some(Event::Message(m)) => taken.push(m.id),
                Some(Event::Closed { .. }) => break,
                Some(_) => {}
                None => panic!("ended"),
            }
        }
        assert_eq!(taken, [first]);
        let r = http(
            h,
            "GET",
            &format!("/api/v1/accounts/{uid}/pending"),
            &[],
            "",
        )
        .await;
        assert_eq!(r.json()["pending"], 1, "{r:?}");
        client.resume().unwrap();
        // The server sends it again on the bind; then a second message.
        eventually("bound again", WAIT, || async { client.is_connected() }).await;
        let second = send_ok(h, &uid, "twice?").await;
        let mut after = Vec::new();
        while after.last() != Some(&second) {
            match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
                Some(Event::Message(m)) => after.push(m.id),
                Some(_) => {}
                None => panic!("ended"),
            }
        }
        let again = after.iter().filter(|id| **id == first).count();
        assert_eq!(again, copies, "window {window}: {after:?}");
        assert_eq!(client.duplicates_dropped(), 1 - copies as u64);
        client.destroy().await;
    }
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
