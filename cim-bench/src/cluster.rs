//! The `cluster` scenario: two nodes on a Redis that cim-bench starts, a cross-node push beside
//! the same push on a single node, binds across both nodes, and how long a killed node's sessions
//! take to vanish from the other's view.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::Via;
use crate::ctx::{Ctx, say};
use crate::pool::Pool;
use crate::push::{Target, push, push_to};
use crate::server::Server;
use crate::stats::{describe, percentiles, rate};
use crate::{across, publish};

/// The cluster scenario's settings beside the push plan.
pub struct ClusterPlan {
    pub via: Via,
    pub http_conns: usize,
    pub binds: usize,
    pub heartbeat_ms: u64,
    pub deadline_ms: u64,
}

pub async fn cluster(ctx: &Ctx, plan: publish::Plan, c: ClusterPlan) -> anyhow::Result<Value> {
    ctx.single("cluster")?;
    let bin = ctx
        .bin
        .clone()
        .context("the cluster scenario starts its nodes itself: leave out --addr")?;
    say(ctx, "single node:");
    let single = push(ctx, plan, c.via, c.http_conns).await?;
    let redis = tokio::task::block_in_place(cim_cluster::testing::RedisServer::start);
    let node_env =
        |name: &str, id| across::node_env(&redis.url(), name, id, c.heartbeat_ms, c.deadline_ms);
    let a = Server::spawn_with(bin.clone(), 1, node_env("a", 1))?;
    let mut b = Server::spawn_with(bin, 2, node_env("b", 2))?;
    let redis_proc = Server::external(redis.pid(), a.tcp, None);
    say(
        ctx,
        "cluster, the publisher on node a, the subscribers on node b:",
    );
    let cross = {
        let target = Target {
            publisher: &a,
            subscribers: vec![b.tcp],
            measured: vec![
                ("node a".to_owned(), &a),
                ("node b".to_owned(), &b),
                ("redis".to_owned(), &redis_proc),
            ],
        };
        push_to(ctx, &target, plan, c.via, c.http_conns).await?
    };
    let per_sec = |v: &Value| v.get("delivered_per_sec").and_then(Value::as_f64);
    let ratio = per_sec(&cross).unwrap_or(0.0) / per_sec(&single).unwrap_or(f64::MAX).max(1.0);
    say(
        ctx,
        format!(
            "cross-node push: {:.0} % of the single node's rate",
            ratio * 100.0
        ),
    );
    // Binds on the single node, then across both nodes (half each).
    ctx.check_fd_limits(c.binds)?;
    let single_pool = Pool::open(ctx.pool_options(c.binds, "bind1-", false)).await?;
    let single_binds_per_sec = rate(c.binds as u64, single_pool.connect_time);
    single_pool.close();
    say(
        ctx,
        format!("binds on the single node: {single_binds_per_sec:.0} binds/s"),
    );
    let mut options = ctx.pool_options(c.binds, "bind", false);
    options.servers = vec![a.tcp, b.tcp];
    let cpu0 = [&a, &b, &redis_proc]
        .iter()
        .map(|s| s.cpu_seconds())
        .sum::<Option<f64>>();
    let pool = Pool::open(options).await?;
    let binds_per_sec = rate(c.binds as u64, pool.connect_time);
    let bind_cpu = [&a, &b, &redis_proc]
        .iter()
        .map(|s| s.cpu_seconds())
        .sum::<Option<f64>>()
        .zip(cpu0)
        .map(|(x, y)| x - y);
    say(
        ctx,
        format!(
            "binds across two nodes: {} in {:.2} s, {binds_per_sec:.0} binds/s; latency {}",
            c.binds,
            pool.connect_time.as_secs_f64(),
            describe(&pool.bind_latency)
        ),
    );
    // Node b dies: how long until node a no longer lists its sessions.
    let http = a.http.context("node a's HTTP address")?;
    let on_a = c.binds.div_ceil(2) as u64;
    b.kill()?;
    let killed = Instant::now();
    let mut api = cim_client::http::Api::connect(http).await?;
    let vanished = loop {
        let v = api
            .request("GET", "/api/v1/sessions?limit=1", None, None)
            .await?;
        if v.get("total").and_then(Value::as_u64) == Some(on_a) {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_millis(c.deadline_ms) + Duration::from_secs(30) {
            bail!("node b's sessions never vanished: {v}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    say(
        ctx,
        format!(
            "node b killed: its {} sessions vanished from node a's view after {:.2} s \
             (heartbeat {} ms, deadline {} ms)",
            c.binds - on_a as usize,
            vanished.as_secs_f64(),
            c.heartbeat_ms,
            c.deadline_ms
        ),
    );
    let bind_latency = percentiles(&pool.bind_latency);
    pool.close();
    Ok(json!({
        "scenario": "cluster", "single_node": single, "cross_node": cross,
        "cross_node_ratio": ratio,
        "binds": c.binds, "binds_per_sec": binds_per_sec, "bind_cpu_seconds": bind_cpu,
        "single_node_binds_per_sec": single_binds_per_sec,
        "bind_latency": bind_latency,
        "vanish_seconds": vanished.as_secs_f64(),
        "heartbeat_ms": c.heartbeat_ms, "deadline_ms": c.deadline_ms,
    }))
}
