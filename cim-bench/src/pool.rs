//! N bound connections, each with a task that reads: answers PINGs, counts messages and records
//! their latency, and (for a storm) reconnects when the server goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cim_core::Frame;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};

use crate::conn::{Conn, Sources, bind_until_up};
use crate::stats::{Clock, Shards};

/// What the connections share.
pub struct Counters {
    /// Messages received by all connections.
    pub received: AtomicU64,
    /// Connections bound now.
    pub bound: AtomicUsize,
    /// Binds after a reconnect.
    pub rebinds: AtomicUsize,
    /// Message latencies.
    pub latency: Shards,
    /// Replies the publisher has read.
    pub replies: AtomicU64,
    /// When the latest message arrived ([`Clock`] microseconds).
    pub last_at: AtomicU64,
    pub clock: Clock,
}

pub struct Pool {
    pub counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Time until every connection was bound.
    pub connect_time: Duration,
    /// Connect-plus-bind latency per connection.
    pub bind_latency: Histogram<u64>,
}

pub struct Options {
    /// Servers to spread the connections over, round robin.
    pub servers: Vec<SocketAddr>,
    pub n: usize,
    /// The index of this pool's first connection among all (for uids, sources and servers,
    /// when several processes share one run).
    pub first: usize,
    pub sources: Sources,
    pub concurrency: usize,
    pub reconnect: bool,
    pub uid_prefix: String,
    pub quiet: bool,
    /// Connect over TLS.
    pub tls: Option<crate::tls::Tls>,
}

impl Pool {
    /// Opens `n` connections, `concurrency` at a time, and waits until all are bound. Fails with
    /// the first error and how many got through.
    pub async fn open(opts: Options) -> anyhow::Result<Pool> {
        let counters = Arc::new(Counters {
            received: AtomicU64::new(0),
            bound: AtomicUsize::new(0),
            rebinds: AtomicUsize::new(0),
            latency: Shards::new(64)?,
            last_at: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            clock: Clock::new(),
        });
        let bar = progress(opts.n as u64, "binding", opts.quiet);
        let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<anyhow::Result<u64>>();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(opts.n);
        for i in opts.first..opts.first + opts.n {
            let gate = Arc::clone(&gate);
            let done = done_tx.clone();
            let counters = Arc::clone(&counters);
            let uid = format!("{}{i}", opts.uid_prefix);
            let Some(&server) = opts.servers.get(i % opts.servers.len().max(1)) else {
                anyhow::bail!("no server to connect to");
            };
            // Loopback source addresses reach only a loopback server.
            let source = opts.sources.pick(i).filter(|_| server.ip().is_loopback());
            let reconnect = opts.reconnect;
            let tls = opts.tls.clone();
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await;
                let t0 = Instant::now();
                let conn = Conn::bind(server, source, tls.as_ref(), &uid).await;
                drop(permit);
                let conn = match conn {
                    Ok(c) => {
                        counters.bound.fetch_add(1, Ordering::Relaxed);
                        let _ = done.send(Ok(micros(t0.elapsed())));
                        c
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                drop(done);
                let at = Target {
                    server,
                    source,
                    tls,
                };
                read_loop(conn, i, &uid, at, reconnect, &counters).await;
            }));
        }
        drop(done_tx);
        let mut bind_latency = Histogram::new_with_bounds(1, 100_000_000, 3)?;
        let mut ok = 0usize;
        let mut first_error = None;
        while let Some(r) = done_rx.recv().await {
            match r {
                Ok(us) => {
                    ok += 1;
                    bind_latency.saturating_record(us.max(1));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let connect_time = start.elapsed();
        if let Some(e) = first_error {
            for t in &tasks {
                t.abort();
            }
            let hint = if format!("{e:#}").contains("os error 24") {
                "\n  this process ran out of file descriptors: raise `ulimit -n`"
            } else {
                ""
            };
            anyhow::bail!(
                "{ok} of {} connections bound; the first failure: {e:#}{hint}",
                opts.n
            );
        }
        Ok(Pool {
            counters,
            tasks,
            connect_time,
            bind_latency,
        })
    }

    /// Waits until `target` messages have arrived in all, or `timeout` passes; returns the
    /// count.
    pub async fn wait_received(&self, target: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.counters.received.load(Ordering::Acquire);
            if got >= target || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Where a connection connects to, and how.
struct Target {
    server: SocketAddr,
    source: Option<crate::conn::Source>,
    tls: Option<crate::tls::Tls>,
}

async fn read_loop(
    mut conn: Conn,
    i: usize,
    uid: &str,
    at: Target,
    reconnect: bool,
    counters: &Counters,
) {
    // Latencies of the messages of one read, recorded together.
    let mut batch = Vec::new();
    loop {
        // Every whole frame read so far, then the shared counters once: a read often brings
        // several messages, and counters touched per message would make the generator, not the
        // server, the bottleneck.
        let now = counters.clock.micros();
        let mut broken = false;
        let mut got = 0u64;
        loop {
            match conn.buffered() {
                Ok(Some(Frame::Message(m))) => {
                    got += 1;
                    batch.extend(counters.clock.latency_at(&m.content, now));
                }
                Ok(Some(Frame::Ping)) => {
                    if conn.send(&Frame::Pong).await.is_err() {
                        broken = true;
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if got > 0 {
            counters.latency.record_all(i, &batch);
            counters.received.fetch_add(got, Ordering::AcqRel);
            counters.last_at.fetch_max(now, Ordering::AcqRel);
            batch.clear();
        }
        if !broken && matches!(conn.fill().await, Ok(true)) {
            continue;
        }
        counters.bound.fetch_sub(1, Ordering::AcqRel);
        if !reconnect {
            return;
        }
        let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
        match bind_until_up(at.server, at.source, at.tls.as_ref(), uid, give_up).await {
            Ok(c) => {
                conn = c;
                counters.bound.fetch_add(1, Ordering::AcqRel);
                counters.rebinds.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => return,
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
