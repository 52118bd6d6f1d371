//! `cim-bench`: a load generator for cim-rs (and CIM) servers.
//!
//! It speaks CIM's binary protocol directly (one small task per connection), starts the server
//! itself (or measures one given by address and pid), and reports rates, latency percentiles
//! from an HDR histogram, the server's resident memory and its CPU seconds (from /proc).
//!
//! ```sh
//! cargo build --release -p cim-server -p cim-bench
//! target/release/cim-bench connect -n 10000
//! target/release/cim-bench idle -n 10000
//! target/release/cim-bench push -n 1000 -m 1000000
//! target/release/cim-bench push -n 1000 -m 200000 --rate 20000
//! target/release/cim-bench broadcast -n 10000 --count 5
//! target/release/cim-bench broadcast -n 10000 --count 3 --burst 50
//! target/release/cim-bench storm -n 10000
//! target/release/cim-bench --tls idle -n 10000          # every connection over TLS
//! target/release/cim-bench --tls push -n 1000 -m 1000000
//! # two cluster nodes on a redis-server it starts, beside the same push on one node
//! target/release/cim-bench cluster -n 1000 -m 300000
//! # three nodes it starts: the publisher on a, subscribers on b and c; a node killed mid-push;
//! # a reconnect storm through dispatch after a node's death
//! target/release/cim-bench --cluster 3 push -n 1000 -m 300000
//! target/release/cim-bench --cluster 3 failover -n 1000 -m 100000
//! target/release/cim-bench --cluster 3 storm -n 10000
//! # past one process's open-file limit: three generator processes, three servers
//! target/release/cim-bench --procs 3 --servers 3 connect -n 50000
//! ```

/// The generator allocates per message too; mimalloc leaves more of the machine to the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod across;
mod broadcast;
mod cli;
mod cluster;
mod conn;
mod connect;
mod ctx;
mod fleet;
mod held;
mod pool;
mod publish;
mod push;
mod server;
mod spread;
mod stats;
mod storm;
mod tls;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;

