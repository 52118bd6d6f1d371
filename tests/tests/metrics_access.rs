//! Who may read `GET /metrics` of the real binary: the metrics endpoint takes the API key or
//! its own, or none from loopback when configured (the client a trusted proxy names counts);
//! the console's files are served without a key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::time::Duration;

use common::WAIT;
use common::cluster::client;
use common::haproxy::connect_from;
use common::process::{ServerProcess, http, http_on};
use common::scrape::*;
use serde_json::json;

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
