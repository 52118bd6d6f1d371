//! Bound connections held here or by worker processes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pool::Pool;
use crate::spread;

/// Bound connections held here or by worker processes.
pub enum Held {
    Here(Pool),
    Workers(spread::Workers),
}

impl Held {
    pub fn connect_time(&self) -> Duration {
        match self {
            Held::Here(p) => p.connect_time,
            Held::Workers(w) => w.connect_time,
        }
    }

    pub fn bind_latency(&self) -> &hdrhistogram::Histogram<u64> {
        match self {
            Held::Here(p) => &p.bind_latency,
            Held::Workers(w) => &w.bind_latency,
        }
    }

    pub fn bound(&self) -> usize {
        match self {
            Held::Here(p) => p.counters.bound.load(Ordering::Acquire),
            Held::Workers(w) => w.bound,
        }
    }

    pub fn close(self) {
        match self {
            Held::Here(p) => p.close(),
            Held::Workers(w) => w.close(),
        }
    }
}
