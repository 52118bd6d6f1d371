//! Message ids of the real server, read through the HTTP API: at most 2^53 − 1 (exact in
//! JavaScript), carrying the node number, and increasing across restarts on the same store
//! directory — after a crash and after a clean stop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::net::SocketAddr;

use cim_core::engine::ids::{MARK_FILE, MAX_SAFE_ID, NODE_BITS};
use common::process::*;

/// Sends a batch of `n` messages; their ids, in order.
async fn send_batch(http_addr: SocketAddr, n: usize) -> Vec<i64> {
    let messages: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"receiver":"ids-{}","content":"{i}"}}"#, i % 10))
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
    let r = http(http_addr, "POST", "/api/v1/messages/batch", &[JSON], &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|res| res["id"].as_str().unwrap().parse::<i64>().unwrap())
        .collect()
}

/// Sends one message through CIM's endpoint, which answers the id as a JSON number.
async fn send_compat(http_addr: SocketAddr) -> i64 {
    let r = http(
        http_addr,
        "POST",
        "/api/message/send?sender=sys&receiver=ids-compat&action=2&content=x",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // A JSON number that JavaScript reads exactly is one serde reads as an integer, and
    // within 2^53 - 1.
    r.json()["data"].as_i64().unwrap()
}

/// Every id is JavaScript-safe, on node 7, and each is larger than the one before.
fn check(ids: &[i64], after: i64) {
    let mut prev = after;
    for &id in ids {
        assert!(id <= MAX_SAFE_ID, "{id} is above 2^53 - 1");
        assert_eq!(id & ((1 << NODE_BITS) - 1), 7, "{id}: not node 7");
        assert!(id > prev, "{id} after {prev}");
        prev = id;
    }
}

/// The ids one run of the server gives: three batches of 1000 and one through CIM's endpoint.
async fn one_run(p: &ServerProcess, after: i64) -> i64 {
    let h = p.addr("http");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(send_batch(h, 1000).await);
    }
    ids.push(send_compat(h).await);
    check(&ids, after);
    *ids.last().unwrap()
}

#[tokio::test]
async fn ids_are_javascript_safe_and_increase_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("CIM_STORE__PATH", path.as_str()),
        ("CIM_STORE__DURABILITY", "os"),
        ("CIM_NODE_ID", "7"),
    ];

    let mut p = ServerProcess::start(&env);
    let last = one_run(&p, 0).await;
    assert!(dir.path().join(MARK_FILE).exists(), "no high-water mark");
    // A crash, right after the last answer.
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    let mut p = ServerProcess::start(&env);
    let last = one_run(&p, last).await;
    // A clean stop.
    assert!(p.terminate().success());

    let p = ServerProcess::start(&env);
    one_run(&p, last).await;
}

#[tokio::test]
async fn the_memory_store_gives_javascript_safe_ids_too() {
    let p = ServerProcess::start(&[("CIM_STORE__BACKEND", "memory"), ("CIM_NODE_ID", "7")]);
    one_run(&p, 0).await;
    // Nothing is written where the store would be.
    let data = p.data.as_ref().unwrap().path();
    assert!(!data.join(MARK_FILE).exists());
}

#[test]
fn a_node_id_above_255_stops_start_up_naming_the_key() {
    let (code, _, err) = run_once(&[], &[("CIM_NODE_ID", "256")]);
    assert_ne!(code, 0);
    assert!(err.contains("node_id") && err.contains("256"), "{err}");
}
