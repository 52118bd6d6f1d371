//! The cluster in users' hands, against real `cim-server` processes on a real `redis-server`:
//! an SDK client that follows dispatch (the least-loaded node, then a live one after its node is
//! killed, with what was sent meanwhile and no duplicate reaching the application; the last good
//! address when dispatch cannot be asked; the next dispatch URL when one cannot answer), and the
//! de-duplication window. Drains and SIGTERM are in `cluster_drain.rs`. Every wait is a bounded
//! poll; nothing asserts on how long anything took.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use cim_client::{BindInfo, Client, ClientConfig, DispatchUrl, Event};
use cim_cluster::testing::RedisServer;
use common::clients::*;
use common::cluster::*;
use common::process::*;
use common::*;

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
        assert_eq!(pending(h, &uid).await, 1);
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
