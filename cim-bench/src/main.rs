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
mod conn;
mod fleet;
mod pool;
mod publish;
mod server;
mod spread;
mod stats;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::conn::Sources;
use crate::pool::{Options, Pool};
use crate::server::Server;
use crate::stats::{describe, percentiles, rate};

#[derive(Parser)]
#[command(
    name = "cim-bench",
    version,
    about = "A load generator for cim-rs servers"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Common {
    /// The server binary to start (default: cim-server beside this program).
    #[arg(long, global = true, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Measure a running server at this TCP address instead of starting one.
    #[arg(long, global = true, value_name = "ADDR")]
    addr: Option<SocketAddr>,
    /// The running server's HTTP API address (broadcast, push --via http).
    #[arg(long, global = true, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The running server's pid, for its memory and CPU figures.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Source addresses 127.0.0.1 … 127.0.0.K to spread connections over (0: one per 25 000
    /// connections).
    #[arg(long, global = true, default_value_t = 0)]
    sources: u8,
    /// Connections being set up at once.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,
    /// Print one JSON object with the results (and no progress bars).
    #[arg(long, global = true)]
    json: bool,
    /// Generator processes sharing the connections of `connect` and `idle` (each process may
    /// open only as many sockets as its open-file limit allows).
    #[arg(long, global = true, default_value_t = 1)]
    procs: usize,
    /// Server processes to start, the connections of `connect` and `idle` spread over them
    /// round robin (independent servers: for runs larger than one process's open-file limit).
    #[arg(long, global = true, default_value_t = 1)]
    servers: usize,
    /// Every connection over TLS: a server started here gets a certificate made for the run
    /// (its TCP port speaking TLS); a server given by --addr needs --ca.
    #[arg(long, global = true)]
    tls: bool,
    /// With --tls and --addr: the CA certificates (PEM) to trust; the certificate must be
    /// valid for the address's IP.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Run across a cluster of this many nodes (a, b, c, …) on a redis-server that cim-bench
    /// starts (a free port of 127.0.0.1, append-only file fsynced at every write): push (the
    /// publisher on node a, the subscribers on the others), failover and storm (clients of the
    /// SDK bound through dispatch; the last node killed with kill -9).
    #[arg(long, global = true, value_name = "NODES")]
    cluster: Option<usize>,
    /// With --cluster: the nodes' cluster.heartbeat_ms.
    #[arg(long, global = true, default_value_t = 1000)]
    cluster_heartbeat_ms: u64,
    /// With --cluster: the nodes' cluster.node_deadline_ms.
    #[arg(long, global = true, default_value_t = 5000)]
    cluster_deadline_ms: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// N clients connect and bind: time until all are bound, binds per second.
    Connect {
        /// Clients.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
    },
    /// N bound clients held open: the server's resident memory per connection.
    Idle {
        /// Clients held open.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 2)]
        hold: u64,
    },
    /// N subscribers, one publisher sending M messages round robin.
    Push {
        /// Subscribers (accounts s0 … s{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all.
        #[arg(short, long, default_value_t = 1_000_000)]
        m: u64,
        /// Messages per second (0: as fast as the server takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Content bytes per message (at least 20: the send time).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// How the publisher sends.
        #[arg(long, value_enum, default_value_t = Via::Socket)]
        via: Via,
        /// Keep-alive HTTP connections for --via http.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
        /// Messages per HTTP request for --via http (more than 1: the batch endpoint).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// One message to all N connected clients, COUNT times: deliveries per second.
    Broadcast {
        /// Connected clients.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
        /// Rounds, one after the other.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Broadcasts per round, sent back to back without waiting for their deliveries (a
        /// stream of messages to everyone; each round ends when all have arrived).
        #[arg(long, default_value_t = 1)]
        burst: u32,
    },
    /// A cluster of two nodes on a Redis that cim-bench starts (redis-server on a free port of
    /// 127.0.0.1, append-only file fsynced at every write): N subscribers on the second node, a
    /// publisher on the first — beside the same push on a single node; then binds per second
    /// across both nodes, and how long the second node's sessions take to vanish from the
    /// first's view after it is killed with `kill -9`.
    Cluster {
        /// Subscribers (accounts s0 … s{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all, for each of the two pushes.
        #[arg(short, long, default_value_t = 300_000)]
        m: u64,
        /// Content bytes per message (at least 20).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// How the publisher sends.
        #[arg(long, value_enum, default_value_t = Via::Socket)]
        via: Via,
        /// Keep-alive HTTP connections for --via http.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
        /// Messages per HTTP request for --via http.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Clients that bind across the two nodes (half each) for binds per second.
        #[arg(long, default_value_t = 10_000)]
        binds: usize,
        /// The nodes' cluster.heartbeat_ms.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// The nodes' cluster.node_deadline_ms.
        #[arg(long, default_value_t = 5000)]
        deadline_ms: u64,
    },
    /// N bound clients; the server restarts; time until all are bound again. With --cluster:
    /// N clients of the SDK bound through dispatch; the last node is killed with kill -9 while
    /// messages are sent to its clients' accounts; time until they are all bound again through
    /// dispatch, the most and fewest clients per surviving node, messages lost.
    Storm {
        /// Clients that reconnect.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
    },
    /// With --cluster: N clients of the SDK bound through dispatch; a publisher sends M messages
    /// through node a's HTTP API, round robin over them; halfway the last node is killed with
    /// kill -9; every send answered 200 is checked against what reached the applications.
    Failover {
        /// Clients (accounts f0 … f{N-1}).
        #[arg(short, long, default_value_t = 1_000)]
        n: usize,
        /// Messages in all.
        #[arg(short, long, default_value_t = 100_000)]
        m: u64,
        /// Keep-alive HTTP connections of the publisher.
        #[arg(long, default_value_t = 8)]
        http_conns: usize,
    },
    /// One generator process of a `--procs` run (started by cim-bench itself).
    #[command(hide = true)]
    Worker {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long)]
        first: usize,
        #[arg(short, long)]
        n: usize,
        #[arg(long)]
        prefix: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// `client_message` over a bound TCP connection.
    Socket,
    /// `POST /api/v1/messages` over keep-alive HTTP connections.
    Http,
}

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

