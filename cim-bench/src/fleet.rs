//! Clients of the SDK (`cim_client`) that follow dispatch, as real applications would: each asks
//! `GET /api/v1/dispatch` before every connect and reconnect, backs off with full jitter, and
//! drops copies of messages by id. What each one's application got is kept, to check every
//! acknowledged send against it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use cim_client::{BindInfo, Client, ClientConfig, DispatchUrl, Event, Protocol};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// What the clients' applications saw, shared.
#[derive(Default)]
pub struct Tally {
    /// Binds after a reconnect.
    pub rebinds: AtomicUsize,
    /// Connect attempts that failed, each retried after a back-off.
    pub failed_attempts: AtomicU64,
    /// Of those: to a node dispatch named (one that had died, most likely).
    pub failed_named: AtomicU64,
    /// Of those: to the last good address, because dispatch could not be asked (its node
    /// refused the request: `http.max_connections`, say).
    pub failed_fallback: AtomicU64,
    /// Messages that reached an application a second time (the SDK should drop every copy).
    pub twice: AtomicU64,
}

/// One client and the ids its application got.
pub struct Member {
    pub uid: String,
    pub client: Client,
    pub got: Arc<Mutex<HashSet<i64>>>,
    task: JoinHandle<()>,
}

/// Many clients following dispatch.
pub struct Fleet {
    pub members: Vec<Member>,
    pub tally: Arc<Tally>,
    /// Time until the last of them was first bound.
    pub connect_time: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fleet {
    /// Connects `n` clients (accounts `{prefix}0` …), `concurrency` at a time, client `i` asking
    /// dispatch at `urls[i % urls.len()]` first and at the others after it, and waits until all
    /// are bound.
    pub async fn open(
        urls: &[DispatchUrl],
        n: usize,
        prefix: &str,
        concurrency: usize,
        quiet: bool,
    ) -> anyhow::Result<Fleet> {
        let tally = Arc::new(Tally::default());
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let bar = crate::pool::progress(n as u64, "binding through dispatch", quiet);
        let start = Instant::now();
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            if urls.is_empty() {
                anyhow::bail!("no dispatch URL");
            }
            // Every URL, from a different one for each client: the next is asked when one
            // cannot answer.
            let mut mine = urls.to_vec();
            mine.rotate_left(i % urls.len());
            let uid = format!("{prefix}{i}");
            let (gate, tally, bar) = (Arc::clone(&gate), Arc::clone(&tally), bar.clone());
            joins.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let mut bind = BindInfo::new(&uid);
                bind.device_id = format!("bench-{uid}");
                let config = ClientConfig::dispatched_any(mine, Protocol::Tcp, bind);
                let (client, events) = Client::connect(config)
                    .await
                    .with_context(|| format!("{uid} could not bind through dispatch"))?;
                bar.inc(1);
                let got = Arc::new(Mutex::new(HashSet::new()));
                let task = tokio::spawn(take(events, Arc::clone(&got), tally));
                anyhow::Ok(Member {
                    uid,
                    client,
                    got,
                    task,
                })
            }));
        }
        let mut members = Vec::with_capacity(n);
        for j in joins {
            members.push(j.await.context("a client's task panicked")??);
        }
        bar.finish_and_clear();
        Ok(Fleet {
            members,
            tally,
            connect_time: start.elapsed(),
        })
    }

    /// How many clients are bound on each node (by name), as the clients know it.
    pub fn on_nodes(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for m in &self.members {
            if m.client.is_connected()
                && let Some(node) = m.client.node()
            {
                *by.entry(node).or_default() += 1;
            }
        }
        by
    }

    /// Copies the SDK dropped before they reached the applications.
    pub fn duplicates_dropped(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.client.duplicates_dropped())
            .sum()
    }

    /// Of `sent` (member index, message id), those that never reached the member's application.
    pub fn missing(&self, sent: &[(usize, i64)]) -> usize {
        sent.iter()
            .filter(|(i, id)| {
                self.members
                    .get(*i)
                    .is_none_or(|m| !lock(&m.got).contains(id))
            })
            .count()
    }

    /// Waits until every message of `sent` has arrived, or nothing more has for `quiet_for`;
    /// returns how many are missing.
    pub async fn wait_for(&self, sent: &[(usize, i64)], quiet_for: Duration) -> usize {
        let mut last = (usize::MAX, Instant::now());
        loop {
            let missing = self.missing(sent);
            if missing == 0 {
                return 0;
            }
            if missing != last.0 {
                last = (missing, Instant::now());
            } else if last.1.elapsed() > quiet_for {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Destroys every client.
    pub async fn close(self) {
        for m in self.members {
            m.client.destroy().await;
            m.task.abort();
        }
    }
}

/// Takes a client's events as its application would: remembers each message's id, counts
/// re-binds, failed attempts and any message seen twice.
async fn take(mut events: cim_client::Events, got: Arc<Mutex<HashSet<i64>>>, tally: Arc<Tally>) {
    while let Some(e) = events.recv().await {
        match e {
            // The guard remembers the id; only a second arrival gets here.
            Event::Message(m) if !lock(&got).insert(m.id) => {
                tally.twice.fetch_add(1, Ordering::Relaxed);
            }
            Event::Connected { rebound: true } => {
                tally.rebinds.fetch_add(1, Ordering::AcqRel);
            }
            Event::ConnectFailed { reason, .. } => {
                tally.failed_attempts.fetch_add(1, Ordering::Relaxed);
                // The SDK says where an attempt went: "node X at …" or "…; the last good
                // address …".
                if reason.contains("; the last good address ") {
                    tally.failed_fallback.fetch_add(1, Ordering::Relaxed);
                } else if reason.starts_with("node ") {
                    tally.failed_named.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}
