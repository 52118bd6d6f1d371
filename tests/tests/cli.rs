//! The `cim` command-line client against the real server binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::process::*;

const KEY: &str = "k3y-for-cli-tests";

fn cim() -> Command {
    let mut c = Command::new(built_binary("cim-cli", "cim"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

/// Runs `cim args` to the end: (exit code, stdout, stderr).
fn cim_once(args: &[&str]) -> (i32, String, String) {
    let out = cim().args(args).stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `cim` that keeps running, its output line by line.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Running {
    let mut child = cim()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running {
        stdout: lines(child.stdout.take().unwrap()),
        stderr: lines(child.stderr.take().unwrap()),
        child,
    }
}

fn wait_line(rx: &Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {what}"));
        if pred(&line) {
            return line;
        }
    }
}

/// A request to `p`'s HTTP API, from a test that is not async.
fn api(
    p: &common::process::ServerProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> common::process::Resp {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::process::http(
            p.addr("http"),
            method,
            path,
            headers,
            body,
        ))
}

#[test]
fn listen_and_send_in_two_terminals() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY)]);
    let tcp = format!("tcp://{}", p.addr("tcp"));
    let http = format!("http://{}", p.addr("http"));

    let json = spawn(&["listen", "--uid", "alice", "--json", "-s", &tcp]);
    wait_line(&json.stderr, "listening", |l| {
        l.contains("listening as alice")
    });
    let ws = format!("ws://{}/", p.addr("websocket"));
    let text = spawn(&["listen", "--uid", "bob", "-s", &ws]);
    wait_line(&text.stderr, "listening", |l| {
        l.contains("listening as bob")
    });

    // Over the socket.
    let (code, out, err) =
        cim_once(&["send", "--to", "alice", "--content", "hi alice", "-s", &tcp]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().strip_prefix("sent ").expect(&out).to_owned();
    let line = wait_line(&json.stdout, "the message", |l| l.contains("hi alice"));
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    // The id is a string, as the HTTP API prints it: JSON readers round integers above 2^53.
    assert_eq!(m["id"].as_str(), Some(id.as_str()), "{line}");
    assert_eq!(m["sender"], "cim-cli");
    assert_eq!(m["receiver"], "alice");

    // Through the HTTP API, with and without the key.
    let (code, _, err) = cim_once(&["send", "--to", "bob", "--content", "x", "--http", &http]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = cim_once(&[
        "send",
        "--to",
        "bob",
        "--content",
        "hi bob",
        "--from",
        "ops",
        "--http",
        &http,
        "--api-key",
        KEY,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("delivered to 1 connection"), "{out}");
    let line = wait_line(&text.stdout, "the message", |l| l.contains("hi bob"));
    assert_eq!(line, "ops -> bob: hi bob");
    // A broadcast names no receiver, and the line names none.
    let r = api(
        &p,
        "POST",
        "/api/v1/broadcast",
        &[("x-api-key", KEY), common::process::JSON],
        r#"{"sender":"ops","content":"hi all"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let line = wait_line(&text.stdout, "the broadcast", |l| l.contains("hi all"));
    assert_eq!(line, "ops: hi all");

    // Who is online.
    let (code, out, err) = cim_once(&["sessions", "--http", &http, "--api-key", KEY]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice") && out.contains("bob"), "{out}");
    assert!(out.contains("2 session(s) of 2"), "{out}");
    let (code, out, _) = cim_once(&[
        "sessions",
        "--http",
        &http,
        "--api-key",
        KEY,
        "--uid",
        "alice",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");

    // A round trip.
    let (code, out, err) = cim_once(&["ping", "-s", &tcp, "-c", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("connected and bound in").count(), 2, "{out}");
    assert!(out.contains("2 round(s): min"), "{out}");

    // An operator's kick ends the listener, and it says who kicked it.
    let mut json = json;
    let r = api(
        &p,
        "DELETE",
        "/api/v1/accounts/alice/sessions",
        &[("x-api-key", KEY)],
        "",
    );
    assert_eq!(r.json()["kicked"], 1, "{r:?}");
    wait_line(&json.stderr, "the operator's kick", |l| {
        l.contains("alice was kicked by the server's operator")
    });
    assert_eq!(json.child.wait().unwrap().code(), Some(1));
}

#[test]
fn clear_errors() {
    // Nobody listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = cim_once(&["ping", "-s", &format!("tcp://{free}")]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot connect to tcp://{free}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");

    // Not an address.
    let (code, _, err) = cim_once(&["send", "--to", "a", "--content", "b", "-s", "nohost"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad endpoint \"nohost\""), "{err}");
    let (code, _, err) = cim_once(&["sessions", "--http", "ftp://x"]);
    assert_eq!(code, 1);
    assert!(err.contains("expected http://host:port"), "{err}");

    // A bind the server refuses.
    let p = ServerProcess::start(&[("CIM_AUTH__TOKEN_SECRET", "a-secret-of-32-characters-000000")]);
    let tcp = format!("tcp://{}", p.addr("tcp"));
    let (code, _, err) = cim_once(&["listen", "--uid", "nobody", "-s", &tcp]);
    assert_eq!(code, 1);
    assert!(err.contains("refused the bind of nobody: 401"), "{err}");
}

/// Over TLS `--ca` names the CA to trust; without it the platform's roots, which do not know
/// the test's CA, refuse the server's certificate.
#[test]
fn ping_over_tls_trusts_the_ca_file_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::certs::Ca::new("cim test CA");
    let files = common::certs::write(dir.path(), &ca, &ca.leaf(&["localhost", "127.0.0.1"]));
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let server = ServerProcess::start(&[
        ("CIM_TCP__TLS__CERT", cert),
        ("CIM_TCP__TLS__KEY", key),
        ("CIM_WEBSOCKET__TLS__CERT", cert),
        ("CIM_WEBSOCKET__TLS__KEY", key),
    ]);
    let tls = format!("tls://localhost:{}", server.addr("tls").port());
    let wss = format!("wss://localhost:{}/", server.addr("wss").port());
    let ca_file = files.ca.to_str().unwrap();
    for endpoint in [&tls, &wss] {
        let (code, out, err) = cim_once(&["ping", "-s", endpoint, "--ca", ca_file, "-c", "1"]);
        assert_eq!(code, 0, "{endpoint}: {err}");
        assert!(
            out.contains(&format!("{endpoint}: connected and bound")),
            "{out}"
        );
    }
    let (code, _, err) = cim_once(&["ping", "-s", &tls, "-c", "1"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("TLS handshake") && err.contains("UnknownIssuer"),
        "{err}"
    );
}

/// `--dispatch` asks the server which node to use, in `--protocol`, for `listen`, `send` and
/// `ping` alike, and says where it went; a dispatch that cannot be asked is a clear error.
#[test]
fn listen_send_and_ping_follow_dispatch() {
    let p = ServerProcess::start(&[("CIM_NODE", "solo")]);
    let dispatch = format!("http://{}", p.addr("http"));
    let named = format!("(node solo, named by dispatch {dispatch}/api/v1/dispatch)");

    let listen = spawn(&[
        "listen",
        "--uid",
        "carol",
        "--dispatch",
        &dispatch,
        "--protocol",
        "ws+json",
    ]);
    let line = wait_line(&listen.stderr, "listening", |l| {
        l.contains("listening as carol")
    });
    let ws = format!("ws+json://{}/", p.addr("websocket"));
    assert!(line.contains(&format!("on {ws} {named}")), "{line}");

    let (code, out, err) = cim_once(&[
        "send",
        "--to",
        "carol",
        "--content",
        "via dispatch",
        "--dispatch",
        &dispatch,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sent "), "{out}");
    let line = wait_line(&listen.stdout, "the message", |l| {
        l.contains("via dispatch")
    });
    assert_eq!(line, "cim-cli -> carol: via dispatch");

    let (code, out, err) = cim_once(&["ping", "--dispatch", &dispatch, "-c", "1"]);
    assert_eq!(code, 0, "{err}");
    let tcp = format!("tcp://{}", p.addr("tcp"));
    assert!(
        out.contains(&format!("{tcp} {named}: connected and bound")),
        "{out}"
    );

    // Nobody answers at the dispatch URL.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = cim_once(&["ping", "--dispatch", &format!("http://{free}"), "-c", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "dispatch http://{free}/api/v1/dispatch: cannot connect"
        )),
        "{err}"
    );
    // A second URL is asked when the first cannot answer.
    let nobody = format!("http://{free}");
    let (code, out, err) = cim_once(&[
        "ping",
        "--dispatch",
        &nobody,
        "--dispatch",
        &dispatch,
        "-c",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{tcp} {named}: connected")), "{out}");
    // Not a protocol; a protocol without a dispatch URL; a server and a dispatch URL at once.
    let (code, _, err) = cim_once(&["ping", "--dispatch", &dispatch, "--protocol", "http"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("tcp, tls, xml, ws, ws+json, wss or wss+json"),
        "{err}"
    );
    let (code, _, err) = cim_once(&["ping", "--protocol", "ws"]);
    assert_eq!(code, 2);
    assert!(err.contains("--dispatch"), "{err}");
    let (code, _, err) = cim_once(&["ping", "-s", &tcp, "--dispatch", &dispatch]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}
