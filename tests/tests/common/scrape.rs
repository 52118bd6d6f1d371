//! Scraping `GET /metrics` for the metrics tests: samples by series (labels sorted), waiting
//! for counters to move by what happened, and the series the README lists.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::WAIT;
use super::process::{JSON, Resp, http};

pub const KEY: &str = "metrics-test-key";

/// One scrape: every sample by its series, `name{label="value",…}` with the labels sorted.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    /// The names of the `# TYPE` lines.
    pub types: BTreeSet<String>,
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`.
pub fn normalize(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let labels = labels.strip_suffix('}').unwrap();
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        let end = after.find('"').unwrap();
        pairs.push(format!("{key}=\"{}\"", &after[..end]));
        rest = after[end + 1..].trim_start_matches(',');
    }
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            scrape.types.insert(t.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        scrape
            .samples
            .insert(normalize(series), value.parse().unwrap());
    }
    scrape
}

impl Scrape {
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

pub async fn scrape_with(addr: SocketAddr, key: &str) -> Scrape {
    let r = http(addr, "GET", "/metrics", &[("x-api-key", key)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.body)
}

/// Scrapes until every series of `expected` moved from `before` by exactly its amount (the
/// server counts a write just after the client could read it); panics, listing what differs,
/// if they do not within the tests' wait.
pub async fn expect_deltas(addr: SocketAddr, before: &Scrape, expected: &[(&str, f64)]) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape_with(addr, KEY).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, d)| now.get(s) - before.get(s) != *d)
            .map(|(s, d)| {
                format!(
                    "{s}: moved by {} instead of {d}",
                    now.get(s) - before.get(s)
                )
            })
            .collect();
        if wrong.is_empty() {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wrong:#?}\nscrape: {:#?}",
            now.samples
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST path` with `body` and the API key: the answer, whatever it is.
pub async fn post_answer(addr: SocketAddr, path: &str, body: serde_json::Value) -> Resp {
    http(
        addr,
        "POST",
        path,
        &[JSON, ("x-api-key", KEY)],
        &body.to_string(),
    )
    .await
}

/// `POST path` with `body` and the API key, answered `200`: its JSON.
pub async fn post(addr: SocketAddr, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r = post_answer(addr, path, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The series the README's operator section lists, from its table of metrics.
pub fn readme_series() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .expect("README has a Metrics section")
        .split("\n### ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `cim_"))
        .map(|l| format!("cim_{}", l.split('`').next().unwrap()))
        .collect()
}