struct Ctx {
    server: Server,
    /// The server binary, when cim-bench started the server.
    bin: Option<PathBuf>,
    /// Further servers (`--servers`).
    more: Vec<Server>,
    procs: usize,
    sources: u8,
    concurrency: usize,
    json: bool,
    /// The client side of TLS, with --tls.
    tls: Option<tls::Tls>,
    /// With --cluster: its Redis and node names (the nodes are `server`, then `more`).
    cluster: Option<across::Cluster>,
}

impl Ctx {
    fn sources_for(&self, n: usize) -> u8 {
        if self.sources == 0 {
            u8::try_from(n / 25_000 + 1).unwrap_or(u8::MAX)
        } else {
            self.sources
        }
    }

    fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.server).chain(&self.more)
    }

    /// Resident memory of all servers, in bytes.
    fn rss(&self) -> Option<u64> {
        self.servers().map(Server::rss).sum()
    }

    /// CPU seconds of all servers.
    fn cpu_seconds(&self) -> Option<f64> {
        self.servers().map(Server::cpu_seconds).sum()
    }

    /// Fails unless this run has one server and one generator process.
    fn single(&self, scenario: &str) -> anyhow::Result<()> {
        if self.procs > 1 || !self.more.is_empty() {
            bail!(
                "{scenario} runs with one server and one generator process (--procs and \
                 --servers are for connect and idle)"
            );
        }
        Ok(())
    }

    fn pool_options(&self, n: usize, prefix: &str, reconnect: bool) -> Options {
        Options {
            servers: self.servers().map(|s| s.tcp).collect(),
            n,
            first: 0,
            sources: Sources::loopback(self.sources_for(n)),
            concurrency: self.concurrency,
            reconnect,
            uid_prefix: prefix.to_owned(),
            quiet: self.json,
            tls: self.tls.clone(),
        }
    }

    /// Checks that this process and the server may open `n` more sockets, and says which limit
    /// stops it if not.
    fn check_fd_limits(&self, n: usize) -> anyhow::Result<()> {
        let per_proc = n.div_ceil(self.procs.max(1));
        let need = per_proc as u64 + 64;
        let ours = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
        if ours < need {
            let (_, hard) = rlimit::Resource::NOFILE.get().unwrap_or((ours, ours));
            bail!(
                "{per_proc} connections in one generator process need about {need} file \
                 descriptors, but cim-bench may open {ours} (hard limit {hard}); raise the \
                 limit (ulimit -Hn / LimitNOFILE, as a user allowed to), share the connections \
                 among more processes (--procs, with --servers for the server side) or use \
                 fewer connections"
            );
        }
        let per_server = n.div_ceil(1 + self.more.len());
        let need = per_server as u64 + 64;
        for server in self.servers() {
            if let Some(limit) = server.has_pid().then(|| server.fd_limit()).flatten()
                && limit < need
            {
                bail!(
                    "{per_server} connections to one server need about {need} file \
                     descriptors in it, but its open-file limit is {limit} (see \
                     /proc/{}/limits); raise it, spread the connections over more server \
                     processes (--servers) or use fewer connections",
                    server.pid
                );
            }
        }
        Ok(())
    }

    /// Opens `n` bound connections: here, or shared among `--procs` worker processes.
    async fn hold(&self, n: usize, prefix: &str) -> anyhow::Result<Held> {
        if self.procs <= 1 {
            return Ok(Held::Here(
                Pool::open(self.pool_options(n, prefix, false)).await?,
            ));
        }
        let exe = std::env::current_exe()?;
        let servers: Vec<SocketAddr> = self.servers().map(|s| s.tcp).collect();
        let sources = self.sources_for(n);
        let concurrency = self.concurrency.div_ceil(self.procs).max(1);
        if !self.json {
            println!(
                "binding {n} connections from {} processes to {} servers…",
                self.procs,
                servers.len()
            );
        }
        let workers = spread::Workers::open(&exe, n, self.procs, |first, n| spread::Share {
            servers: servers.clone(),
            first,
            n,
            prefix: prefix.to_owned(),
            sources,
            concurrency,
        })
        .await?;
        Ok(Held::Workers(workers))
    }

    fn machine(&self) -> Value {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
        json!({ "cores": cores, "memory_gib": mem_gib })
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
            Scenario::Push {
                n,
                m,
                rate,
                size,
                via,
                http_conns,
                batch,
            } => {
                let plan = publish::Plan {
                    n,
                    m,
                    per_sec: rate,
                    size: size.max(20),
                    batch: batch.max(1),
                };
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
        Scenario::Connect { n } => connect(&ctx, n).await?,
        Scenario::Idle { n, hold } => idle(&ctx, n, hold).await?,
        Scenario::Push {
            n,
            m,
            rate,
            size,
            via,
            http_conns,
            batch,
        } => {
            let plan = publish::Plan {
                n,
                m,
                per_sec: rate,
                size: size.max(20),
                batch: batch.max(1),
            };
            push(&ctx, plan, via, http_conns).await?
        }
        Scenario::Broadcast { n, count, burst } => broadcast(&ctx, n, count, burst.max(1)).await?,
        Scenario::Storm { n } => storm(&mut ctx, n).await?,
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
            let plan = publish::Plan {
                n,
                m,
                per_sec: 0,
                size: size.max(20),
                batch: batch.max(1),
            };
            let nodes = ClusterPlan {
                via,
                http_conns,
                binds,
                heartbeat_ms,
                deadline_ms,
            };
            cluster(&ctx, plan, nodes).await?
        }
        Scenario::Failover { .. } => {
            bail!("failover runs across a cluster: add --cluster NODES (at least 2)")
        }
        Scenario::Worker { .. } => bail!("a worker takes no server of its own"),
    };
    finish(&ctx, result)
}

