//! TLS on the long-connection listeners: binds and pushes over `tls://` and `wss://` with the
//! client SDK, certificates the client must refuse, plain clients and stalled handshakes on a
//! TLS port, plain and TLS side by side, certificate reloads on SIGHUP, and start-up errors
//! for unusable files. Every certificate is made here, at test time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cim_client::{Backoff, BindInfo, Client, ClientConfig, ClientError, Event, Events};
use cim_server::{Listener, RunningServer, Server, TlsConfig};
use common::certs::{Ca, Files, write};
use common::process::{JSON, ServerProcess, http, run_once};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The names every test certificate is for (unless a test wants another).
const NAMES: &[&str] = &["localhost", "127.0.0.1"];

fn config(endpoint: &str, uid: &str, ca: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(endpoint.parse().unwrap(), BindInfo::new(uid));
    c.ca_file = Some(ca.to_owned());
    c.connect_timeout = WAIT;
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c
}

async fn next_message(events: &mut Events) -> cim_client::Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(m))) => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the events ended before a message"),
            Err(_) => panic!("timed out waiting for a message"),
        }
    }
}

/// A server whose TCP and WebSocket listeners speak TLS with the certificate of `files`.
async fn tls_server(files: &Files) -> RunningServer {
    init_logs();
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key).unwrap();
    Server::builder()
        .tls_listener(Listener::binary(loopback()), tls.clone())
        .tls_listener(Listener::websocket(loopback()), tls)
        .start()
        .await
        .unwrap()
}

/// Binds `uid` at `endpoint` trusting `ca`, pushes a message to it through the hub and checks
/// it arrives.
async fn bind_and_push(server: &RunningServer, endpoint: &str, uid: &str, ca: &Path) {
    let (client, mut events) = Client::connect(config(endpoint, uid, ca))
        .await
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    server
        .hub()
        .send(message_to(uid, &format!("over {endpoint}")))
        .await
        .unwrap();
    let m = next_message(&mut events).await;
    assert_eq!(m.content, format!("over {endpoint}"));
    assert_eq!(m.receiver, uid);
    client.destroy().await;
}

#[tokio::test]
async fn binary_protocol_over_tls_binds_and_takes_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = tls_server(&files).await;
    let port = server.addr("tls").unwrap().port();
    assert!(server.addr("tcp").is_none(), "{:?}", server.addrs());
    bind_and_push(
        &server,
        &format!("tls://localhost:{port}"),
        "alice",
        &files.ca,
    )
    .await;
    // By IP address too: the certificate names 127.0.0.1.
    bind_and_push(
        &server,
        &format!("tls://127.0.0.1:{port}"),
        "bob",
        &files.ca,
    )
    .await;
}

#[tokio::test]
async fn websocket_over_tls_binds_and_takes_a_push_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = tls_server(&files).await;
    let port = server.addr("wss").unwrap().port();
    bind_and_push(
        &server,
        &format!("wss://localhost:{port}/"),
        "carol",
        &files.ca,
    )
    .await;
    bind_and_push(
        &server,
        &format!("wss+json://localhost:{port}/"),
        "dave",
        &files.ca,
    )
    .await;
}

/// What `Client::connect` says when the handshake fails.
async fn refusal(endpoint: &str, ca: &Path) -> String {
    match Client::connect(config(endpoint, "mallory", ca)).await {
        Err(ClientError::Connect { reason, .. }) => reason,
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(_) => panic!("{endpoint}: the client accepted the certificate"),
    }
}

#[tokio::test]
async fn the_client_refuses_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(
        dir.path(),
        &ca,
        &ca.leaf_valid(NAMES, (2000, 1, 1), (2001, 1, 1)),
    );
    let server = tls_server(&files).await;
    for endpoint in [
        format!("tls://localhost:{}", server.addr("tls").unwrap().port()),
        format!("wss://localhost:{}/", server.addr("wss").unwrap().port()),
    ] {
        let reason = refusal(&endpoint, &files.ca).await;
        assert!(
            reason.contains("TLS handshake") && reason.to_lowercase().contains("expired"),
            "{endpoint}: {reason}"
        );
    }
}

