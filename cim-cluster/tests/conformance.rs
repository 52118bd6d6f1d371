//! The engine's conformance suites on the cluster, against a real redis-server: the session and
//! router suite with one node and with three nodes sharing one Redis, and the store suite with a
//! Redis restart (`kill -9`, then started again on the same directory) in the middle.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cim_cluster::testing::RedisServer;
use cim_cluster::{Cluster, ClusterConfig, RedisStore};
use cim_core::testing::sessions::{Node, conformance};

static SYSTEMS: AtomicUsize = AtomicUsize::new(0);

/// `n` nodes of a fresh system (its own key prefix) on the Redis at `url`.
async fn system(url: &str, n: usize) -> Vec<Node> {
    let prefix = format!("t{}:", SYSTEMS.fetch_add(1, Ordering::Relaxed));
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("node-{i}");
        let mut config = ClusterConfig::new(url, &name, i as u16);
        config.prefix = prefix.clone();
        config.heartbeat = Duration::from_millis(100);
        config.deadline = Duration::from_millis(1000);
        let cluster = Cluster::connect(config).await.unwrap();
        let sessions = cluster.sessions();
        sessions.start().await.unwrap();
        nodes.push(Node {
            name,
            sessions,
            router: cluster.router(),
            store: cluster.store(),
        });
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_conforms() {
    let redis = RedisServer::start();
    let url = redis.url();
    conformance(|| system(&url, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_conform() {
    let redis = RedisServer::start();
    let url = redis.url();
    conformance(|| system(&url, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms_across_a_redis_restart() {
    let redis = Arc::new(std::sync::Mutex::new(RedisServer::start()));
    let url = redis.lock().unwrap().url();
    let count = AtomicUsize::new(0);
    let make = || {
        let url = url.clone();
        let prefix = format!("s{}:", count.fetch_add(1, Ordering::Relaxed));
        async move {
            RedisStore::open(&url, &prefix, 5, Duration::from_secs(2))
                .await
                .unwrap()
        }
    };
    let reopen = |old: RedisStore| {
        let redis = Arc::clone(&redis);
        let url = url.clone();
        let prefix = old.prefix().to_owned();
        drop(old);
        async move {
            tokio::task::spawn_blocking(move || redis.lock().unwrap().restart())
                .await
                .unwrap();
            RedisStore::open(&url, &prefix, 5, Duration::from_secs(2))
                .await
                .unwrap()
        }
    };
    cim_core::testing::store::conformance(make, Some(reopen), 5).await;
}
