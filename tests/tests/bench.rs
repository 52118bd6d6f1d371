//! `cim-bench` end to end at a small scale: every scenario runs against the real server binary
//! and reports figures that add up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::process::Command;

use common::process::*;

/// Runs `cim-bench --json ARGS` against a server it starts; returns the parsed result.
fn bench(args: &[&str]) -> serde_json::Value {
    let server = server_binary();
    let out = Command::new(built_binary("cim-bench", "cim-bench"))
        .arg("--server-bin")
        .arg(&server)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cim-bench {args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

#[test]
fn every_scenario_reports_consistent_figures() {
    let v = bench(&["connect", "-n", "50"]);
    assert_eq!(v["scenario"], "connect");
    assert_eq!(v["connections"], 50);
    assert!(v["binds_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(v["bind_latency"]["count"], 50);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);

    let v = bench(&["push", "-n", "10", "-m", "500"]);
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(500), Some(500))
    );
    assert_eq!(v["latency"]["count"], 500);
    // CPU time comes in 10 ms ticks: a run this small may read as zero.
    assert!(v["server_cpu_seconds_per_million"].as_f64().unwrap() >= 0.0);

    let v = bench(&["push", "-n", "10", "-m", "300", "--rate", "1000"]);
    assert_eq!(v["received"], 300);
    assert_eq!(v["rate"], 1000);

    let v = bench(&[
        "push", "-n", "5", "-m", "120", "--via", "http", "--batch", "10",
    ]);
    assert_eq!(v["received"], 120);

    let v = bench(&["idle", "-n", "100", "--hold", "0"]);
    assert_eq!(v["connections"], 100);
    assert!(v["rss_after"].as_u64().unwrap() > 0);

    let v = bench(&["broadcast", "-n", "30", "--count", "2", "--burst", "3"]);
    assert_eq!(v["round_ms"].as_array().map(Vec::len), Some(2));
    // Every delivery of every broadcast of every round, each with its latency.
    assert_eq!(v["latency"]["count"], 30 * 3 * 2);

    let v = bench(&["storm", "-n", "30"]);
    assert!(v["seconds_from_restart"].as_f64().unwrap() > 0.0);
}

/// With --tls the server's TCP port speaks TLS and every connection, the publisher's too, runs
/// over it; a storm re-binds over TLS to the restarted server.
#[test]
fn scenarios_run_over_tls() {
    let v = bench(&["--tls", "push", "-n", "10", "-m", "500"]);
    assert_eq!(v["tls"], true);
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(500), Some(500))
    );
    let v = bench(&["--tls", "idle", "-n", "50", "--hold", "0"]);
    assert_eq!(
        (v["tls"].as_bool(), v["connections"].as_u64()),
        (Some(true), Some(50))
    );
    let v = bench(&["--tls", "storm", "-n", "20"]);
    assert!(v["seconds_from_restart"].as_f64().unwrap() > 0.0);
    let v = bench(&["push", "-n", "5", "-m", "50"]);
    assert_eq!(v["tls"], false);
}