#[tokio::test]
async fn the_client_refuses_a_certificate_for_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(&["push.example.com"]));
    let server = tls_server(&files).await;
    for endpoint in [
        format!("tls://localhost:{}", server.addr("tls").unwrap().port()),
        format!("wss://127.0.0.1:{}/", server.addr("wss").unwrap().port()),
    ] {
        let reason = refusal(&endpoint, &files.ca).await;
        assert!(
            reason.contains("TLS handshake") && reason.contains("not valid for name"),
            "{endpoint}: {reason}"
        );
    }
}

#[tokio::test]
async fn the_client_refuses_a_certificate_of_an_untrusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let other = tempfile::tempdir().unwrap();
    let stranger = Ca::new("another CA");
    let theirs = write(other.path(), &stranger, &stranger.leaf(NAMES));
    let server = tls_server(&files).await;
    let endpoint = format!("tls://localhost:{}", server.addr("tls").unwrap().port());
    let reason = refusal(&endpoint, &theirs.ca).await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
}

/// The environment of a server process whose TCP and WebSocket listeners take TLS from
/// `files`, and more.
fn tls_env<'a>(files: &'a Files, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    let mut env = vec![
        ("CIM_TCP__TLS__CERT", cert),
        ("CIM_TCP__TLS__KEY", key),
        ("CIM_WEBSOCKET__TLS__CERT", cert),
        ("CIM_WEBSOCKET__TLS__KEY", key),
    ];
    env.extend_from_slice(more);
    env
}

/// A log line without its colours.
fn uncoloured(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Log lines of `server` that contain every one of `needles`, collected for `wait`.
fn log_lines(server: &ServerProcess, needles: &[&str], wait: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut found = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match server.stderr.recv_timeout(left).map(|l| uncoloured(&l)) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => found.push(line),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    found
}

/// Waits for a log line containing every one of `needles`.
fn wait_log(server: &ServerProcess, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match server.stderr.recv_timeout(left).map(|l| uncoloured(&l)) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line with {needles:?}");
}

/// Reads until the server closes; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the server did not close the connection")
        .ok();
    got
}

#[tokio::test]
async fn a_plain_client_on_a_tls_port_is_closed_with_a_logged_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = ServerProcess::start(&tls_env(&files, &[]));
    let tls = server.addr("tls");
    assert!(!server.addrs.contains_key("tcp"), "{:?}", server.addrs);
    // A TLS client bound before the plain one.
    let (before, mut before_events) = Client::connect(config(
        &format!("tls://localhost:{}", tls.port()),
        "early",
        &files.ca,
    ))
    .await
    .unwrap();
    // The plain client writes a bind frame where a ClientHello belongs.
    let mut plain = TcpClient::connect(tls, cim_codec_binary::BinaryCodec::default()).await;
    plain
        .send(cim_core::Frame::Sent(bind_body("plain", "android", "d1")))
        .await;
    let local = plain.stream.local_addr().unwrap().to_string();
    let answer = read_to_close(&mut plain.stream).await;
    // Nothing but a TLS alert record (content type 21), if anything.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "unexpected answer {answer:?}"
    );
    let line = wait_log(&server, &["TLS handshake failed", &local]);
    assert!(line.contains("connection closed"), "{line}");
    // Logged once.
    assert!(
        log_lines(&server, &[&local], Duration::from_millis(300)).is_empty(),
        "logged more than once"
    );
    // The server goes on: the early client still takes pushes, and a new one binds.
    let http_addr = server.addr("http");
    let body = r#"{"receiver":"early","content":"still here"}"#;
    let resp = http(http_addr, "POST", "/api/v1/messages", &[JSON], body).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(next_message(&mut before_events).await.content, "still here");
    let (after, _) = Client::connect(config(
        &format!("tls://localhost:{}", tls.port()),
        "late",
        &files.ca,
    ))
    .await
    .unwrap();
    before.destroy().await;
    after.destroy().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_by_the_bind_timeout_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = ServerProcess::start(&tls_env(
        &files,
        &[("CIM_CONNECTION__BIND_TIMEOUT_MS", "400")],
    ));
    for proto in ["tls", "wss"] {
        // Says nothing at all.
        let mut silent = TcpStream::connect(server.addr(proto)).await.unwrap();
        let local = silent.local_addr().unwrap().to_string();
        assert!(read_to_close(&mut silent).await.is_empty());
        let line = wait_log(&server, &["TLS handshake not done", &local]);
        assert!(line.contains("bind_timeout_ms=400"), "{line}");
        assert!(
            log_lines(&server, &[&local], Duration::from_millis(300)).is_empty(),
            "logged more than once"
        );
    }
    // Half a ClientHello: the record header promises more than ever comes.
    let mut half = TcpStream::connect(server.addr("tls")).await.unwrap();
    half.write_all(&[22, 3, 1, 1, 0, 1, 0, 0]).await.unwrap();
    let local = half.local_addr().unwrap().to_string();
    read_to_close(&mut half).await;
    wait_log(&server, &["TLS handshake not done", &local]);
}

