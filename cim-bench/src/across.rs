//! The scenarios that run across the nodes of a cluster cim-bench starts (`--cluster N`): a
//! redis-server on a free port of 127.0.0.1 (append-only file fsynced at every write) and nodes
//! a, b, c, … on it.
//!
//! - `push`: the publisher on node a, the subscribers spread over the other nodes.
//! - `failover`: clients of the SDK bound through dispatch; a publisher sends through node a's
//!   HTTP API; halfway the last node is killed with `kill -9`; every send answered `200` is
//!   checked against what reached the clients' applications.
//! - `storm`: clients of the SDK bound through dispatch; the last node is killed with `kill -9`;
//!   its clients reconnect through dispatch, while messages are sent to their accounts: the time
//!   until all are bound again, how evenly the survivors share the clients (most and fewest per
//!   node), and whether any message was lost.
//!
//! The clients ask dispatch at the survivors' HTTP APIs (each client from a different one first),
//! as they would behind a load balancer that takes a dead node out of its rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cim_client::DispatchUrl;
use cim_cluster::testing::RedisServer;
use serde_json::{Value, json};

use crate::ctx::{Ctx, say};
use crate::fleet::Fleet;
use crate::server::Server;

/// The most nodes `--cluster` starts (named a to z).
pub const MAX_NODES: usize = 26;

/// The cluster's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub nodes: usize,
    pub heartbeat_ms: u64,
    pub deadline_ms: u64,
}

/// The Redis of a cluster cim-bench started, and the names of its nodes (the nodes themselves
/// are the run's servers: the first, then the others in order).
pub struct Cluster {
    /// Held for the run: dropping it stops Redis.
    _redis: RedisServer,
    /// Redis, for its CPU figures.
    pub redis_proc: Server,
    pub names: Vec<String>,
    pub settings: Settings,
}

/// The settings of cluster node `name` (number `id`) on the Redis at `redis_url`.
pub fn node_env(
    redis_url: &str,
    name: &str,
    id: usize,
    heartbeat_ms: u64,
    deadline_ms: u64,
) -> Vec<(String, String)> {
    [
        ("CIM_CLUSTER__REDIS", redis_url.to_owned()),
        ("CIM_NODE", name.to_owned()),
        ("CIM_NODE_ID", id.to_string()),
        ("CIM_CLUSTER__HEARTBEAT_MS", heartbeat_ms.to_string()),
        ("CIM_CLUSTER__NODE_DEADLINE_MS", deadline_ms.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Cluster {
    /// Starts Redis and `settings.nodes` nodes of `bin`; returns the cluster and its nodes.
    pub fn start(bin: &Path, settings: Settings) -> anyhow::Result<(Cluster, Vec<Server>)> {
        if !(2..=MAX_NODES).contains(&settings.nodes) {
            bail!(
                "--cluster takes from 2 to {MAX_NODES} nodes, not {}",
                settings.nodes
            );
        }
        let redis = RedisServer::start();
        let url = redis.url();
        let mut names = Vec::new();
        let mut nodes = Vec::new();
        for (i, name) in ('a'..='z').take(settings.nodes).enumerate() {
            let name = name.to_string();
            let env = node_env(
                &url,
                &name,
                i + 1,
                settings.heartbeat_ms,
                settings.deadline_ms,
            );
            nodes.push(
                Server::spawn_with(bin.to_path_buf(), i + 1, env)
                    .with_context(|| format!("starting node {name}"))?,
            );
            names.push(name);
        }
        let first = nodes.first().map_or(([127, 0, 0, 1], 0).into(), |s| s.tcp);
        let redis_proc = Server::external(redis.pid(), first, None);
        Ok((
            Cluster {
                _redis: redis,
                redis_proc,
                names,
                settings,
            },
            nodes,
        ))
    }
}

/// The dispatch URLs of `nodes`.
pub fn dispatch_urls<'a>(
    nodes: impl IntoIterator<Item = &'a Server>,
) -> anyhow::Result<Vec<DispatchUrl>> {
    nodes
        .into_iter()
        .map(|s| {
            let http = s.http.context("a node without an HTTP API")?;
            Ok(format!("http://{http}").parse()?)
        })
        .collect()
}

/// The most and the fewest clients on any of `names` (0 for a node with none), and max/min.
pub fn spread(on: &BTreeMap<String, usize>, names: &[String]) -> (usize, usize, f64) {
    let counts: Vec<usize> = names
        .iter()
        .map(|n| on.get(n).copied().unwrap_or(0))
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    let ratio = if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    };
    (max, min, ratio)
}

/// Sends text messages through the HTTP API at `http` over `conns` keep-alive connections, to
/// the accounts `uids` round robin (message `k` to `uids[k % len]`), until `count` were sent
/// or `stop` is set. Returns the sends answered `200` as (index into `uids`, message id), and
/// how many were refused.
pub async fn publish_acked(
    http: SocketAddr,
    conns: usize,
    uids: Arc<Vec<(usize, String)>>,
    count: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<(Vec<(usize, i64)>, u64)> {
    if uids.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let (uids, stop, next, acked) = (
            Arc::clone(&uids),
            Arc::clone(&stop),
            Arc::clone(&next),
            Arc::clone(&acked),
        );
        tasks.push(tokio::spawn(async move {
            let mut api = cim_client::http::Api::connect(http).await?;
            let mut ok = Vec::new();
            let mut refused = 0u64;
            while !stop.load(Ordering::Acquire) {
                let k = next.fetch_add(1, Ordering::AcqRel);
                if k >= count {
                    break;
                }
                let Some((member, uid)) = uids.get((k % uids.len() as u64) as usize) else {
                    break;
                };
                let body = json!({ "receiver": uid, "action": "2", "content": format!("m{k}") });
                match api
                    .request("POST", "/api/v1/messages", None, Some(&body))
                    .await
                {
                    Ok(v) => {
                        let id = v
                            .get("id")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<i64>().ok())
                            .with_context(|| format!("an answer without an id: {v}"))?;
                        ok.push((*member, id));
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(_) => {
                        refused += 1;
                        // The connection may be gone with the error: a new one.
                        api = cim_client::http::Api::connect(http).await?;
                    }
                }
            }
            anyhow::Ok((ok, refused))
        }));
    }
    let mut all = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (ok, r) = t.await.context("a publisher panicked")??;
        all.extend(ok);
        refused += r;
    }
    Ok((all, refused))
}

