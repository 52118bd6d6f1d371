//! Clients of the SDK for the cluster tests: one that follows dispatch, quick to retry, and
//! taking its events until the messages wanted have arrived.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_client::{Backoff, BindInfo, ClientConfig, DispatchUrl, Event, Events, Protocol};
use tokio::time::Instant;

/// An SDK client that follows dispatch at `via`, speaking `protocol`, quick to retry.
pub fn dispatched(via: SocketAddr, protocol: &str, uid: &str) -> ClientConfig {
    let url: DispatchUrl = format!("http://{via}").parse().unwrap();
    let mut bind = BindInfo::new(uid);
    bind.channel = "android".into();
    bind.device_id = format!("dev-{uid}");
    let mut cfg = ClientConfig::dispatched(url, protocol.parse::<Protocol>().unwrap(), bind);
    cfg.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(800),
    };
    cfg.stable_after = Duration::from_millis(100);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

/// Takes events until `want` holds for the messages taken so far (each id counted as often as
/// the application got it); fails after `within`. Returns the reasons of the failed connect
/// attempts seen meanwhile.
pub async fn take_until(
    events: &mut Events,
    got: &mut HashMap<i64, usize>,
    within: Duration,
    want: impl Fn(&HashMap<i64, usize>) -> bool,
) -> Vec<String> {
    let mut failed = Vec::new();
    let deadline = Instant::now() + within;
    while !want(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the messages never all arrived: got {got:?}"
        );
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Message(m))) => *got.entry(m.id).or_default() += 1,
            Ok(Some(Event::ConnectFailed { reason, .. })) => failed.push(reason),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the client ended"),
            Err(_) => {}
        }
    }
    failed
}