use crate::cli::{Cli, Scenario};
use crate::cluster::ClusterPlan;
use crate::conn::Sources;
use crate::ctx::{Ctx, finish};
use crate::pool::Options;
use crate::server::Server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cim-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cim-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = cli.common;
    if let Scenario::Worker {
        targets,
        first,
        n,
        prefix,
    } = cli.scenario
    {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let sources = if c.sources == 0 { 1 } else { c.sources };
        return spread::worker(Options {
            servers: targets,
            n,
            first,
            sources: Sources::loopback(sources),
            concurrency: c.concurrency,
            reconnect: false,
            uid_prefix: prefix,
            quiet: true,
            tls: None,
        })
        .await;
    }
    if c.tls && (c.procs > 1 || c.servers > 1) {
        bail!("--tls runs with one server and one generator process");
    }
    if c.cluster.is_some() && (c.tls || c.procs > 1 || c.servers > 1 || c.addr.is_some()) {
        bail!(
            "--cluster starts its nodes itself and runs in one generator process, without TLS: \
             leave out --addr, --servers, --procs and --tls"
        );
    }
    if c.cluster.is_some()
        && !matches!(
            cli.scenario,
            Scenario::Push { .. } | Scenario::Failover { .. } | Scenario::Storm { .. }
        )
    {
        bail!("with --cluster the scenarios are push, failover and storm");
    }
    let mut nodes_of_cluster = None;
    let mut more = Vec::new();
    let mut tls = None;
    let mut server_bin = None;
    let server = match c.addr {
        Some(_) if c.servers > 1 => {
            bail!("--servers starts the servers itself: leave out --addr")
        }
        Some(addr) => {
            if c.tls {
                let ca =
                    c.ca.as_deref()
                        .context("--tls with --addr needs --ca FILE: the CA to trust")?;
                tls = Some(tls::Tls::trusting(ca, &addr.ip().to_string())?);
            }
            Server::external(c.pid, addr, c.http)
        }
        None => {
            let bin = match c.server_bin {
                Some(b) => b,
                None => std::env::current_exe()?
                    .with_file_name(format!("cim-server{}", std::env::consts::EXE_SUFFIX)),
            };
            if !bin.exists() {
                bail!(
                    "{} not found: build it (cargo build --release -p cim-server) or pass \
                     --server-bin or --addr",
                    bin.display()
                );
            }
            // Its open-file limit is inherited: raise ours first.
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            if let Some(nodes) = c.cluster {
                let settings = across::Settings {
                    nodes,
                    heartbeat_ms: c.cluster_heartbeat_ms,
                    deadline_ms: c.cluster_deadline_ms,
                };
                let (started, servers) =
                    tokio::task::block_in_place(|| across::Cluster::start(&bin, settings))?;
                nodes_of_cluster = Some(started);
                let mut servers = servers.into_iter();
                let first = servers.next().context("a cluster without nodes")?;
                more.extend(servers);
                first
            } else {
                for k in 1..c.servers {
                    more.push(Server::spawn(bin.clone(), k, false)?.0);
                }
                server_bin = Some(bin.clone());
                let (server, client_tls) = Server::spawn(bin, 0, c.tls)?;
                tls = client_tls;
                server
            }
        }
    };
    let mut ctx = Ctx {
        server,
        bin: server_bin,
        more,
        procs: c.procs.max(1),
        sources: c.sources,
        concurrency: c.concurrency,
        json: c.json,
        tls,
        cluster: nodes_of_cluster,
    };
    if ctx.cluster.is_some() {
        let result = match cli.scenario {
            Scenario::Push { .. } => {
                let (plan, via, http_conns) = push_plan(&cli.scenario)?;
                across::push(&ctx, plan, via, http_conns).await?
            }
            Scenario::Failover { n, m, http_conns } => {
                across::failover(&mut ctx, n, m, http_conns).await?
            }
            Scenario::Storm { n } => across::storm(&mut ctx, n).await?,
            _ => bail!("with --cluster the scenarios are push, failover and storm"),
        };
        return finish(&ctx, result);
    }
    let result = match cli.scenario {
        Scenario::Connect { n } => connect::connect(&ctx, n).await?,
        Scenario::Idle { n, hold } => connect::idle(&ctx, n, hold).await?,
        Scenario::Push { .. } => {
            let (plan, via, http_conns) = push_plan(&cli.scenario)?;
            push::push(&ctx, plan, via, http_conns).await?
        }
        Scenario::Broadcast {
            n,
            count,
            burst,
            idle_ms,
        } => {
            let idle = idle_ms.map(std::time::Duration::from_millis);
            broadcast::broadcast(&ctx, n, count, burst.max(1), idle).await?
        }
        Scenario::Storm { n } => storm::storm(&mut ctx, n).await?,
        Scenario::Cluster {
            n,
            m,
            size,
            via,
            http_conns,
            batch,
            binds,
            heartbeat_ms,
            deadline_ms,
        } => {
            let plan = publish::Plan::new(n, m, 0, size, batch);
            let nodes = ClusterPlan {
                via,
                http_conns,
                binds,
                heartbeat_ms,
                deadline_ms,
            };
            cluster::cluster(&ctx, plan, nodes).await?
        }
        Scenario::Failover { .. } => {
            bail!("failover runs across a cluster: add --cluster NODES (at least 2)")
        }
        Scenario::Worker { .. } => bail!("a worker takes no server of its own"),
    };
    finish(&ctx, result)
}

/// The plan, transport and HTTP connections of a `push`, as its command line gives them.
fn push_plan(scenario: &Scenario) -> anyhow::Result<(publish::Plan, cli::Via, usize)> {
    match *scenario {
        Scenario::Push {
            n,
            m,
            rate,
            size,
            via,
            http_conns,
            batch,
        } => Ok((publish::Plan::new(n, m, rate, size, batch), via, http_conns)),
        _ => bail!("not a push"),
    }
}
