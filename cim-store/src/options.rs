//! [`Durability`] and [`StoreOptions`]: how a store is opened.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How durable an append is when it returns. In configuration: `"always"`, `"interval"` or
/// `"os"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Durability {
    /// On disk (fsynced) before `append` returns. Concurrent appends share one fsync (group
    /// commit). Risks nothing an answered sender was told was stored.
    #[default]
    Always,
    /// Made durable every [`StoreOptions::flush_interval`] in the background. A crash loses up
    /// to that much of what was answered as stored.
    Interval,
    /// Left to the operating system. With sled, a crash of the process loses what sled had not
    /// yet written (its buffers); a crash of the machine loses what the OS had not written
    /// either. redb has no such mode: its commits are durable or lost, so there this means a
    /// durable commit once a second.
    Os,
}

impl TryFrom<String> for Durability {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "always" => Ok(Durability::Always),
            "interval" => Ok(Durability::Interval),
            "os" => Ok(Durability::Os),
            other => Err(format!("{other:?}: expected one of always, interval, os")),
        }
    }
}

/// How a store is opened: its durability, the period of [`Durability::Interval`], and the most
/// messages it keeps per account (older ones are dropped first, counted and logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// How durable an append is when it returns.
    pub durability: Durability,
    /// The period of [`Durability::Interval`] (default 100 ms).
    pub flush_interval: Duration,
    /// Messages kept per account at most (at least 1).
    pub max_per_account: usize,
}

impl StoreOptions {
    /// `durability`, keeping at most `max_per_account` messages per account, flushing every
    /// 100 ms under [`Durability::Interval`].
    pub fn new(durability: Durability, max_per_account: usize) -> Self {
        Self {
            durability,
            flush_interval: Duration::from_millis(100),
            max_per_account,
        }
    }

    /// Sets the period of [`Durability::Interval`].
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }
}
