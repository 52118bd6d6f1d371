//! Runs larger than one process may hold: the connections are shared out among generator
//! processes (`--procs`), each a `cim-bench worker` holding its share until told to stop.
//!
//! A process may open only as many sockets as its open-file limit allows, and an unprivileged
//! user cannot raise the hard limit; several processes can together hold more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::pool::{Options, Pool};

/// Worker side: binds its share, reports one JSON line, holds the connections until its stdin
/// closes.
pub async fn worker(opts: Options) -> anyhow::Result<()> {
    let report = match Pool::open(opts).await {
        Ok(pool) => {
            let latency: Vec<[u64; 2]> = pool
                .bind_latency
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect();
            let line = json!({
                "bound": pool.counters.bound.load(std::sync::atomic::Ordering::Acquire),
                "seconds": pool.connect_time.as_secs_f64(),
                "bind_latency": latency,
            });
            Ok((pool, line))
        }
        Err(e) => Err(json!({ "error": format!("{e:#}") })),
    };
    let line = match &report {
        Ok((_, line)) | Err(line) => line.to_string(),
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if let Ok((pool, _)) = report {
        // Held (the tasks answer the server's pings) until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        pool.close();
    }
    Ok(())
}

/// What a worker is asked to do.
pub struct Share {
    pub servers: Vec<SocketAddr>,
    pub first: usize,
    pub n: usize,
    pub prefix: String,
    pub sources: u8,
    pub concurrency: usize,
}

/// Connections held by worker processes.
pub struct Workers {
    children: Vec<Child>,
    /// Time from starting the workers until the last reported all its connections bound.
    pub connect_time: Duration,
    pub bind_latency: Histogram<u64>,
    pub bound: usize,
}

impl Workers {
    /// Starts `procs` workers of `exe` sharing `n` connections, and waits until each has bound
    /// its share (or fails with the first worker's error).
    pub async fn open(
        exe: &Path,
        n: usize,
        procs: usize,
        share: impl Fn(usize, usize) -> Share,
    ) -> anyhow::Result<Workers> {
        let procs = procs.clamp(1, n.max(1));
        let start = Instant::now();
        let mut workers = Workers {
            children: Vec::with_capacity(procs),
            connect_time: Duration::ZERO,
            bind_latency: Histogram::new_with_bounds(1, 100_000_000, 3)?,
            bound: 0,
        };
        let mut readers = Vec::with_capacity(procs);
        let mut first = 0;
        for k in 0..procs {
            // The first `n % procs` workers take one more.
            let count = n / procs + usize::from(k < n % procs);
            let s = share(first, count);
            first += count;
            let targets: Vec<String> = s.servers.iter().map(ToString::to_string).collect();
            let mut child = Command::new(exe)
                .arg("--sources")
                .arg(s.sources.to_string())
                .arg("--concurrency")
                .arg(s.concurrency.to_string())
                .arg("worker")
                .arg("--targets")
                .arg(targets.join(","))
                .arg("--first")
                .arg(s.first.to_string())
                .arg("-n")
                .arg(s.n.to_string())
                .arg("--prefix")
                .arg(&s.prefix)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting the worker {}", exe.display()))?;
            let out = child.stdout.take().context("a worker's stdout")?;
            workers.children.push(child);
            readers.push(tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(out).read_line(&mut line).map(|_| line)
            }));
        }
        for (k, reader) in readers.into_iter().enumerate() {
            let line = reader.await??;
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("worker {k} ended without a report"))?;
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                bail!("worker {k}: {e}");
            }
            workers.bound += v
                .get("bound")
                .and_then(Value::as_u64)
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(0);
            for pair in v
                .get("bind_latency")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let value = pair.get(0).and_then(Value::as_u64).unwrap_or(0);
                let count = pair.get(1).and_then(Value::as_u64).unwrap_or(0);
                workers
                    .bind_latency
                    .saturating_record_n(value.max(1), count);
            }
        }
        workers.connect_time = start.elapsed();
        Ok(workers)
    }

    /// Tells the workers to close their connections and waits for them (off the runtime's
    /// worker thread: waiting for processes blocks).
    pub fn close(mut self) {
        tokio::task::block_in_place(|| self.stop());
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for mut child in self.children.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
