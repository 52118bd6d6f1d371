//! The `push` scenario: N subscribers, one publisher sending M messages round robin, over a
//! socket or the HTTP API; the delivery rate, latency and CPU per million deliveries.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::Via;
use crate::ctx::{Ctx, say};
use crate::pool::{self, Pool};
use crate::publish;
use crate::server::{self, Server};
use crate::stats::{describe, percentiles, rate};

pub async fn push(
    ctx: &Ctx,
    plan: publish::Plan,
    via: Via,
    http_conns: usize,
) -> anyhow::Result<Value> {
    ctx.single("push")?;
    let target = Target {
        publisher: &ctx.server,
        subscribers: vec![ctx.server.tcp],
        measured: vec![("server".to_owned(), &ctx.server)],
    };
    push_to(ctx, &target, plan, via, http_conns).await
}

/// Where a push runs: the node the publisher sends to, the nodes the subscribers bind on, and
/// the processes whose CPU counts.
pub struct Target<'a> {
    pub publisher: &'a Server,
    pub subscribers: Vec<SocketAddr>,
    /// The processes whose CPU counts, by name.
    pub measured: Vec<(String, &'a Server)>,
}

impl Target<'_> {
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.measured.iter().map(|(_, s)| s.cpu_seconds()).sum()
    }

    pub fn cpu_each(&self) -> Vec<Option<f64>> {
        self.measured.iter().map(|(_, s)| s.cpu_seconds()).collect()
    }
}

pub async fn push_to(
    ctx: &Ctx,
    target: &Target<'_>,
    plan: publish::Plan,
    via: Via,
    http_conns: usize,
) -> anyhow::Result<Value> {
    let publish::Plan {
        n,
        m,
        per_sec,
        size,
        batch,
    } = plan;
    ctx.check_fd_limits(n + http_conns)?;
    let mut options = ctx.pool_options(n, "s", false);
    options.servers.clone_from(&target.subscribers);
    let pool = Pool::open(options).await?;
    let counters = std::sync::Arc::clone(&pool.counters);
    let cpu0 = target.cpu_seconds();
    let each0 = target.cpu_each();
    let own0 = server::own_cpu_seconds();
    let start_us = counters.clock.micros();
    let bar = pool::progress(m, "pushing", ctx.json);
    let publisher = match via {
        Via::Socket => tokio::spawn(publish::socket(
            target.publisher.tcp,
            ctx.tls.clone(),
            plan,
            std::sync::Arc::clone(&counters),
        )),
        Via::Http => {
            let http = target
                .publisher
                .http
                .context("push --via http needs the server's HTTP address (--http)")?;
            tokio::spawn(publish::http(
                http,
                http_conns,
                plan,
                std::sync::Arc::clone(&counters),
            ))
        }
    };
    // Progress while the messages arrive; give up after 30 s without progress.
    let mut last = (0, Instant::now());
    loop {
        let got = pool.wait_received(m, Duration::from_millis(200)).await;
        bar.set_position(got);
        if got >= m {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        if publisher.is_finished() && got == last.0 && last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    bar.finish_and_clear();
    let sent = match publisher.await {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => return Err(e.context("the publisher failed")),
        Err(e) => bail!("the publisher panicked: {e}"),
    };
    let received = counters.received.load(Ordering::Acquire);
    let end_us = counters.last_at.load(Ordering::Acquire);
    let cpu = target.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let own = server::own_cpu_seconds().zip(own0).map(|(a, b)| a - b);
    let cpu_by_process: serde_json::Map<String, Value> = target
        .measured
        .iter()
        .zip(target.cpu_each().into_iter().zip(each0))
        .map(|((name, _), (now, before))| {
            (name.clone(), json!(now.zip(before).map(|(x, y)| x - y)))
        })
        .collect();
    let elapsed = Duration::from_micros(end_us.saturating_sub(start_us));
    let latency = counters.latency.take()?;
    let delivered_per_sec = rate(received, elapsed);
    let cpu_per_million = cpu.map(|c| c / (received.max(1) as f64 / 1e6));
    let how = match via {
        Via::Socket => "socket publisher".to_owned(),
        Via::Http if batch > 1 => {
            format!("HTTP publisher, {http_conns} connections, batches of {batch}")
        }
        Via::Http => format!("HTTP publisher, {http_conns} connections"),
    };
    let pace = if per_sec == 0 {
        "unbounded".to_owned()
    } else {
        format!("at {per_sec}/s")
    };
    say(
        ctx,
        format!(
            "push ({how}, {pace}): {received} of {sent} delivered to {n} subscribers in {:.2} s: \
             {delivered_per_sec:.0} msgs/s",
            elapsed.as_secs_f64()
        ),
    );
    say(ctx, format!("latency: {}", describe(&latency)));
    if let (Some(cpu), Some(per_m)) = (cpu, cpu_per_million) {
        say(
            ctx,
            format!("server CPU: {cpu:.2} s, {per_m:.2} s per million deliveries"),
        );
        if target.measured.len() > 1 {
            let each: Vec<String> = cpu_by_process
                .iter()
                .map(|(k, v)| format!("{k} {:.2} s", v.as_f64().unwrap_or(0.0)))
                .collect();
            say(ctx, format!("  of which {}", each.join(", ")));
        }
    }
    if let Some(own) = own {
        say(ctx, format!("generator CPU: {own:.2} s"));
    }
    if received < sent {
        say(
            ctx,
            format!("LOST: {} messages never arrived", sent - received),
        );
    }
    pool.close();
    Ok(json!({
        "scenario": "push", "tls": ctx.tls.is_some(), "subscribers": n, "sent": sent, "received": received,
        "via": how, "rate": per_sec, "size": size,
        "seconds": elapsed.as_secs_f64(), "delivered_per_sec": delivered_per_sec,
        "latency": percentiles(&latency), "server_cpu_seconds": cpu,
        "cpu_seconds_by_process": cpu_by_process,
        "server_cpu_seconds_per_million": cpu_per_million,
        "generator_cpu_seconds": own,
    }))
}
