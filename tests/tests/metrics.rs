//! `GET /metrics` of the real binary: binds, sends, kicks, stores, replays, acknowledgements,
//! a full queue and refused or denied connections move the counters by exactly what happened;
//! every series shown is one the README lists; `GET /api/v1/stats` sums what the console shows.
//! Who may read the metrics is in `metrics_access.rs`, the cluster's series in
//! `metrics_cluster.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::BTreeSet;

use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, SentBody};
use common::cluster::client;
use common::haproxy::connect_from;
use common::process::{HttpConn, ServerProcess, http, http_on};
use common::scrape::*;
use common::{StreamClient, WAIT, bind_body};
use serde_json::json;

#[tokio::test]
async fn counters_move_by_exactly_what_happened() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY)]);
    let api = p.addr("http");
    let before = scrape_with(api, KEY).await;

    // Binds: one, and one refused for its missing uid.
    let mut alice = client(&p).await;
    alice.bind("alice", "android", "dev-a").await;
    let mut nobody = client(&p).await;
    nobody
        .send(Frame::Sent(
            SentBody::new("client_bind").with("channel", "android"),
        ))
        .await;
    assert_eq!(nobody.reply().await.code, "400");
    drop(nobody);

    // Three messages to alice, two to carol who is offline (stored), one to everyone (alice).
    for i in 0..3 {
        let sent = post(
            api,
            "/api/v1/messages",
            json!({"receiver": "alice", "content": format!("m{i}")}),
        )
        .await;
        assert_eq!(sent["delivered"], 1);
    }
    for i in 0..2 {
        let sent = post(
            api,
            "/api/v1/messages",
            json!({"receiver": "carol", "content": format!("c{i}")}),
        )
        .await;
        assert_eq!(sent["stored"], true);
    }
    post(api, "/api/v1/broadcast", json!({"content": "all"})).await;
    for want in ["m0", "m1", "m2", "all"] {
        assert_eq!(alice.message().await.content, want);
    }

    // A tag, then a message to it.
    alice
        .send(Frame::Sent(
            SentBody::new("client_set_tag").with("tag", "news"),
        ))
        .await;
    assert_eq!(alice.reply().await.code, "200");
    post(
        api,
        "/api/v1/tags/news/messages",
        json!({"content": "tagged"}),
    )
    .await;
    assert_eq!(alice.message().await.content, "tagged");

    // An operator's kick: the notice, then the close.
    let r = http(
        api,
        "DELETE",
        "/api/v1/accounts/alice/sessions",
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.json()["kicked"], 1);
    let seen = alice.expect_closed().await;
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Message(m) if m.action == "999")),
        "{seen:?}"
    );

    // carol binds and gets her two stored messages; then she leaves.
    let mut carol = client(&p).await;
    carol.bind("carol", "android", "dev-c").await;
    assert_eq!(carol.message().await.content, "c0");
    assert_eq!(carol.message().await.content, "c1");
    drop(carol);

    // dave acknowledges: his two messages are stored first, then acknowledged together.
    let mut dave = client(&p).await;
    dave.send(Frame::Sent(
        bind_body("dave", "android", "dev-d").with("clientAck", "true"),
    ))
    .await;
    assert_eq!(dave.reply().await.code, "200");
    for i in 0..2 {
        let sent = post(
            api,
            "/api/v1/messages",
            json!({"receiver": "dave", "content": format!("d{i}")}),
        )
        .await;
        assert_eq!(
            (sent["delivered"].clone(), sent["stored"].clone()),
            (json!(1), json!(true))
        );
    }
    dave.message().await;
    let second = dave.message().await;
    dave.send(Frame::Sent(
        SentBody::new("client_ack").with("id", second.id.to_string()),
    ))
    .await;
    assert_eq!(dave.reply().await.data.get("acked"), Some("2"));

    // eve binds on a phone, then on another phone: the first is kicked by the bind.
    let mut eve1 = client(&p).await;
    eve1.bind("eve", "android", "phone-1").await;
    let mut eve2 = client(&p).await;
    eve2.bind("eve", "ios", "phone-2").await;
    let seen = eve1.expect_closed().await;
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Message(m) if m.action == "999")),
        "{seen:?}"
    );

    // A caller without the right key.
    let r = http(
        api,
        "GET",
        "/api/v1/sessions",
        &[("x-api-key", "wrong")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);

    let after = expect_deltas(
        api,
        &before,
        &[
            ("cim_binds_total", 5.0),
            ("cim_bind_refusals_total{reason=\"missing_uid\"}", 1.0),
            ("cim_bind_refusals_total{reason=\"unauthorized\"}", 0.0),
            ("cim_messages_sent_total{to=\"account\"}", 7.0),
            ("cim_messages_sent_total{to=\"everyone\"}", 1.0),
            ("cim_messages_sent_total{to=\"tag\"}", 1.0),
            // alice 3 + 1 + 1 + the kick notice, carol 2, dave 2, eve's kick notice.
            ("cim_messages_delivered_total", 11.0),
            ("cim_messages_stored_total", 4.0),
            ("cim_messages_replayed_total", 2.0),
            ("cim_messages_acknowledged_total", 2.0),
            ("cim_messages_dropped_total{reason=\"max_per_account\"}", 0.0),
            ("cim_messages_dropped_total{reason=\"no_store\"}", 0.0),
            ("cim_queue_full_total", 0.0),
            ("cim_kicks_total{by=\"operator\"}", 1.0),
            ("cim_kicks_total{by=\"bind\"}", 1.0),
            ("cim_connections_closed_total{reason=\"peer\"}", 2.0),
            ("cim_connections_closed_total{reason=\"kicked_by_operator\"}", 1.0),
            ("cim_connections_closed_total{reason=\"kicked\"}", 1.0),
            ("cim_connections_closed_total{reason=\"protocol_error\"}", 0.0),
            // dave and eve's second phone are still connected.
            ("cim_connections{listener=\"tcp\",protocol=\"tcp\"}", 2.0),
            ("cim_store_append_seconds_count", 4.0),
            (
                "cim_http_requests_total{method=\"POST\",route=\"/api/v1/messages\",status=\"200\"}",
                7.0,
            ),
            (
                "cim_http_requests_total{method=\"POST\",route=\"/api/v1/broadcast\",status=\"200\"}",
                1.0,
            ),
            (
                "cim_http_requests_total{method=\"POST\",route=\"/api/v1/tags/{tag}/messages\",status=\"200\"}",
                1.0,
            ),
            (
                "cim_http_requests_total{method=\"DELETE\",route=\"/api/v1/accounts/{uid}/sessions\",status=\"200\"}",
                1.0,
            ),
            (
                "cim_http_requests_total{method=\"GET\",route=\"/api/v1/sessions\",status=\"401\"}",
                1.0,
            ),
        ],
    )
    .await;
    // The append histogram has its buckets, the last one holding every append.
    assert_eq!(
        after.get("cim_store_append_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
    assert!(after.get("cim_store_size_bytes") > 0.0);
    drop((dave, eve2));

    // Every series shown is listed in the README, and every one listed is shown (but the
    // cluster's, shown only in a cluster).
    let listed: BTreeSet<String> = readme_series()
        .into_iter()
        .filter(|s| !s.starts_with("cim_cluster_"))
        .collect();
    let shown = after.types.clone();
    assert_eq!(shown, listed, "README's metrics table and /metrics differ");
}

/// Sends that travel together — a batch over the HTTP API, `client_message`s pipelined in one
/// write — are counted as sends and stores one by one, as single sends are.
#[tokio::test]
async fn batched_and_pipelined_sends_are_counted() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY)]);
    let api = p.addr("http");
    let before = scrape_with(api, KEY).await;
    let mut alice = client(&p).await;
    alice.bind("alice", "android", "dev-a").await;
    let mut bob = client(&p).await;
    bob.bind("bob", "android", "dev-b").await;

    // Two to alice and one to carol, who is offline (stored), in one batch.
    let answer = post(
        api,
        "/api/v1/messages/batch",
        json!({"messages": [
            {"receiver": "alice", "content": "b0"},
            {"receiver": "carol", "content": "b1"},
            {"receiver": "alice", "content": "b2"},
        ]}),
    )
    .await;
    let stored: Vec<_> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stored"].as_bool().unwrap())
        .collect();
    assert_eq!(stored, [false, true, false]);

    // The same from bob's connection, the three requests in one write.
    bob.send_raw(&common::pipelined_sends(&[
        ("alice", "p0"),
        ("carol", "p1"),
        ("alice", "p2"),
    ]))
    .await;
    for i in 0..3 {
        let r = bob.reply().await;
        assert_eq!(
            (r.code.as_str(), r.data.get("requestId")),
            ("200", Some(format!("r{i}").as_str())),
            "{r:?}"
        );
    }
    for want in ["b0", "b2", "p0", "p2"] {
        assert_eq!(alice.message().await.content, want);
    }

    expect_deltas(
        api,
        &before,
        &[
            ("cim_messages_sent_total{to=\"account\"}", 6.0),
            ("cim_messages_stored_total", 2.0),
            ("cim_messages_delivered_total", 4.0),
            ("cim_store_append_seconds_count", 2.0),
            (
                "cim_http_requests_total{method=\"POST\",route=\"/api/v1/messages/batch\",status=\"200\"}",
                1.0,
            ),
        ],
    )
    .await;
    drop((alice, bob));
}

