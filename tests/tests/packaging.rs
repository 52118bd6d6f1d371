//! The files for deploying: `cim-server health` (the container's health check) against the real
//! binary; the example production configuration and the container's start only with their
//! secrets; the Dockerfile and the systemd unit agree with the configurations they ship; the
//! unit passes `systemd-analyze verify` without a warning, and its exposure rates "OK" or
//! better (`systemd-analyze security --offline=yes`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::path::{Path, PathBuf};

use cim_server::Settings;
use common::process::{ServerProcess, run_once, server_binary};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `key=` on its own line of a unit file (the first, when there are several).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// The words after `instruction` in the Dockerfile's last line starting with it.
fn docker_words<'a>(dockerfile: &'a str, instruction: &str) -> Vec<&'a str> {
    dockerfile
        .lines()
        .rfind(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the Dockerfile has no {instruction}"))
        .split_whitespace()
        .skip(1)
        .collect()
}

async fn load(file: &str, secrets: &[(&str, &str)]) -> Result<Settings, String> {
    let env = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let settings = Settings::load(Some(&repo(file)), env).map_err(|e| e.to_string())?;
    settings.resolve().await.map_err(|e| e.to_string())?;
    Ok(settings)
}

const SECRET: (&str, &str) = ("CIM_AUTH__TOKEN_SECRET", "0123456789abcdef0123456789abcdef");
const API_KEY: (&str, &str) = ("CIM_HTTP__API_KEY", "an-api-key");

