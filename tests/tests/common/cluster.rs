//! Cluster nodes for the end-to-end tests: real `cim-server` processes on a real `redis-server`
//! (started by the test on a free port, killed by pid), with quick heartbeats and a short
//! deadline, and what the tests ask of them.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;

use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;

use super::process::{ServerProcess, http};
use super::{StreamClient, TcpClient};

/// The nodes' `cluster.heartbeat_ms`.
pub const HEARTBEAT_MS: &str = "100";
/// The nodes' `cluster.node_deadline_ms`: a killed node is reaped after about this long.
pub const DEADLINE_MS: u64 = 1000;

/// Starts node `name` (number `id`) of the cluster on `redis`.
pub fn node(redis: &RedisServer, name: &str, id: u16) -> ServerProcess {
    node_with(redis, name, id, &[])
}

/// Starts node `name` (number `id`) of the cluster on `redis`, with more settings (which win).
pub fn node_with(
    redis: &RedisServer,
    name: &str,
    id: u16,
    extra: &[(&str, &str)],
) -> ServerProcess {
    let url = redis.url();
    let id = id.to_string();
    let deadline = DEADLINE_MS.to_string();
    let mut env = vec![
        ("CIM_CLUSTER__REDIS", url.as_str()),
        ("CIM_NODE", name),
        ("CIM_NODE_ID", id.as_str()),
        ("CIM_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS),
        ("CIM_CLUSTER__NODE_DEADLINE_MS", deadline.as_str()),
    ];
    env.extend_from_slice(extra);
    ServerProcess::start(&env)
}

/// A raw binary-protocol connection to `p`.
pub async fn client(p: &ServerProcess) -> TcpClient {
    StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await
}

/// A raw binary-protocol connection to `p`, bound as `uid`.
pub async fn bound(p: &ServerProcess, uid: &str, channel: &str, device: &str) -> TcpClient {
    let mut c = client(p).await;
    c.bind(uid, channel, device).await;
    c
}

/// The sessions of `uid` as the node whose HTTP API is `via` lists them: (node, channel,
/// device), sorted.
pub async fn sessions_at(via: SocketAddr, uid: &str) -> Vec<(String, String, String)> {
    let r = http(
        via,
        "GET",
        &format!("/api/v1/accounts/{uid}/sessions"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut out: Vec<_> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_owned(),
                s["channel"].as_str().unwrap().to_owned(),
                s["deviceId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The sessions of `uid` as node `p` lists them.
pub async fn sessions_of(p: &ServerProcess, uid: &str) -> Vec<(String, String, String)> {
    sessions_at(p.addr("http"), uid).await
}

/// The nodes holding `uid`'s sessions, as the node whose HTTP API is `via` lists them.
pub async fn nodes_of(via: SocketAddr, uid: &str) -> Vec<String> {
    sessions_at(via, uid)
        .await
        .into_iter()
        .map(|(node, _, _)| node)
        .collect()
}

/// What `GET /api/v1/dispatch` answers on `p` (which must be `200`).
pub async fn dispatch(p: &ServerProcess) -> serde_json::Value {
    let r = http(p.addr("http"), "GET", "/api/v1/dispatch", &[], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}