/// A client that does not read: once the socket's buffers and its queue of 4 are full, the
/// push that finds the queue full is counted, once (the connection is then closing, so later
/// pushes are refused as closed); the connection closes for its overflow once it has written
/// what was queued, and every message is either written or stored.
#[tokio::test]
async fn a_full_queue_is_counted_once_and_nothing_is_lost() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_CONNECTION__QUEUE_CAPACITY", "4"),
        ("CIM_CONNECTION__WRITE_TIMEOUT_MS", "120000"),
    ]);
    let api = p.addr("http");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(p.addr("tcp")).await.unwrap();
    let mut frank = StreamClient::on(stream, BinaryCodec::new());
    frank.bind("frank", "android", "dev-f").await;
    let before = scrape_with(api, KEY).await;
    let sends = 150;
    let content = "x".repeat(60_000);
    for _ in 0..sends {
        post(
            api,
            "/api/v1/messages",
            json!({"receiver": "frank", "content": content}),
        )
        .await;
    }
    let got = frank
        .expect_closed()
        .await
        .iter()
        .filter(|f| matches!(f, Frame::Message(_)))
        .count();
    assert!(
        got < sends,
        "the queue never filled: {got} of {sends} written"
    );
    let r = http(
        api,
        "GET",
        "/api/v1/accounts/frank/pending",
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    let pending = r.json()["pending"].as_u64().unwrap() as usize;
    assert_eq!(got + pending, sends, "written {got}, stored {pending}");
    expect_deltas(
        api,
        &before,
        &[
            ("cim_queue_full_total", 1.0),
            ("cim_connections_closed_total{reason=\"overflow\"}", 1.0),
            ("cim_messages_delivered_total", got as f64),
            ("cim_messages_stored_total", pending as f64),
            ("cim_messages_sent_total{to=\"account\"}", sends as f64),
        ],
    )
    .await;
}