#[tokio::test]
async fn health_answers_while_the_server_runs() {
    let mut p = ServerProcess::start(&[]);
    let port = p.addr("http").port().to_string();
    let (code, out, err) = run_once(&["health"], &[("CIM_HTTP__PORT", &port)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#""status":"ok""#), "{out}");
    // An unspecified host (a container's 0.0.0.0) is asked on loopback.
    let (code, out, err) = run_once(
        &["health"],
        &[("CIM_HTTP__PORT", &port), ("CIM_HTTP__HOST", "0.0.0.0")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(p.terminate().success());

    // Behind a load balancer that sends PROXY headers, loopback among the trusted proxies: the
    // check says it is the proxy's own (PROXY UNKNOWN), as a trusted connection must.
    let proxied = [
        ("CIM_HTTP__PROXY_PROTOCOL", "true"),
        ("CIM_HTTP__TRUSTED_PROXIES", "127.0.0.0/8"),
    ];
    let mut p = ServerProcess::start(&proxied);
    let port = p.addr("http").port().to_string();
    let mut env = proxied.to_vec();
    env.push(("CIM_HTTP__PORT", &port));
    let (code, out, err) = run_once(&["health"], &env);
    assert_eq!(code, 0, "{out}{err}");
    // Without the header the server would have refused the check.
    let (code, _, err) = run_once(&["health"], &[("CIM_HTTP__PORT", &port)]);
    assert_ne!(code, 0, "{err}");
    assert!(p.terminate().success());

    let (code, _, err) = run_once(&["health"], &[("CIM_HTTP__PORT", &port)]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let (code, _, err) = run_once(&["health"], &[("CIM_HTTP__ENABLED", "false")]);
    assert_ne!(code, 0);
    assert!(err.contains("http.enabled"), "{err}");
}

#[tokio::test]
async fn the_production_example_starts_only_with_both_secrets() {
    let file = "packaging/cim.production.toml";
    let e = load(file, &[]).await.unwrap_err();
    assert!(e.contains("http.api_key"), "{e}");
    let e = load(file, &[API_KEY]).await.unwrap_err();
    assert!(e.contains("auth.token_secret"), "{e}");
    let s = load(file, &[SECRET, API_KEY]).await.unwrap();
    assert!(s.tcp.tls.enabled() && s.websocket.tls.enabled());
    assert_eq!(s.tcp.tls.port, Some(23443));
    assert_eq!(s.store.path, Path::new("/var/lib/cim"));
    assert!(s.http.console && !s.auth.allow_anonymous);
    // The secrets file names exactly the two it needs.
    let env_file = read("packaging/cim.env.example");
    let env: Vec<&str> = env_file
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(env, ["CIM_AUTH__TOKEN_SECRET", "CIM_HTTP__API_KEY"]);

    // The unit runs that file, keeps the store where it says, and leaves room for its limits.
    let unit = read("packaging/cim-server.service");
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        "/usr/local/bin/cim-server --config /etc/cim/cim.toml"
    );
    assert_eq!(unit_value(&unit, "EnvironmentFile"), "/etc/cim/cim.env");
    assert_eq!(unit_value(&unit, "DynamicUser"), "yes");
    assert_eq!(
        Path::new("/var/lib").join(unit_value(&unit, "StateDirectory")),
        s.store.path
    );
    let files: usize = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    assert!(files > s.max_connections, "LimitNOFILE {files}");
    let stop: u64 = unit_value(&unit, "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(stop * 1000 > s.shutdown.grace_ms, "TimeoutStopSec {stop}");
    assert!(unit_value(&unit, "Restart").starts_with("on-"));
}

#[tokio::test]
async fn the_image_serves_what_its_configuration_says() {
    let file = "packaging/container.toml";
    let e = load(file, &[]).await.unwrap_err();
    assert!(e.contains("http.api_key"), "{e}");
    let s = load(file, &[SECRET, API_KEY]).await.unwrap();
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("COPY packaging/container.toml /etc/cim/cim.toml"),
        "the image does not ship packaging/container.toml"
    );
    let mut exposed = docker_words(&dockerfile, "EXPOSE");
    exposed.sort_unstable();
    let mut ports = [s.tcp.port, s.websocket.port, s.http.port].map(|p| p.to_string());
    ports.sort_unstable();
    assert_eq!(exposed, ports);
    assert_eq!(
        docker_words(&dockerfile, "VOLUME"),
        [format!("[\"{}\"]", s.store.path.display())]
    );
    let user = docker_words(&dockerfile, "USER")[0];
    assert!(!user.starts_with('0') && user != "root", "USER {user}");
    assert!(
        dockerfile.contains(
            r#"CMD ["/usr/local/bin/cim-server", "--config", "/etc/cim/cim.toml", "health"]"#
        ),
        "the health check does not run `cim-server health`"
    );
    // Multi-stage: built in one image, run from another.
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2
    );
}

/// The unit as installed, but running the binary this build made (`/usr/local/bin/cim-server`
/// is not installed here), in a directory of its own.
fn unit_with_built_binary(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let unit = read("packaging/cim-server.service").replace(
        "/usr/local/bin/cim-server",
        server_binary().to_str().unwrap(),
    );
    std::fs::write(dir.path().join("cim-server.service"), edit(unit)).unwrap();
    dir
}

/// `systemd-analyze` with `args`, then the unit in `dir`: its exit status and what it wrote.
fn systemd_analyze(args: &[&str], dir: &Path) -> (bool, String) {
    let out = std::process::Command::new("systemd-analyze")
        .args(args)
        .arg(dir.join("cim-server.service"))
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (Debian's `systemd` package; scripts/test installs it)")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_passes_systemd_analyze() {
    let dir = unit_with_built_binary(|u| u);
    let (ok, said) = systemd_analyze(&["verify"], dir.path());
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // It would have said so: a misspelt key is a warning, a missing binary an error.
    let misspelt = unit_with_built_binary(|u| u.replace("LimitNOFILE=", "LimitNOFILES="));
    let (_, said) = systemd_analyze(&["verify"], misspelt.path());
    assert!(said.contains("LimitNOFILES"), "{said}");
    let missing = unit_with_built_binary(|u| {
        u.replace(server_binary().to_str().unwrap(), "/nonexistent/cim-server")
    });
    assert!(!systemd_analyze(&["verify"], missing.path()).0);

    // Its exposure: "OK" or better (the README gives the figure).
    let (ok, said) = systemd_analyze(&["security", "--offline=yes"], dir.path());
    assert!(ok, "{said}");
    let level = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for cim-server.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no overall exposure in {said}"));
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score < 2.0, "exposure {level}");
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("rates its exposure {score:.1}")),
        "the README does not give the exposure {score:.1}"
    );
}
