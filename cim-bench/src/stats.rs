//! Latency histograms shared by many tasks, and figures for the report.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Microseconds since the run started: the clock in message contents.
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn micros(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A message content of `size` bytes that starts with the send time.
    pub fn stamp(&self, size: usize) -> String {
        let mut s = format!("{:020}", self.micros());
        while s.len() < size {
            s.push('x');
        }
        s
    }

    /// The latency of a message stamped by [`stamp`](Self::stamp) that arrived at `now`
    /// ([`micros`](Self::micros)), in microseconds.
    pub fn latency_at(&self, content: &str, now: u64) -> Option<u64> {
        let sent: u64 = content.get(..20)?.parse().ok()?;
        Some(now.saturating_sub(sent))
    }
}

/// A histogram in shards, so that tasks on different threads seldom wait for each other.
pub struct Shards(Vec<Mutex<Histogram<u64>>>);

impl Shards {
    pub fn new(n: usize) -> anyhow::Result<Shards> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            // 1 µs to 100 s, 3 significant figures.
            v.push(Mutex::new(Histogram::new_with_bounds(1, 100_000_000, 3)?));
        }
        Ok(Shards(v))
    }

    /// Records several samples with one lock.
    pub fn record_all(&self, shard: usize, micros: &[u64]) {
        if let Some(h) = self.0.get(shard % self.0.len().max(1))
            && let Ok(mut h) = h.lock()
        {
            for &us in micros {
                h.saturating_record(us.max(1));
            }
        }
    }

    /// All shards merged, and the shards emptied.
    pub fn take(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = Histogram::new_with_bounds(1, 100_000_000, 3)?;
        for h in &self.0 {
            if let Ok(mut h) = h.lock() {
                let _ = all.add(&*h);
                h.reset();
            }
        }
        Ok(all)
    }
}

/// Percentiles in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

pub fn describe(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