#[tokio::test]
async fn plain_and_tls_listeners_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = ServerProcess::start(&tls_env(
        &files,
        &[
            ("CIM_TCP__TLS__PORT", "0"),
            ("CIM_WEBSOCKET__TLS__PORT", "0"),
        ],
    ));
    for proto in ["tcp", "tls", "websocket", "wss"] {
        assert!(server.addrs.contains_key(proto), "{:?}", server.addrs);
    }
    let tcp = server.addr("tcp").port();
    let tls = server.addr("tls").port();
    let ws = server.addr("websocket").port();
    let wss = server.addr("wss").port();
    let endpoints = [
        format!("tcp://127.0.0.1:{tcp}"),
        format!("tls://localhost:{tls}"),
        format!("ws://127.0.0.1:{ws}/"),
        format!("wss://localhost:{wss}/"),
    ];
    for (i, endpoint) in endpoints.iter().enumerate() {
        let uid = format!("u{i}");
        let (client, mut events) = Client::connect(config(endpoint, &uid, &files.ca))
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        let body = format!(r#"{{"receiver":"{uid}","content":"via {endpoint}"}}"#);
        let resp = http(
            server.addr("http"),
            "POST",
            "/api/v1/messages",
            &[JSON],
            &body,
        )
        .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            next_message(&mut events).await.content,
            format!("via {endpoint}")
        );
        client.destroy().await;
    }
    // The plain port does not speak TLS, nor the TLS port plain.
    let reason = refusal(&format!("tls://localhost:{tcp}"), &files.ca).await;
    assert!(reason.contains("TLS handshake"), "{reason}");
}

