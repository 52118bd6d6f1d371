//! Cluster nodes for the end-to-end tests: real `cim-server` processes on a real `redis-server`
//! (started by the test on a free port, killed by pid), with quick heartbeats and a short
//! deadline, and what the tests ask of them.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, Message};
use tokio::time::Instant;

use super::process::{JSON, ServerProcess, http, send, send_ok};
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

/// A synchronous connection to the test's Redis, for looking at keys.
pub fn redis_conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// The registered node id of the node named `name`.
pub fn nid_of(redis: &RedisServer, name: &str) -> String {
    let mut c = redis_conn(redis);
    let nids: Vec<String> = redis::cmd("ZRANGE")
        .arg("cim:nodes")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    nids.into_iter()
        .find(|n| n.split('#').next() == Some(name))
        .unwrap_or_else(|| panic!("node {name} is not registered"))
}

/// How many entries were ever added to a node's inbox (0 when it never had one).
pub fn inbox_added(redis: &RedisServer, nid: &str) -> i64 {
    let mut c = redis_conn(redis);
    let info: redis::RedisResult<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(format!("cim:n:{nid}:in"))
        .query(&mut c);
    match info {
        Ok(map) => match map.get("entries-added") {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XINFO entries-added: {other:?}"),
        },
        Err(e) if e.to_string().contains("no such key") => 0,
        Err(e) => panic!("XINFO: {e}"),
    }
}

/// The next message on `c` (PINGs skipped, and answered so the connection stays up).
pub async fn next_message(c: &mut TcpClient) -> Option<Message> {
    loop {
        match c.next().await? {
            Frame::Message(m) => return Some(m),
            Frame::Ping => c.send(Frame::Pong).await,
            _ => {}
        }
    }
}

/// Proves that nothing else was queued to `c`: a marker sent now through `via` is the next
/// message it gets.
pub async fn nothing_else(c: &mut TcpClient, uid: &str, via: SocketAddr) {
    let id = send_ok(via, uid, "marker").await;
    let m = next_message(c).await.expect("the marker");
    assert_eq!(
        (m.id, m.content.as_str()),
        (id, "marker"),
        "{uid} got {m:?}"
    );
}

/// Sends until a send is answered 200 (bounded): while Redis comes back, a send may be
/// refused with 503, never answered otherwise. Returns the id.
pub async fn send_until_ok(h: SocketAddr, to: &str, content: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(h, to, content).await;
        assert!(r.status == 200 || r.status == 503, "{r:?}");
        if r.status == 200 {
            return r.json()["id"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "sends never succeeded again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pushes `content` to tag `grp` through the HTTP API at `h`; returns how many it reached.
pub async fn tag_push(h: SocketAddr, content: &str) -> u64 {
    let r = http(
        h,
        "POST",
        "/api/v1/tags/grp/messages",
        &[JSON],
        &format!(r#"{{"content":"{content}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["delivered"].as_u64().unwrap()
}

/// Collects messages for `uid` from `conn`, and — once it is cut off — from a connection bound
/// on `rebind`, until every id the sender reports (`want`, set once it is done) arrived.
/// Returns how many copies of each id came.
pub async fn collect_across_rebind(
    mut conn: TcpClient,
    rebind: SocketAddr,
    uid: &str,
    want: tokio::sync::watch::Receiver<Option<Vec<i64>>>,
) -> HashMap<i64, usize> {
    let mut got: HashMap<i64, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(all) = &*want.borrow()
            && all.iter().all(|id| got.contains_key(id))
        {
            return got;
        }
        if Instant::now() >= deadline {
            let missing: Vec<usize> = want.borrow().as_ref().map_or_else(Vec::new, |all| {
                all.iter()
                    .enumerate()
                    .filter(|(_, id)| !got.contains_key(id))
                    .map(|(i, _)| i)
                    .collect()
            });
            panic!(
                "{} messages missing (by send index, first and last: {:?} {:?})",
                missing.len(),
                missing.first(),
                missing.last()
            );
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.next()).await {
            Ok(Some(Frame::Message(m))) => *got.entry(m.id).or_default() += 1,
            Ok(Some(Frame::Ping)) => conn.send(Frame::Pong).await,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => {
                // Cut off: bind again elsewhere.
                conn = StreamClient::connect(rebind, BinaryCodec::new()).await;
                conn.bind(uid, "android", "p").await;
            }
        }
    }
}
