//! `GET /metrics` of the real binary: binds, sends, kicks, stores, replays, acknowledgements,
//! a full queue and refused connections move the counters by exactly what happened, and in a
//! cluster (real `redis-server`) inbox entries, a reap, Redis errors and a Redis found empty;
//! every series shown is one the README lists; the metrics endpoint takes its own key, or none
//! from loopback when configured (the client a trusted proxy names counts); `GET
//! /api/v1/stats` sums what the console shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, SentBody};
use common::haproxy::connect_from;
use common::process::{HttpConn, JSON, ServerProcess, http, http_on};
use common::{StreamClient, TcpClient, WAIT, bind_body};
use serde_json::json;

const KEY: &str = "metrics-test-key";

/// One scrape: every sample by its series, `name{label="value",…}` with the labels sorted.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    /// The names of the `# TYPE` lines.
    types: BTreeSet<String>,
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`.
fn normalize(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let labels = labels.strip_suffix('}').unwrap();
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        let end = after.find('"').unwrap();
        pairs.push(format!("{key}=\"{}\"", &after[..end]));
        rest = after[end + 1..].trim_start_matches(',');
    }
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            scrape.types.insert(t.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        scrape
            .samples
            .insert(normalize(series), value.parse().unwrap());
    }
    scrape
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape_with(addr: SocketAddr, key: &str) -> Scrape {
    let r = http(addr, "GET", "/metrics", &[("x-api-key", key)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.body)
}

/// Scrapes until every series of `expected` moved from `before` by exactly its amount (the
/// server counts a write just after the client could read it); panics, listing what differs,
/// if they do not within the tests' wait.
async fn expect_deltas(addr: SocketAddr, before: &Scrape, expected: &[(&str, f64)]) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape_with(addr, KEY).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, d)| now.get(s) - before.get(s) != *d)
            .map(|(s, d)| {
                format!(
                    "{s}: moved by {} instead of {d}",
                    now.get(s) - before.get(s)
                )
            })
            .collect();
        if wrong.is_empty() {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wrong:#?}\nscrape: {:#?}",
            now.samples
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(addr: SocketAddr, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = http(
        addr,
        "POST",
        path,
        &[JSON, ("x-api-key", KEY)],
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

async fn client(p: &ServerProcess) -> TcpClient {
    StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await
}

/// The series the README's operator section lists, from its table of metrics.
fn readme_series() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .expect("README has a Metrics section")
        .split("\n### ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `cim_"))
        .map(|l| format!("cim_{}", l.split('`').next().unwrap()))
        .collect()
}

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

#[tokio::test]
async fn metrics_take_the_api_key_or_their_own() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_HTTP__METRICS_KEY", "scrape-only"),
    ]);
    let api = p.addr("http");
    let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| async move {
        http(api, "GET", path, &headers, "").await
    };
    let reason = get("/metrics", vec![]).await.json_error(401);
    assert!(reason.contains("key required"), "{reason}");
    get("/metrics", vec![("x-api-key", "wrong")])
        .await
        .json_error(401);
    for headers in [
        vec![("x-api-key", "scrape-only")],
        vec![("authorization", "Bearer scrape-only")],
        vec![("x-api-key", KEY)],
    ] {
        let r = get("/metrics", headers).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains("# TYPE cim_binds_total counter"),
            "{}",
            r.body
        );
    }
    // The metrics key opens nothing else.
    get("/api/v1/sessions", vec![("x-api-key", "scrape-only")])
        .await
        .json_error(401);
    get("/api/v1/stats", vec![]).await.json_error(401);

    // The figures the console shows: connections on this node, sessions, totals.
    let mut c = client(&p).await;
    c.bind("stats", "android", "d").await;
    post(
        api,
        "/api/v1/messages",
        json!({"receiver": "stats", "content": "s"}),
    )
    .await;
    post(
        api,
        "/api/v1/messages",
        json!({"receiver": "offline", "content": "o"}),
    )
    .await;
    c.message().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = get("/api/v1/stats", vec![("x-api-key", KEY)]).await.json();
        let want = json!({"sent": 2, "delivered": 1, "stored": 1});
        if stats["messages"] == want {
            assert_eq!(stats["connections"], 1, "{stats}");
            assert_eq!(stats["sessions"], 1, "{stats}");
            assert_eq!(stats["node"], "node-0", "{stats}");
            assert!(stats["time_ms"].as_i64().unwrap() > 0, "{stats}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_open_on_loopback_and_the_console_can_be_off() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_HTTP__METRICS_OPEN_ON_LOOPBACK", "true"),
        ("CIM_HTTP__CONSOLE", "false"),
    ]);
    let api = p.addr("http");
    let r = http(api, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("cim_connections"), "{}", r.body);
    // The rest of the API still needs the key, and there is no console.
    http(api, "GET", "/api/v1/sessions", &[], "")
        .await
        .json_error(401);
    http(api, "GET", "/console", &[], "").await.json_error(404);
}