fn send_hup(server: &ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let files = write(dir.path(), &first, &first.leaf(NAMES));
    // The first CA's certificate, kept where the files' renewal will not overwrite it.
    let first_ca = dir.path().join("first-ca.pem");
    std::fs::copy(&files.ca, &first_ca).unwrap();
    let server = ServerProcess::start(&tls_env(&files, &[]));
    let tls = format!("tls://localhost:{}", server.addr("tls").port());
    let wss = format!("wss://localhost:{}/", server.addr("wss").port());
    let (tcp_client, mut tcp_events) = Client::connect(config(&tls, "kept-tcp", &first_ca))
        .await
        .unwrap();
    let (ws_client, mut ws_events) = Client::connect(config(&wss, "kept-ws", &first_ca))
        .await
        .unwrap();

    // A broken file: the reload is refused, naming the key and the path; the first
    // certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    send_hup(&server);
    let line = wait_log(&server, &["TLS certificate not reloaded"]);
    assert!(
        line.contains("tcp.tls.cert") && line.contains(files.cert.to_str().unwrap()),
        "{line}"
    );
    let (c, _) = Client::connect(config(&tls, "still-first", &first_ca))
        .await
        .unwrap();
    c.destroy().await;

    // The renewal: a certificate of another CA.
    let second = Ca::new("second CA");
    let files = write(dir.path(), &second, &second.leaf(NAMES));
    send_hup(&server);
    wait_log(&server, &["TLS certificate reloaded", "listener=\"tcp\""]);
    wait_log(
        &server,
        &["TLS certificate reloaded", "listener=\"websocket\""],
    );

    // The connections made before the reload go on.
    for (uid, events) in [("kept-tcp", &mut tcp_events), ("kept-ws", &mut ws_events)] {
        let body = format!(r#"{{"receiver":"{uid}","content":"after the reload"}}"#);
        let resp = http(
            server.addr("http"),
            "POST",
            "/api/v1/messages",
            &[JSON],
            &body,
        )
        .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(next_message(events).await.content, "after the reload");
    }
    assert!(tcp_client.is_connected() && ws_client.is_connected());
    // New connections see the new certificate: trusted by the second CA, not the first.
    for endpoint in [&tls, &wss] {
        let (c, _) = Client::connect(config(endpoint, "new", &files.ca))
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        c.destroy().await;
        let reason = refusal(endpoint, &first_ca).await;
        assert!(reason.contains("UnknownIssuer"), "{reason}");
    }
    tcp_client.destroy().await;
    ws_client.destroy().await;
}

/// Runs the binary with `env` (on free ports); it must stop at start-up. Returns its stderr.
fn start_up_error(env: &[(&str, &str)]) -> String {
    let ports = [
        ("CIM_TCP__PORT", "0"),
        ("CIM_WEBSOCKET__PORT", "0"),
        ("CIM_HTTP__PORT", "0"),
        ("CIM_STORE__BACKEND", "memory"),
    ];
    let mut all = ports.to_vec();
    all.extend_from_slice(env);
    let (code, _, stderr) = run_once(&[], &all);
    assert_eq!(code, 2, "{stderr}");
    stderr
}

#[test]
fn unusable_files_stop_start_up_naming_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let e = start_up_error(&[("CIM_TCP__TLS__CERT", missing), ("CIM_TCP__TLS__KEY", key)]);
    assert!(
        e.contains("`tcp.tls.cert`") && e.contains(missing) && e.contains("No such file"),
        "{e}"
    );
    let e = start_up_error(&[
        ("CIM_WEBSOCKET__TLS__CERT", cert),
        ("CIM_WEBSOCKET__TLS__KEY", missing),
    ]);
    assert!(
        e.contains("`websocket.tls.key`") && e.contains(missing),
        "{e}"
    );
    // A certificate file with no certificate in it; a key file with a certificate in it.
    let e = start_up_error(&[("CIM_TCP__TLS__CERT", key), ("CIM_TCP__TLS__KEY", key)]);
    assert!(
        e.contains("`tcp.tls.cert`") && e.contains("no CERTIFICATE"),
        "{e}"
    );
    let e = start_up_error(&[("CIM_TCP__TLS__CERT", cert), ("CIM_TCP__TLS__KEY", cert)]);
    assert!(e.contains("`tcp.tls.key`") && e.contains(cert), "{e}");
    // Another certificate's key.
    let other = ca.leaf(NAMES);
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let other_key = other_key.to_str().unwrap();
    let e = start_up_error(&[
        ("CIM_TCP__TLS__CERT", cert),
        ("CIM_TCP__TLS__KEY", other_key),
    ]);
    assert!(
        e.contains("`tcp.tls.key`") && e.contains("does not match the certificate"),
        "{e}"
    );
    // Half a pair; a TLS port without a certificate; TLS on the XML listener.
    let e = start_up_error(&[("CIM_TCP__TLS__CERT", cert)]);
    assert!(e.contains("`tcp.tls.key`") && e.contains("needed"), "{e}");
    let e = start_up_error(&[("CIM_WEBSOCKET__TLS__PORT", "34443")]);
    assert!(e.contains("`websocket.tls.port` = 34443"), "{e}");
    let e = start_up_error(&[("CIM_XML__TLS__CERT", cert), ("CIM_XML__TLS__KEY", key)]);
    assert!(
        e.contains("`xml.tls.cert`") && e.contains("plain only"),
        "{e}"
    );
}

/// With a TLS port beside it, the plain listener keeps its name and port, and the TLS one is
/// listed as `tls` (`wss` for WebSocket) on a port of its own.
#[tokio::test]
async fn tls_addresses_are_printed_under_their_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(NAMES));
    let server = ServerProcess::start(&tls_env(&files, &[("CIM_TCP__TLS__PORT", "0")]));
    let names: std::collections::BTreeSet<&str> = server.addrs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["http", "tcp", "tls", "wss"].into_iter().collect(),
        "{:?}",
        server.addrs
    );
    let tcp: SocketAddr = server.addr("tcp");
    let tls: SocketAddr = server.addr("tls");
    assert_ne!(tcp.port(), tls.port());
}