/// Prints the result as JSON with --json.
fn finish(ctx: &Ctx, result: Value) -> anyhow::Result<()> {
    let mut out = json!({ "machine": ctx.machine() });
    if let (Some(o), Some(r)) = (out.as_object_mut(), result.as_object()) {
        o.extend(r.clone());
    }
    if ctx.json {
        println!("{out}");
    }
    Ok(())
}

fn say(ctx: &Ctx, line: impl AsRef<str>) {
    if !ctx.json {
        println!("{}", line.as_ref());
    }
}

/// Bound connections held here or by worker processes.
enum Held {
    Here(Pool),
    Workers(spread::Workers),
}

impl Held {
    fn connect_time(&self) -> Duration {
        match self {
            Held::Here(p) => p.connect_time,
            Held::Workers(w) => w.connect_time,
        }
    }

    fn bind_latency(&self) -> &hdrhistogram::Histogram<u64> {
        match self {
            Held::Here(p) => &p.bind_latency,
            Held::Workers(w) => &w.bind_latency,
        }
    }

    fn bound(&self) -> usize {
        match self {
            Held::Here(p) => p.counters.bound.load(Ordering::Acquire),
            Held::Workers(w) => w.bound,
        }
    }

    fn close(self) {
        match self {
            Held::Here(p) => p.close(),
            Held::Workers(w) => w.close(),
        }
    }
}

