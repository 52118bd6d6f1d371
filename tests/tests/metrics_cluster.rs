//! `GET /metrics` of real `cim-server` nodes in a cluster on a real `redis-server`: inbox
//! entries, a reap, Redis errors and a Redis found empty move the cluster's series by what
//! happened, and every cluster series the README lists is shown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use common::cluster::client;
use common::process::{ServerProcess, http};
use common::scrape::*;
use serde_json::json;

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
        let body = json!({"receiver": "down", "content": i.to_string()});
        let r = post_answer(api, "/api/v1/messages", body).await;
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
        let body = json!({"receiver": "down", "content": "back"});
        let r = post_answer(api, "/api/v1/messages", body).await;
        if r.status == 200 && r.json()["delivered"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rx.message().await.content, "back");
}