/// Behind a trusted proxy the client it names is the one that must be on loopback: a proxy on
/// this host does not open the metrics to everyone behind it. A forwarding header from a
/// connection that is not a trusted proxy's is ignored.
#[tokio::test]
async fn metrics_open_on_loopback_means_the_client_behind_a_proxy() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_HTTP__METRICS_OPEN_ON_LOOPBACK", "true"),
        ("CIM_HTTP__TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let api = p.addr("http");
    let from = async |conn: &str, client: &str, key: Option<&str>| {
        let mut headers = vec![("X-Forwarded-For", client)];
        headers.extend(key.map(|k| ("x-api-key", k)));
        http_on(
            connect_from(conn, api).await,
            api,
            "GET",
            "/metrics",
            &headers,
            "",
        )
        .await
    };
    // Through the proxy, for a client elsewhere: the key is needed, and taken.
    let r = from("127.0.0.1", "203.0.113.7", None).await;
    assert!(r.json_error(401).contains("key required"), "{r:?}");
    let r = from("127.0.0.1", "203.0.113.7", Some(KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Through the proxy, for a client on this host: open.
    assert_eq!(from("127.0.0.1", "127.0.0.9", None).await.status, 200);
    // Not through a trusted proxy: the header is not believed, the connection is local.
    assert_eq!(from("127.0.0.6", "203.0.113.7", None).await.status, 200);
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

/// Node `name` (number `id`) of a cluster on `redis`, its API behind [`KEY`].
fn node(redis: &RedisServer, name: &str, id: u16, deadline_ms: &str) -> ServerProcess {
    let url = redis.url();
    let id = id.to_string();
    ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_CLUSTER__REDIS", url.as_str()),
        ("CIM_NODE", name),
        ("CIM_NODE_ID", id.as_str()),
        ("CIM_CLUSTER__HEARTBEAT_MS", "100"),
        ("CIM_CLUSTER__NODE_DEADLINE_MS", deadline_ms),
    ])
}

/// Scrapes until `check` holds for what moved since `before`, or panics with the scrape.
async fn eventually(
    addr: SocketAddr,
    before: &Scrape,
    what: &str,
    check: impl Fn(&dyn Fn(&str) -> f64) -> bool,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = scrape_with(addr, KEY).await;
        if check(&|s: &str| now.get(s) - before.get(s)) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:#?}",
            now.samples
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const REDIS_ERRORS: [&str; 3] = [
    "cim_cluster_redis_errors_total{part=\"node\"}",
    "cim_cluster_redis_errors_total{part=\"store\"}",
    "cim_cluster_redis_errors_total{part=\"inbox\"}",
];

/// Three nodes: messages routed from a to b are taken from b's inbox (one entry each, timed);
/// c is killed holding a session, and the one of a and b that reaps it routes again what was
/// routed to c meanwhile (stored, as nobody else holds the account). No Redis error meanwhile.
/// Every cluster series the README lists is shown.
#[tokio::test]
async fn cluster_series_move_by_what_happened() {
    let redis = RedisServer::start();
    // A deadline long enough for the sends below to reach c's inbox after it is killed.
    let a = node(&redis, "a", 1, "4000");
    let b = node(&redis, "b", 2, "4000");
    let mut c = node(&redis, "c", 3, "4000");
    let mut on_b = client(&b).await;
    on_b.bind("lb", "android", "d").await;
    let mut on_c = client(&c).await;
    on_c.bind("gone", "android", "d").await;
    let (api_a, api_b) = (a.addr("http"), b.addr("http"));
    let before_a = scrape_with(api_a, KEY).await;
    let before_b = scrape_with(api_b, KEY).await;

    for i in 0..3 {
        let sent = post(
            api_a,
            "/api/v1/messages",
            json!({"receiver": "lb", "content": format!("r{i}")}),
        )
        .await;
        assert_eq!(sent["delivered"], 1, "{sent}");
        assert_eq!(on_b.message().await.content, format!("r{i}"));
    }
    let lag = "cim_cluster_inbox_lag_seconds_count";
    let after_b = expect_deltas(api_b, &before_b, &[(lag, 3.0)]).await;
    assert_eq!(
        after_b.get("cim_cluster_inbox_lag_seconds_bucket{le=\"+Inf\"}")
            - before_b.get("cim_cluster_inbox_lag_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    expect_deltas(api_a, &before_a, &[(lag, 0.0)]).await;

    // c dies with "gone" bound: until its deadline passes, sends are routed to its inbox.
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let mut routed = 0.0;
    for i in 0..2 {
        let sent = post(
            api_a,
            "/api/v1/messages",
            json!({"receiver": "gone", "content": format!("g{i}")}),
        )
        .await;
        routed += sent["delivered"].as_f64().unwrap();
    }
    assert!(routed > 0.0, "c's deadline passed before the sends");
    let reaps = "cim_cluster_reaps_total";
    let dead = "cim_cluster_rerouted_total{reason=\"dead_node\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (after_a, after_b) = loop {
        let (now_a, now_b) = (scrape_with(api_a, KEY).await, scrape_with(api_b, KEY).await);
        // Moved on a and b together: either may reap.
        let moved = |s: &str| now_a.get(s) - before_a.get(s) + now_b.get(s) - before_b.get(s);
        if moved(reaps) >= 1.0 {
            assert_eq!(moved(reaps), 1.0, "c was reaped twice");
            assert_eq!(moved(dead), routed);
            break (now_a, now_b);
        }
        assert!(tokio::time::Instant::now() < deadline, "c was never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = http(
        api_a,
        "GET",
        "/api/v1/accounts/gone/pending",
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.json()["pending"], 2, "{r:?}");
    for (before, after) in [(&before_a, &after_a), (&before_b, &after_b)] {
        for series in REDIS_ERRORS.iter().chain([
            &"cim_cluster_epoch_losses_total",
            &"cim_cluster_rerouted_total{reason=\"not_taken\"}",
            &"cim_cluster_rerouted_total{reason=\"handover_timeout\"}",
        ]) {
            assert_eq!(after.get(series) - before.get(series), 0.0, "{series}");
        }
    }

    // The cluster's series are the README's.
    let listed: BTreeSet<String> = readme_series()
        .into_iter()
        .filter(|s| s.starts_with("cim_cluster_"))
        .collect();
    let shown: BTreeSet<String> = after_b
        .types
        .iter()
        .filter(|s| s.starts_with("cim_cluster_"))
        .cloned()
        .collect();
    assert_eq!(shown, listed, "README's cluster series and /metrics differ");
    drop((on_b, on_c));
}

/// Redis killed: every send the API answers 503 is a node error, a pending count a store
/// error, and the inbox reader's lost connection an inbox error; Redis back empty is one epoch
/// loss, and the node registers again.
#[tokio::test]
async fn redis_errors_and_an_empty_redis_are_counted() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", 1, "1000");
    let mut rx = client(&a).await;
    rx.bind("down", "android", "d").await;
    let api = a.addr("http");
    let before = scrape_with(api, KEY).await;
    redis.kill();
    let failed = 10;
    for i in 0..failed {
        let body = json!({"receiver": "down", "content": i.to_string()}).to_string();
        let r = http(
            api,
            "POST",
            "/api/v1/messages",
            &[JSON, ("x-api-key", KEY)],
            &body,
        )
        .await;
        assert!(r.json_error(503).contains("redis"), "{r:?}");
    }
    let r = http(
        api,
        "GET",
        "/api/v1/accounts/down/pending",
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    r.json_error(503);
    eventually(api, &before, "every part counted its errors", |moved| {
        moved(REDIS_ERRORS[0]) >= f64::from(failed)
            && moved(REDIS_ERRORS[1]) >= 1.0
            && moved(REDIS_ERRORS[2]) >= 1.0
    })
    .await;
    assert_eq!(
        scrape_with(api, KEY)
            .await
            .get("cim_cluster_epoch_losses_total")
            - before.get("cim_cluster_epoch_losses_total"),
        0.0
    );
    redis.restart_empty();
    let after = eventually(api, &before, "the empty Redis was noticed", |moved| {
        moved("cim_cluster_epoch_losses_total") >= 1.0
    })
    .await;
    assert_eq!(
        after.get("cim_cluster_epoch_losses_total") - before.get("cim_cluster_epoch_losses_total"),
        1.0
    );
    // Sending works again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = json!({"receiver": "down", "content": "back"}).to_string();
        let r = http(
            api,
            "POST",
            "/api/v1/messages",
            &[JSON, ("x-api-key", KEY)],
            &body,
        )
        .await;
        if r.status == 200 && r.json()["delivered"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rx.message().await.content, "back");
}

/// The console's files are served without a key, locked to their own origin.
#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY)]);
    let api = p.addr("http");
    for (path, kind, needle) in [
        ("/console", "text/html", "id=\"login-form\""),
        ("/console/", "text/html", "id=\"login-form\""),
        ("/console/console.js", "text/javascript", "sessionStorage"),
        ("/console/console.css", "text/css", ".login"),
    ] {
        let r = http(api, "GET", path, &[], "").await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}: {r:?}"
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(r.body.contains(needle), "{path}");
    }
}