async fn connect(ctx: &Ctx, n: usize) -> anyhow::Result<Value> {
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

async fn idle(ctx: &Ctx, n: usize, hold: u64) -> anyhow::Result<Value> {
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

async fn push(
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
struct Target<'a> {
    publisher: &'a Server,
    subscribers: Vec<SocketAddr>,
    /// The processes whose CPU counts, by name.
    measured: Vec<(String, &'a Server)>,
}

impl Target<'_> {
    fn cpu_seconds(&self) -> Option<f64> {
        self.measured.iter().map(|(_, s)| s.cpu_seconds()).sum()
    }

    fn cpu_each(&self) -> Vec<Option<f64>> {
        self.measured.iter().map(|(_, s)| s.cpu_seconds()).collect()
    }
}

async fn push_to(
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

/// The cluster scenario's settings beside the push plan.
struct ClusterPlan {
    via: Via,
    http_conns: usize,
    binds: usize,
    heartbeat_ms: u64,
    deadline_ms: u64,
}

async fn cluster(ctx: &Ctx, plan: publish::Plan, c: ClusterPlan) -> anyhow::Result<Value> {
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

async fn broadcast(ctx: &Ctx, n: usize, count: u32, burst: u32) -> anyhow::Result<Value> {
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
        "deliveries_per_sec": per_sec, "latency": percentiles(&latency),
        "round_ms": rounds.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "server_cpu_seconds": cpu,
    }))
}

async fn storm(ctx: &mut Ctx, n: usize) -> anyhow::Result<Value> {
    ctx.single("storm")?;
    ctx.check_fd_limits(n)?;
    let pool = Pool::open(ctx.pool_options(n, "r", true)).await?;
    let counters = std::sync::Arc::clone(&pool.counters);
    let start = Instant::now();
    let restart = tokio::task::block_in_place(|| ctx.server.restart())?;
    let up_at = start.elapsed();
    let bar = pool::progress(n as u64, "rebinding", ctx.json);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let back = counters.rebinds.load(Ordering::Acquire);
        bar.set_position(back as u64);
        if back >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("storm: {back} of {n} clients bound again within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bar.finish_and_clear();
    let all_back = start.elapsed();
    let after_up = all_back.saturating_sub(up_at);
    say(
        ctx,
        format!(
            "storm: {n} clients bound again {:.2} s after the restart began ({:.2} s after the \
             new server listened; it took {:.2} s to stop and start): {:.0} re-binds/s",
            all_back.as_secs_f64(),
            after_up.as_secs_f64(),
            restart.as_secs_f64(),
            rate(n as u64, after_up)
        ),
    );
    pool.close();
    Ok(json!({
        "scenario": "storm", "connections": n, "seconds_from_restart": all_back.as_secs_f64(),
        "seconds_after_listening": after_up.as_secs_f64(),
        "rebinds_per_sec": rate(n as u64, after_up),
    }))
}