#[test]
fn the_file_descriptor_limit_is_named() {
    let out = Command::new(built_binary("cim-bench", "cim-bench"))
        .arg("--server-bin")
        .arg(server_binary())
        .args(["connect", "-n", "10000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "10000000 connections in one generator process need about 10000064 file descriptors"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hard limit"), "{stderr}");
    assert!(stderr.contains("--procs"), "{stderr}");

    // Shared among enough generator processes, the server's limit is the one that stops it.
    let out = Command::new(built_binary("cim-bench", "cim-bench"))
        .arg("--server-bin")
        .arg(server_binary())
        .args(["--procs", "100000", "connect", "-n", "10000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("10000000 connections to one server need about 10000064 file descriptors"),
        "{stderr}"
    );
    assert!(stderr.contains("--servers"), "{stderr}");
}

#[test]
fn connections_can_be_shared_among_processes_and_servers() {
    let v = bench(&["--procs", "3", "--servers", "2", "connect", "-n", "61"]);
    assert_eq!(v["connections"], 61);
    assert_eq!(
        (v["procs"].as_u64(), v["servers"].as_u64()),
        (Some(3), Some(2))
    );
    // Every worker's bind latencies reach the report.
    assert_eq!(v["bind_latency"]["count"], 61);

    let v = bench(&[
        "--procs",
        "2",
        "--servers",
        "2",
        "idle",
        "-n",
        "40",
        "--hold",
        "0",
    ]);
    assert_eq!(v["connections"], 40);
    assert!(v["rss_after"].as_u64().unwrap() > 0);

    // The scenarios that need one server say so.
    let out = Command::new(built_binary("cim-bench", "cim-bench"))
        .arg("--server-bin")
        .arg(server_binary())
        .args(["--servers", "2", "push", "-n", "2", "-m", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("push runs with one server"), "{stderr}");
}

/// The cluster scenario at a small scale: both pushes deliver everything, binds are counted, and
/// the killed node's sessions vanish.
#[test]
fn the_cluster_scenario_reports_both_pushes() {
    let v = bench(&[
        "cluster",
        "-n",
        "20",
        "-m",
        "600",
        "--binds",
        "40",
        "--heartbeat-ms",
        "100",
        "--deadline-ms",
        "500",
    ]);
    assert_eq!(v["scenario"], "cluster");
    for push in ["single_node", "cross_node"] {
        assert_eq!(v[push]["sent"], 600, "{v}");
        assert_eq!(v[push]["received"], 600, "{v}");
        assert!(v[push]["delivered_per_sec"].as_f64().unwrap() > 0.0);
    }
    assert!(
        v["cross_node"]["server_cpu_seconds"].as_f64().is_some(),
        "{v}"
    );
    assert_eq!(v["bind_latency"]["count"], 40);
    assert!(v["binds_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["vanish_seconds"].as_f64().unwrap() > 0.0, "{v}");
}

/// `--cluster` at a small scale, three nodes on a Redis it starts: a push from node a to
/// subscribers on b and c delivers everything; a node killed in the middle of a push loses no
/// answered send and lets no copy reach an application; after a node's death every one of its
/// clients is bound again through dispatch on a survivor, with nothing lost.
#[test]
fn cluster_scenarios_run_across_three_nodes() {
    let quick = [
        "--cluster",
        "3",
        "--cluster-heartbeat-ms",
        "100",
        "--cluster-deadline-ms",
        "1000",
    ];
    let with = |args: &[&str]| -> Vec<String> {
        quick.iter().chain(args).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| bench(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let v = run(with(&["push", "-n", "10", "-m", "300"]));
    assert_eq!(v["scenario"], "cluster push", "{v}");
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(300), Some(300))
    );
    assert_eq!(v["subscribers_on"], serde_json::json!(["b", "c"]), "{v}");
    let cpu = v["cpu_seconds_by_process"].as_object().unwrap();
    assert!(
        ["node a", "node b", "node c", "redis"]
            .iter()
            .all(|k| cpu.contains_key(*k)),
        "{v}"
    );

    let v = run(with(&[
        "failover",
        "-n",
        "30",
        "-m",
        "600",
        "--http-conns",
        "2",
    ]));
    assert_eq!(v["scenario"], "cluster failover", "{v}");
    assert_eq!(v["sent"], 600, "{v}");
    assert_eq!(v["killed"], "c");
    assert!(
        v["moved"].as_u64().unwrap() >= 1,
        "dispatch used every node: {v}"
    );
    assert_eq!(
        (v["lost"].as_u64(), v["duplicates_delivered"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    let after = v["after"].as_object().unwrap();
    assert!(!after.contains_key("c"), "{v}");
    assert_eq!(
        after.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        30,
        "{v}"
    );

    let v = run(with(&["storm", "-n", "30"]));
    assert_eq!(v["scenario"], "cluster storm", "{v}");
    let moved = v["moved"].as_u64().unwrap();
    assert!(moved >= 1, "{v}");
    let moved_to: u64 = v["moved_to"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(moved_to, moved, "{v}");
    assert!(v["recovery_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        v["sent"].as_u64().unwrap() >= 100,
        "messages were sent to the moving accounts: {v}"
    );
    assert_eq!(v["lost"], 0, "{v}");
    let failed = |k: &str| v[k].as_u64().unwrap();
    assert!(
        failed("failed_named") + failed("failed_fallback") <= failed("failed_attempts"),
        "{v}"
    );
    let (max, min) = (
        v["max_per_node"].as_u64().unwrap(),
        v["min_per_node"].as_u64().unwrap(),
    );
    assert!(
        max >= min && max + min == 30,
        "two survivors hold all 30: {v}"
    );

    // What --cluster does not run, and failover without it, say so.
    for (args, says) in [
        (
            vec!["failover", "-n", "2"],
            "failover runs across a cluster: add --cluster",
        ),
        (
            vec!["--cluster", "1", "storm", "-n", "2"],
            "--cluster takes from 2 to 26 nodes, not 1",
        ),
        (
            vec!["--cluster", "2", "idle", "-n", "2"],
            "with --cluster the scenarios are push, failover and storm",
        ),
        (
            vec!["--cluster", "2", "--tls", "push"],
            "--cluster starts its nodes itself",
        ),
    ] {
        let out = Command::new(built_binary("cim-bench", "cim-bench"))
            .arg("--server-bin")
            .arg(server_binary())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