/// Connections over `max_connections` and `http.max_connections` are counted by listener.
#[tokio::test]
async fn refused_connections_are_counted_by_listener() {
    let p = ServerProcess::start(&[
        ("CIM_MAX_CONNECTIONS", "1"),
        ("CIM_HTTP__MAX_CONNECTIONS", "1"),
    ]);
    // The one HTTP connection allowed, kept alive for every scrape.
    let mut held = HttpConn::open(p.addr("http")).await;
    let mut scrape = async || {
        held.request("GET", "/metrics", &[], "").await;
        parse(&held.response().await.unwrap().body)
    };
    let before = scrape().await;
    let mut one = client(&p).await;
    one.bind("one", "android", "d").await;
    for _ in 0..3 {
        let mut extra = client(&p).await;
        assert!(extra.expect_closed().await.is_empty());
    }
    let busy = http(p.addr("http"), "GET", "/health", &[], "").await;
    assert_eq!(busy.status, 503);
    let after = scrape().await;
    let moved = |s: &str| after.get(s) - before.get(s);
    assert_eq!(
        moved("cim_connections_refused_total{listener=\"tcp\",reason=\"max_connections\"}"),
        3.0
    );
    assert_eq!(
        moved("cim_connections_refused_total{listener=\"http\",reason=\"max_connections\"}"),
        1.0
    );
    assert_eq!(
        after.get("cim_connections{listener=\"tcp\",protocol=\"tcp\"}"),
        1.0
    );
}

/// A denied client is refused at accept and counted by listener and reason.
#[tokio::test]
async fn denied_connections_are_counted() {
    let p = ServerProcess::start(&[
        ("CIM_TCP__DENY", "127.0.0.4"),
        ("CIM_HTTP__DENY", "127.0.0.4"),
    ]);
    let api = p.addr("http");
    let before = scrape_with(api, "").await;
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.4", p.addr("tcp")).await;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a denied client was answered");
    }
    let r = http_on(
        connect_from("127.0.0.4", api).await,
        api,
        "GET",
        "/health",
        &[],
        "",
    )
    .await;
    r.json_error(403);
    // Another address is served.
    let mut ok = StreamClient::on(
        connect_from("127.0.0.5", p.addr("tcp")).await,
        BinaryCodec::new(),
    );
    ok.bind("ok", "android", "d").await;
    let after = scrape_with(api, "").await;
    let moved = |s: &str| after.get(s) - before.get(s);
    assert_eq!(
        moved("cim_connections_refused_total{listener=\"tcp\",reason=\"denied\"}"),
        2.0
    );
    assert_eq!(
        moved("cim_connections_refused_total{listener=\"http\",reason=\"denied\"}"),
        1.0
    );
    assert_eq!(
        moved("cim_connections_refused_total{listener=\"tcp\",reason=\"max_connections\"}"),
        0.0
    );
    assert_eq!(moved("cim_binds_total"), 1.0);
}