/// Per-node counts as JSON.
pub fn counts_json(on: &BTreeMap<String, usize>) -> Value {
    Value::Object(on.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// Per-node counts as text: "a 3334, b 3333".
pub fn counts_text(on: &BTreeMap<String, usize>) -> String {
    on.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until every member in `moved` is bound on a node other than `dead`; fails after
/// `within`. Returns when that happened (since `since`).
pub async fn all_bound_again(
    fleet: &Fleet,
    moved: &[usize],
    dead: &str,
    since: Instant,
    within: Duration,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Duration> {
    loop {
        let back = moved
            .iter()
            .filter(|&&i| {
                fleet.members.get(i).is_some_and(|m| {
                    m.client.is_connected() && m.client.node().is_some_and(|n| n != dead)
                })
            })
            .count();
        bar.set_position(back as u64);
        if back == moved.len() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > within {
            bail!(
                "{back} of {} clients of node {dead} bound again within {:.0} s",
                moved.len(),
                within.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The nodes of the run: the first server, then the others.
fn nodes(ctx: &Ctx) -> Vec<&Server> {
    ctx.servers().collect()
}

fn cluster_of(ctx: &Ctx) -> anyhow::Result<(Vec<String>, Settings)> {
    let c = ctx
        .cluster
        .as_ref()
        .context("this scenario runs across a cluster: add --cluster NODES")?;
    Ok((c.names.clone(), c.settings))
}

/// The last node, killed by `failover` and `storm`, and its name.
fn kill_last(ctx: &mut Ctx) -> anyhow::Result<()> {
    let victim = ctx.more.last_mut().context("a cluster of one node")?;
    victim.kill()
}

/// `--cluster N push`: the publisher on node a, the subscribers round robin over the others.
pub async fn push(
    ctx: &Ctx,
    plan: crate::publish::Plan,
    via: crate::cli::Via,
    http_conns: usize,
) -> anyhow::Result<Value> {
    let (names, settings) = cluster_of(ctx)?;
    let redis = ctx.cluster.as_ref().map(|c| &c.redis_proc);
    let mut measured: Vec<(String, &Server)> = names
        .iter()
        .zip(nodes(ctx))
        .map(|(n, s)| (format!("node {n}"), s))
        .collect();
    measured.extend(redis.map(|r| ("redis".to_owned(), r)));
    let target = crate::push::Target {
        publisher: &ctx.server,
        subscribers: ctx.more.iter().map(|s| s.tcp).collect(),
        measured,
    };
    let others = names.get(1..).unwrap_or_default().join(", ");
    say(
        ctx,
        format!(
            "{} nodes: the publisher on node a, the subscribers on {others}",
            settings.nodes
        ),
    );
    let mut v = crate::push::push_to(ctx, &target, plan, via, http_conns).await?;
    if let Some(o) = v.as_object_mut() {
        o.insert("scenario".into(), json!("cluster push"));
        o.insert("nodes".into(), json!(settings.nodes));
        o.insert("publisher_on".into(), json!("a"));
        o.insert("subscribers_on".into(), json!(names.get(1..)));
    }
    Ok(v)
}

/// `--cluster N storm`: a reconnect storm through dispatch after the last node's death.
pub async fn storm(ctx: &mut Ctx, n: usize) -> anyhow::Result<Value> {
    let (names, settings) = cluster_of(ctx)?;
    ctx.check_fd_limits(n + 2)?;
    let dead = names.last().cloned().context("no nodes")?;
    let survivors: Vec<String> = names.iter().filter(|n| **n != dead).cloned().collect();
    let all = nodes(ctx);
    let urls = dispatch_urls(all.iter().copied().take(survivors.len()))?;
    let http = ctx.server.http.context("node a's HTTP API")?;
    let fleet = Fleet::open(&urls, n, "r", ctx.concurrency, ctx.json).await?;
    let before = fleet.on_nodes();
    let connect_seconds = fleet.connect_time.as_secs_f64();
    say(
        ctx,
        format!(
            "{n} clients bound through dispatch in {:.2} s: {}",
            fleet.connect_time.as_secs_f64(),
            counts_text(&before)
        ),
    );
    let moved: Vec<usize> = fleet
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.client.node().as_deref() == Some(dead.as_str()))
        .map(|(i, _)| i)
        .collect();
    // Messages to the accounts about to move, from before the kill until they are all back.
    let uids: Arc<Vec<(usize, String)>> = Arc::new(
        moved
            .iter()
            .filter_map(|&i| fleet.members.get(i).map(|m| (i, m.uid.clone())))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_acked(
        http,
        1,
        uids,
        u64::MAX,
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    while acked.load(Ordering::Acquire) < 100 && !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| kill_last(ctx))?;
    let killed = Instant::now();
    let bar = crate::pool::progress(moved.len() as u64, "re-binding through dispatch", ctx.json);
    let within = Duration::from_secs(120) + Duration::from_millis(settings.deadline_ms);
    let recovered = all_bound_again(&fleet, &moved, &dead, killed, within, &bar).await;
    bar.finish_and_clear();
    stop.store(true, Ordering::Release);
    let (sent, refused) = publisher.await.context("the publisher panicked")??;
    let recovered = recovered?;
    let after = fleet.on_nodes();
    let (max, min, ratio) = spread(&after, &survivors);
    let mut moved_to = BTreeMap::new();
    for m in moved.iter().filter_map(|&i| fleet.members.get(i)) {
        if let Some(node) = m.client.node() {
            *moved_to.entry(node).or_insert(0usize) += 1;
        }
    }
    let quiet = Duration::from_secs(30).max(Duration::from_millis(settings.deadline_ms * 3));
    let lost = fleet.wait_for(&sent, quiet).await;
    let failed = fleet.tally.failed_attempts.load(Ordering::Acquire);
    let failed_named = fleet.tally.failed_named.load(Ordering::Acquire);
    let failed_fallback = fleet.tally.failed_fallback.load(Ordering::Acquire);
    let dropped = fleet.duplicates_dropped();
    let twice = fleet.tally.twice.load(Ordering::Acquire);
    say(
        ctx,
        format!(
            "storm: node {dead} killed with {} clients; all bound again through dispatch after \
             {:.2} s; moved to {}",
            moved.len(),
            recovered.as_secs_f64(),
            counts_text(&moved_to)
        ),
    );
    say(
        ctx,
        format!(
            "failed attempts, retried after a back-off: {failed} ({failed_named} to a node \
             dispatch named, {failed_fallback} to the last good address when dispatch could not \
             be asked)"
        ),
    );
    say(
        ctx,
        format!(
            "spread over the survivors: {} — most {max}, fewest {min} per node (max/min {ratio:.3})",
            counts_text(&after)
        ),
    );
    say(
        ctx,
        format!(
            "messages to its accounts meanwhile: {} answered 200 ({refused} refused), {lost} \
             lost; {dropped} copies dropped by the clients, {twice} reached an application \
             twice (heartbeat {} ms, deadline {} ms)",
            sent.len(),
            settings.heartbeat_ms,
            settings.deadline_ms
        ),
    );
    fleet.close().await;
    Ok(json!({
        "scenario": "cluster storm", "nodes": settings.nodes, "clients": n,
        "connect_seconds": connect_seconds, "killed": dead,
        "moved": moved.len(), "recovery_seconds": recovered.as_secs_f64(),
        "failed_attempts": failed, "failed_named": failed_named,
        "failed_fallback": failed_fallback, "before": counts_json(&before), "after": counts_json(&after),
        "moved_to": counts_json(&moved_to), "max_per_node": max, "min_per_node": min,
        "max_over_min": ratio, "sent": sent.len(), "refused": refused, "lost": lost,
        "duplicates_dropped": dropped, "duplicates_delivered": twice,
        "heartbeat_ms": settings.heartbeat_ms, "deadline_ms": settings.deadline_ms,
    }))
}

/// `--cluster N failover`: the last node killed with `kill -9` in the middle of a push.
pub async fn failover(ctx: &mut Ctx, n: usize, m: u64, http_conns: usize) -> anyhow::Result<Value> {
    let (names, settings) = cluster_of(ctx)?;
    ctx.check_fd_limits(n + http_conns + 2)?;
    let dead = names.last().cloned().context("no nodes")?;
    let all = nodes(ctx);
    let urls = dispatch_urls(all.iter().copied().take(names.len() - 1))?;
    let http = ctx.server.http.context("node a's HTTP API")?;
    let fleet = Fleet::open(&urls, n, "f", ctx.concurrency, ctx.json).await?;
    let before = fleet.on_nodes();
    say(
        ctx,
        format!(
            "{n} clients bound through dispatch: {}; pushing {m} messages through node a's HTTP \
             API, node {dead} killed halfway",
            counts_text(&before)
        ),
    );
    let moved: Vec<usize> = fleet
        .members
        .iter()
        .enumerate()
        .filter(|(_, mb)| mb.client.node().as_deref() == Some(dead.as_str()))
        .map(|(i, _)| i)
        .collect();
    let uids: Arc<Vec<(usize, String)>> = Arc::new(
        fleet
            .members
            .iter()
            .enumerate()
            .map(|(i, mb)| (i, mb.uid.clone()))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let publisher = tokio::spawn(publish_acked(
        http,
        http_conns,
        uids,
        m,
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    while acked.load(Ordering::Acquire) < m / 2 && !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::task::block_in_place(|| kill_last(ctx))?;
    let killed = Instant::now();
    let acked_at_kill = acked.load(Ordering::Acquire);
    // The push goes on while the dead node's clients come back.
    let bar = crate::pool::progress(moved.len() as u64, "re-binding through dispatch", ctx.json);
    let within = Duration::from_secs(120) + Duration::from_millis(settings.deadline_ms);
    let (published, recovered) = tokio::join!(
        async {
            let done = publisher.await;
            (done, start.elapsed())
        },
        all_bound_again(&fleet, &moved, &dead, killed, within, &bar)
    );
    bar.finish_and_clear();
    let (published, push_time) = published;
    let (sent, refused) = published.context("the publisher panicked")??;
    let recovered = recovered?;
    let quiet = Duration::from_secs(30).max(Duration::from_millis(settings.deadline_ms * 3));
    let lost = fleet.wait_for(&sent, quiet).await;
    let dropped = fleet.duplicates_dropped();
    let twice = fleet.tally.twice.load(Ordering::Acquire);
    let after = fleet.on_nodes();
    say(
        ctx,
        format!(
            "failover: {} of {m} sends answered 200 in {:.2} s ({refused} refused), node {dead} \
             killed after {acked_at_kill}; its {} clients bound again through dispatch {:.2} s \
             after the kill: {}",
            sent.len(),
            push_time.as_secs_f64(),
            moved.len(),
            recovered.as_secs_f64(),
            counts_text(&after)
        ),
    );
    say(
        ctx,
        format!(
            "every answered send checked: {lost} lost; {dropped} copies dropped by the clients, \
             {twice} reached an application twice"
        ),
    );
    fleet.close().await;
    Ok(json!({
        "scenario": "cluster failover", "nodes": settings.nodes, "clients": n, "messages": m,
        "sent": sent.len(), "refused": refused, "acked_at_kill": acked_at_kill, "killed": dead,
        "moved": moved.len(), "recovery_seconds": recovered.as_secs_f64(),
        "push_seconds": push_time.as_secs_f64(), "lost": lost,
        "duplicates_dropped": dropped, "duplicates_delivered": twice,
        "before": counts_json(&before), "after": counts_json(&after),
        "heartbeat_ms": settings.heartbeat_ms, "deadline_ms": settings.deadline_ms,
    }))
}
