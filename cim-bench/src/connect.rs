//! The `connect` and `idle` scenarios: N bound connections, here or shared among worker
//! processes; how fast they bind, and the server's memory per connection.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ctx::{Ctx, say};
use crate::stats::{describe, percentiles, rate};

pub async fn connect(ctx: &Ctx, n: usize) -> anyhow::Result<Value> {
    ctx.check_fd_limits(n)?;
    let cpu0 = ctx.cpu_seconds();
    let held = ctx.hold(n, "c").await?;
    let cpu = ctx.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let connect_time = held.connect_time();
    let bound = held.bound();
    let per_sec = rate(bound as u64, connect_time);
    say(
        ctx,
        format!(
            "connect: {bound} bound in {:.2} s: {per_sec:.0} binds/s; connect+bind {}",
            connect_time.as_secs_f64(),
            describe(held.bind_latency())
        ),
    );
    if let Some(cpu) = cpu {
        say(ctx, format!("server CPU: {cpu:.2} s"));
    }
    let v = json!({
        "scenario": "connect", "tls": ctx.tls.is_some(), "connections": bound, "procs": ctx.procs,
        "servers": 1 + ctx.more.len(),
        "seconds": connect_time.as_secs_f64(), "binds_per_sec": per_sec,
        "bind_latency": percentiles(held.bind_latency()), "server_cpu_seconds": cpu,
    });
    held.close();
    Ok(v)
}

pub async fn idle(ctx: &Ctx, n: usize, hold: u64) -> anyhow::Result<Value> {
    ctx.check_fd_limits(n)?;
    if !ctx.server.has_pid() {
        bail!("idle needs the server's pid (--pid) to read its memory");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ctx.rss().context("reading the server's memory")?;
    let held = ctx.hold(n, "i").await?;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = ctx.rss().context("reading the server's memory")?;
    let bound = held.bound();
    let per = after.saturating_sub(before) as f64 / bound.max(1) as f64;
    let servers = 1 + ctx.more.len();
    let whose = if servers > 1 {
        format!("{servers} servers' RSS")
    } else {
        "server RSS".to_owned()
    };
    say(
        ctx,
        format!(
            "idle: {bound} bound connections; {whose} {:.1} MiB before, {:.1} MiB after: \
             {per:.0} bytes per connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        ),
    );
    held.close();
    Ok(json!({
        "scenario": "idle", "tls": ctx.tls.is_some(), "connections": bound, "procs": ctx.procs, "servers": servers,
        "rss_before": before, "rss_after": after, "bytes_per_connection": per,
    }))
}
