//! What every scenario runs with: the servers, the generator's settings, and how results are
//! printed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};

use crate::conn::Sources;
use crate::held::Held;
use crate::pool::{Options, Pool};
use crate::server::Server;
use crate::{across, spread, tls};

pub struct Ctx {
    pub server: Server,
    /// The server binary, when cim-bench started the server.
    pub bin: Option<PathBuf>,
    /// Further servers (`--servers`).
    pub more: Vec<Server>,
    pub procs: usize,
    pub sources: u8,
    pub concurrency: usize,
    pub json: bool,
    /// The client side of TLS, with --tls.
    pub tls: Option<tls::Tls>,
    /// With --cluster: its Redis and node names (the nodes are `server`, then `more`).
    pub cluster: Option<across::Cluster>,
}

impl Ctx {
    pub fn sources_for(&self, n: usize) -> u8 {
        if self.sources == 0 {
            u8::try_from(n / 25_000 + 1).unwrap_or(u8::MAX)
        } else {
            self.sources
        }
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.server).chain(&self.more)
    }

    /// Resident memory of all servers, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.servers().map(Server::rss).sum()
    }

    /// CPU seconds of all servers.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.servers().map(Server::cpu_seconds).sum()
    }

    /// Fails unless this run has one server and one generator process.
    pub fn single(&self, scenario: &str) -> anyhow::Result<()> {
        if self.procs > 1 || !self.more.is_empty() {
            bail!(
                "{scenario} runs with one server and one generator process (--procs and \
                 --servers are for connect and idle)"
            );
        }
        Ok(())
    }

    pub fn pool_options(&self, n: usize, prefix: &str, reconnect: bool) -> Options {
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
    pub fn check_fd_limits(&self, n: usize) -> anyhow::Result<()> {
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
    pub async fn hold(&self, n: usize, prefix: &str) -> anyhow::Result<Held> {
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

    pub fn machine(&self) -> Value {
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

/// Prints the result as JSON with --json.
pub fn finish(ctx: &Ctx, result: Value) -> anyhow::Result<()> {
    let mut out = json!({ "machine": ctx.machine() });
    if let (Some(o), Some(r)) = (out.as_object_mut(), result.as_object()) {
        o.extend(r.clone());
    }
    if ctx.json {
        println!("{out}");
    }
    Ok(())
}

pub fn say(ctx: &Ctx, line: impl AsRef<str>) {
    if !ctx.json {
        println!("{}", line.as_ref());
    }
}
