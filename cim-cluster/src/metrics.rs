//! The cluster's metrics, through the [`metrics`] facade: how long inbox entries waited, dead
//! nodes reaped, messages routed again, Redis errors, and Redis found empty.
//!
//! Every series is registered once, when a [`Cluster`](crate::Cluster) or a
//! [`RedisStore`](crate::RedisStore) is built, with the recorder installed then (the reference
//! server installs a Prometheus one first), and kept as a handle; with no recorder they do
//! nothing. [`describe_metrics`] gives each its help text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Histogram, Unit};

/// How long each inbox entry waited between its `XADD` and this node's reader taking it (a
/// histogram, in seconds).
pub const INBOX_LAG_SECONDS: &str = "cim_cluster_inbox_lag_seconds";
/// Dead nodes this node reaped.
pub const REAPS: &str = "cim_cluster_reaps_total";
/// Messages routed again, by `reason`.
pub const REROUTED: &str = "cim_cluster_rerouted_total";
/// Redis commands and scripts that failed, by `part`.
pub const REDIS_ERRORS: &str = "cim_cluster_redis_errors_total";
/// Times this node found that Redis had lost the cluster's data (its epoch changed).
pub const EPOCH_LOSSES: &str = "cim_cluster_epoch_losses_total";

/// Gives every series of the cluster its help text and unit. Call it once the recorder is
/// installed ([`Cluster::connect`](crate::Cluster::connect) does).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram};
    describe_histogram!(
        INBOX_LAG_SECONDS,
        Unit::Seconds,
        "Time an inbox entry waited between its XADD (Redis's clock) and this node's reader \
         taking it."
    );
    describe_counter!(REAPS, "Dead nodes this node reaped.");
    describe_counter!(
        REROUTED,
        "Messages routed again: from a dead node's inbox, not taken by any connection here, or \
         not reported written within the hand-over timeout."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis commands and scripts that failed (after one retry on a broken connection), by \
         part: the node's own, the store's, the inbox reader's."
    );
    describe_counter!(
        EPOCH_LOSSES,
        "Times Redis was found to have lost the cluster's data (its epoch changed)."
    );
}

/// The handles of one node's series.
pub(crate) struct ClusterMetrics {
    inbox_lag: Histogram,
    pub(crate) reaps: Counter,
    pub(crate) rerouted_dead_node: Counter,
    pub(crate) rerouted_not_taken: Counter,
    pub(crate) rerouted_handover: Counter,
    /// Failures of the node's commands and scripts: routing, the registry, heartbeats, reaps.
    pub(crate) node_errors: Counter,
    /// Failures of the inbox reader's own connection and reads.
    pub(crate) inbox_errors: Counter,
    pub(crate) epoch_losses: Counter,
}

impl ClusterMetrics {
    /// Registers every series with the recorder installed now.
    pub(crate) fn register() -> Self {
        use metrics::counter;
        describe_metrics();
        Self {
            inbox_lag: metrics::histogram!(INBOX_LAG_SECONDS),
            reaps: counter!(REAPS),
            rerouted_dead_node: counter!(REROUTED, "reason" => "dead_node"),
            rerouted_not_taken: counter!(REROUTED, "reason" => "not_taken"),
            rerouted_handover: counter!(REROUTED, "reason" => "handover_timeout"),
            node_errors: counter!(REDIS_ERRORS, "part" => "node"),
            inbox_errors: counter!(REDIS_ERRORS, "part" => "inbox"),
            epoch_losses: counter!(EPOCH_LOSSES),
        }
    }

    /// An inbox entry added at `added_ms` (Unix milliseconds, Redis's clock) taken at `now_ms`
    /// (this node's): a clock behind Redis's counts as no wait.
    pub(crate) fn inbox_entry_taken(&self, added_ms: u64, now_ms: u64) {
        self.inbox_lag
            .record(Duration::from_millis(now_ms.saturating_sub(added_ms)));
    }
}

/// The counter of the store's Redis errors.
pub(crate) fn store_errors() -> Counter {
    metrics::counter!(REDIS_ERRORS, "part" => "store")
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
