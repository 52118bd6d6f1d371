//! A browser over wss://: headless Chromium, driven through chromedriver, trusts the test's
//! certificate by its public key, binds in the JSON mode of the stock web SDK and takes a push.
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/test installs them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::time::Duration;

use cim_server::{Listener, Server, TlsConfig};
use common::browser::Browser;
use common::certs::{Ca, write};
use common::*;
use serde_json::{Value, json};

/// Serves a blank page on 127.0.0.1 to every request: the page the browser opens the socket
/// from (a page of the loopback address may reach the loopback address; one of no address,
/// such as `data:`, is held back by the browser's local-network checks).
async fn page_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let body = "<!doctype html><title>cim</title>";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// Opens the socket, sends the bind when it opens, and records every message and event in
/// `window.log`.
const PAGE_SCRIPT: &str = r#"
const url = arguments[0];
window.log = [];
const ws = new WebSocket(url);
ws.onopen = () => ws.send(JSON.stringify({
    type: 3,
    content: JSON.stringify({
        key: "client_bind",
        timestamp: Date.now(),
        data: { uid: "browser", channel: "web", deviceId: "chromium", deviceName: "Chromium",
                appVersion: "1.0", osVersion: "linux", language: "en" }
    })
}));
ws.onmessage = (e) => window.log.push(e.data);
ws.onerror = () => window.log.push("error");
ws.onclose = (e) => window.log.push("close " + e.code);
"#;

/// Waits until an entry of the page's log is a packet of `kind` whose body satisfies `pred`;
/// returns the body.
async fn wait_packet(
    browser: &fantoccini::Client,
    kind: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = browser.execute("return window.log", vec![]).await.unwrap();
        for entry in log.as_array().cloned().unwrap_or_default() {
            let text = entry.as_str().unwrap_or_default().to_owned();
            assert!(
                !text.starts_with("error") && !text.starts_with("close"),
                "the socket failed: {log}"
            );
            let Ok(packet) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if packet["type"].as_u64() != Some(kind) {
                continue;
            }
            let body: Value = serde_json::from_str(packet["content"].as_str().unwrap()).unwrap();
            if pred(&body) {
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no packet of type {kind} in {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn chromium_binds_over_wss_and_takes_a_push() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let files = write(dir.path(), &ca, &leaf);
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key).unwrap();
    let server = Server::builder()
        .tls_listener(Listener::websocket(loopback()), tls)
        .start()
        .await
        .unwrap();
    let port = server.addr("wss").unwrap().port();

    // Trusts this one certificate, by the hash of its public key.
    let session = Browser::open(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        leaf.spki_sha256
    )])
    .await;
    let browser = &session.client;

    let page = page_server().await;
    browser.goto(&format!("http://{page}/")).await.unwrap();
    let url = format!("wss://localhost:{port}/");
    browser
        .execute(PAGE_SCRIPT, vec![json!(url)])
        .await
        .unwrap();
    let reply = wait_packet(browser, 4, |b| b["key"] == "client_bind").await;
    assert_eq!(reply["code"], "200", "{reply}");
    server
        .hub()
        .send(message_to("browser", "hello, browser"))
        .await
        .unwrap();
    let message = wait_packet(browser, 2, |b| b["content"] == "hello, browser").await;
    assert_eq!(message["receiver"], "browser");
    session.close().await;
}
