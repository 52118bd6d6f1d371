//! The server's metrics: the Prometheus recorder behind `GET /metrics` (installed once per
//! process by [`install`]), and the series of the server's own parts — HTTP requests, the
//! store's size on disk, expired messages. The engine's series are in
//! [`cim_core::engine::metrics`], the cluster's in [`cim_cluster::metrics`]; the connections
//! refused are counted where they are refused, by each listener's refusals.
//!
//! Every series goes through the [`metrics`] facade, so any part of a process (a cluster
//! backend, a handler of your own) adds its series the same way and `/metrics` shows them.
//! Handles on a busy path are registered once and kept; the few series below that take labels
//! from a request are kept in [`HttpMetrics`] the first time each combination is seen.

use std::path::Path;
use std::sync::{OnceLock, RwLock};

use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered by the API, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "cim_http_requests_total";
/// Bytes of the store's files on disk (a gauge, measured at each scrape).
pub const STORE_SIZE: &str = "cim_store_size_bytes";

/// Buckets of the store's append time, in seconds: from a write left to the OS to an fsync on
/// a slow disk.
const APPEND_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Buckets of the cluster's inbox lag, in seconds: from an entry taken at once to a reader
/// that fell far behind (or was cut off from Redis).
const INBOX_LAG_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder, once, and returns the handle that renders it;
/// `None` when another recorder was installed first (then `/metrics` is off, and said so in the
/// log). Call it before building the server: handles registered before it do nothing.
/// [`App::start`](crate::app::App::start) calls it.
pub fn install() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(cim_core::engine::metrics::STORE_APPEND_SECONDS.to_owned()),
                    APPEND_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(cim_cluster::metrics::INBOX_LAG_SECONDS.to_owned()),
                        INBOX_LAG_BUCKETS,
                    )
                });
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets refused; summaries instead");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!(
                        "another metrics recorder is installed in this process: /metrics is off"
                    );
                    None
                }
            }
        })
        .clone()
}

/// Gives every series its help text: the engine's, then the server's own. (A cluster backend
/// describes its series itself when it starts, and a listener its refusals.)
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    cim_core::engine::describe_metrics();
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered by the API, by method, route and status."
    );
    describe_gauge!(
        STORE_SIZE,
        Unit::Bytes,
        "Bytes of the store's files on disk (store.path), measured at each scrape."
    );
}

/// The bytes of the files under `dir` (its subdirectories to a depth of 4; a store keeps a few
/// files). What cannot be read counts as nothing.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 4)
}

/// The sum of the samples of series `name` (every label set) in `text`, Prometheus's text
/// format as [`PrometheusHandle::render`] writes it; `None` when it has none.
pub(crate) fn total(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `cim_x` is not `cim_x_total`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

/// The methods named in `cim_http_requests_total`; any other is `other` (a client chooses the
/// method, and every label value is a series kept for ever).
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// The label of a method, route or status not in the list.
const OTHER: &str = "other";

/// The counters of `cim_http_requests_total`, each registered the first time its method, route
/// and status are seen. Every label comes from a fixed set (the methods above, the routes of
/// the API, the status codes), so their number is bounded. A request seen before costs two
/// short scans of names, a read lock and a scan of the few statuses its route has answered:
/// no hash, no allocation.
pub(crate) struct HttpMetrics {
    routes: &'static [&'static str],
    /// By method and route (`method * (routes + 1) + route`, the last of each being `other`):
    /// the counter of each status seen.
    counters: Vec<RwLock<Vec<(u16, Counter)>>>,
}

impl HttpMetrics {
    /// The counters of an API with `routes` (their patterns, as `MatchedPath` gives them).
    pub(crate) fn new(routes: &'static [&'static str]) -> Self {
        let cells = (METHODS.len() + 1) * (routes.len() + 1);
        Self {
            routes,
            counters: (0..cells).map(|_| RwLock::new(Vec::new())).collect(),
        }
    }

    /// Counts a request of `method` to `route` (a route's pattern; `None` when none matched)
    /// answered with `status`.
    pub(crate) fn request(&self, method: &str, route: Option<&str>, status: u16) {
        let m = METHODS
            .iter()
            .position(|known| *known == method)
            .unwrap_or(METHODS.len());
        let r = route
            .and_then(|route| self.routes.iter().position(|known| *known == route))
            .unwrap_or(self.routes.len());
        let Some(cell) = self.counters.get(m * (self.routes.len() + 1) + r) else {
            return;
        };
        let seen = |all: &[(u16, Counter)]| {
            all.iter()
                .find(|(s, _)| *s == status)
                .map(|(_, c)| c.clone())
        };
        let found = seen(
            &cell
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let counter = found.unwrap_or_else(|| {
            let mut all = cell
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Another request may have registered it meanwhile.
            seen(&all).unwrap_or_else(|| {
                let counter = metrics::counter!(
                    HTTP_REQUESTS,
                    "method" => METHODS.get(m).copied().unwrap_or(OTHER),
                    "route" => self.routes.get(r).copied().unwrap_or(OTHER),
                    "status" => status.to_string()
                );
                all.push((status, counter.clone()));
                counter
            })
        });
        counter.increment(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn total_sums_one_series_over_its_labels() {
        let text = "# TYPE cim_x_total counter\n\
                    cim_x_total{to=\"a\"} 3\n\
                    cim_x_total{to=\"b\"} 4\n\
                    cim_x_total_more 100\n\
                    cim_x 7\n";
        assert_eq!(total(text, "cim_x_total"), Some(7.0));
        assert_eq!(total(text, "cim_x"), Some(7.0));
        assert_eq!(total(text, "cim_y"), None);
    }

    #[test]
    fn dir_size_adds_the_files_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
