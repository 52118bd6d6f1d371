//! The `broadcast` scenario: one message to all N connected clients through the HTTP API, in
//! rounds; deliveries per second.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use serde_json::json;

use crate::ctx::{Ctx, say};
use crate::pool::Pool;
use crate::stats::{describe, percentiles, rate};

/// `idle`: how long the clients idle before each round (else 100 ms between rounds).
pub async fn broadcast(
    ctx: &Ctx,
    n: usize,
    count: u32,
    burst: u32,
    idle: Option<Duration>,
) -> anyhow::Result<Value> {
    ctx.single("broadcast")?;
    ctx.check_fd_limits(n + 1)?;
    let http = ctx
        .server
        .http
        .context("broadcast needs the server's HTTP address (--http)")?;
    let pool = Pool::open(ctx.pool_options(n, "b", false)).await?;
    let counters = std::sync::Arc::clone(&pool.counters);
    let mut api = cim_client::http::Api::connect(http)
        .await
        .with_context(|| format!("connecting to the HTTP API at {http}"))?;
    let cpu0 = ctx.server.cpu_seconds();
    let mut rounds = Vec::new();
    let per_round = n as u64 * u64::from(burst);
    for k in 1..=count {
        if let Some(idle) = idle {
            tokio::time::sleep(idle).await;
        }
        let sent_us = counters.clock.micros();
        for _ in 0..burst {
            let body = json!({ "action": "2", "content": counters.clock.stamp(100) });
            api.request("POST", "/api/v1/broadcast", None, Some(&body))
                .await?;
        }
        let target = per_round * u64::from(k);
        let got = pool.wait_received(target, Duration::from_secs(60)).await;
        if got < target {
            bail!("broadcast round {k}: {got} of {target} deliveries arrived within 60 s");
        }
        let took = Duration::from_micros(
            counters
                .last_at
                .load(Ordering::Acquire)
                .saturating_sub(sent_us),
        );
        rounds.push(took);
        if idle.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cpu = ctx.server.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let best = rounds.iter().min().copied().unwrap_or_default();
    let total: Duration = rounds.iter().sum();
    let per_sec = rate(per_round * u64::from(count), total);
    let latency = counters.latency.take()?;
    say(
        ctx,
        format!(
            "broadcast: {count} rounds of {burst} × {n} deliveries; {per_sec:.0} deliveries/s \
             over all rounds, best round {:.1} ms ({:.0}/s)",
            best.as_secs_f64() * 1e3,
            rate(per_round, best)
        ),
    );
    say(ctx, format!("latency: {}", describe(&latency)));
    if let Some(cpu) = cpu {
        say(
            ctx,
            format!(
                "server CPU: {cpu:.2} s, {:.2} s per million deliveries",
                cpu / (per_round as f64 * f64::from(count) / 1e6)
            ),
        );
    }
    pool.close();
    Ok(json!({
        "scenario": "broadcast", "connections": n, "count": count, "burst": burst,
        "idle_ms": idle.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "deliveries_per_sec": per_sec, "latency": percentiles(&latency),
        "round_ms": rounds.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "server_cpu_seconds": cpu,
    }))
}
