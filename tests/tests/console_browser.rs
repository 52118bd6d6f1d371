//! The admin console in a real browser: headless Chromium, driven through chromedriver, against
//! the real binary with an API key. It signs in (a wrong key first), sees the clients the test
//! bound with their node and their own address (one behind a load balancer's PROXY header),
//! sends it a message from the form (the client gets it), counts and deletes an
//! account's stored messages, watches the live figures, and kicks the client (which gets `999`).
//! It takes a screenshot of each page: into `$CIM_CONSOLE_SCREENSHOTS` when set (relative to the
//! repository; the ones in `docs/` were taken with `CIM_CONSOLE_SCREENSHOTS=docs`), else into the
//! build's scratch directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_core::Frame;
use common::browser::Browser;
use common::haproxy::connect_from;
use common::process::{JSON, ServerProcess, http};
use common::{StreamClient, TcpClient, WAIT};
use fantoccini::{Client, Locator};

const KEY: &str = "console-test-key";

/// Where the screenshots go.
fn screenshot_dir() -> PathBuf {
    match std::env::var_os("CIM_CONSOLE_SCREENSHOTS") {
        Some(dir) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
    }
}

/// Saves a screenshot of the page as `name`, checking it is a PNG of the window's size.
async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "{name}");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Waits until the text of the element at `css` satisfies `pred`; returns it.
async fn wait_text(browser: &Client, css: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = match browser.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if pred(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never matched; its text: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no element matches `css`.
async fn wait_gone(browser: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !browser
        .find_all(Locator::Css(css))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn type_into(browser: &Client, css: &str, text: &str) {
    let el = browser.find(Locator::Css(css)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

/// A client of `uid` bound from the loopback address `from`; through the trusted proxy
/// (127.0.0.1) with `proxied`'s PROXY header first, when given.
async fn bound(
    p: &ServerProcess,
    from: &str,
    proxied: Option<&[u8]>,
    (uid, channel, device): (&str, &str, &str),
) -> TcpClient {
    let stream = connect_from(from, p.addr("tcp")).await;
    let mut c = StreamClient::on(stream, BinaryCodec::new());
    if let Some(header) = proxied {
        c.send_raw(header).await;
    }
    c.bind(uid, channel, device).await;
    c
}

#[tokio::test]
async fn the_console_lists_sends_counts_and_kicks_in_chromium() {
    // Behind a load balancer (127.0.0.1, which sends PROXY headers), and reached directly.
    let p = ServerProcess::start(&[
        ("CIM_HTTP__API_KEY", KEY),
        ("CIM_NODE", "edge-1"),
        ("CIM_TCP__PROXY_PROTOCOL", "true"),
        ("CIM_TCP__TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let api = p.addr("http");
    let mut alice = bound(&p, "127.0.0.7", None, ("alice", "android", "pixel-8")).await;
    let _web = bound(
        &p,
        "127.0.0.1",
        Some(b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 23456\r\n"),
        ("marta", "web", "firefox-tab"),
    )
    .await;
    // Three messages wait for bob, who is offline.
    for i in 0..3 {
        let r = http(
            api,
            "POST",
            "/api/v1/messages",
            &[JSON, ("x-api-key", KEY)],
            &format!(r#"{{"receiver":"bob","content":"waiting {i}"}}"#),
        )
        .await;
        assert_eq!(r.json()["stored"], true, "{r:?}");
    }
    // A steady trickle to a reader of its own, so the live figures have something to show.
    let mut feed = bound(&p, "127.0.0.8", None, ("feed", "ios", "iphone")).await;
    let trickling = Arc::new(AtomicBool::new(true));
    let trickle = tokio::spawn({
        let on = Arc::clone(&trickling);
        async move {
            let mut sent = 0u32;
            while on.load(Ordering::Relaxed) {
                let body = format!(r#"{{"receiver":"feed","content":"tick {sent}"}}"#);
                http(
                    api,
                    "POST",
                    "/api/v1/messages",
                    &[JSON, ("x-api-key", KEY)],
                    &body,
                )
                .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    // Read and dropped as they come.
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        while feed.stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });

    let session = Browser::open(&[
        "--window-size=1280,1000".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--force-device-scale-factor=1".to_owned(),
    ])
    .await;
    let browser = &session.client;
    browser
        .goto(&format!("http://{api}/console"))
        .await
        .unwrap();

    // Signing in: a wrong key is refused with the API's reason, the right one opens it.
    wait_text(browser, "#login-submit", |t| t == "Sign in").await;
    type_into(browser, "#login-key", "not-the-key").await;
    click(browser, "#login-submit").await;
    wait_text(browser, "#login-error", |t| t.contains("wrong API key")).await;
    type_into(browser, "#login-key", KEY).await;
    screenshot(browser, "console-login.png").await;
    click(browser, "#login-submit").await;
    let url = browser.current_url().await.unwrap();
    assert!(!url.as_str().contains(KEY), "the key is in the URL: {url}");
    let stored = browser
        .execute(
            "return sessionStorage.getItem('cim.console.apiKey')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, KEY);

    // The overview: live figures from the stats endpoint, rates once two samples are in.
    wait_text(browser, "#node", |t| t == "edge-1").await;
    wait_text(browser, "#fig-connections", |t| t == "3").await;
    wait_text(browser, "#fig-sessions", |t| t == "3").await;
    wait_text(browser, "#fig-in", |t| {
        t.parse::<f64>().is_ok_and(|r| r > 0.0)
    })
    .await;
    wait_text(browser, "#fig-out", |t| {
        t.parse::<f64>().is_ok_and(|r| r > 0.0)
    })
    .await;
    // A few more samples for the chart.
    let points =
        "return document.getElementById('chart-in').getAttribute('points').split(' ').length";
    let deadline = tokio::time::Instant::now() + WAIT;
    while browser
        .execute(points, vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap()
        < 6
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chart did not grow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(browser, "console-overview.png").await;
    trickling.store(false, Ordering::Relaxed);
    assert!(trickle.await.unwrap() > 0);

    // Sessions: every bound client, then a search by account.
    click(browser, "button[data-view=sessions]").await;
    wait_text(browser, "#sessions-total", |t| t == "1–3 of 3").await;
    let row = wait_text(browser, "tr[data-uid=alice]", |t| !t.is_empty()).await;
    // Its node and the client's own address.
    for want in [
        "alice",
        "android",
        "pixel-8",
        "edge-1",
        "tcp",
        "127.0.0.7:",
        "no",
    ] {
        assert!(row.contains(want), "{want} missing from {row:?}");
    }
    // The client the load balancer named, not the load balancer.
    let row = wait_text(browser, "tr[data-uid=marta]", |t| t.contains("firefox-tab")).await;
    assert!(row.contains("198.51.100.20:40000"), "{row:?}");
    screenshot(browser, "console-sessions.png").await;
    type_into(browser, "#sessions-uid", "alice").await;
    click(browser, "#sessions-search").await;
    wait_text(browser, "#sessions-total", |t| t == "1–1 of 1").await;
    wait_gone(browser, "tr[data-uid=marta]").await;

    // Send: from the form to alice, who receives it; the answer is shown.
    click(browser, "button[data-view=send]").await;
    type_into(browser, "#send-receiver", "alice").await;
    type_into(browser, "#send-title", "Maintenance").await;
    type_into(browser, "#send-content", "hello from the console").await;
    type_into(browser, "#send-extra", r#"{"ticket":42}"#).await;
    click(browser, "#send-submit").await;
    wait_text(browser, "#send-result-delivered", |t| t == "1").await;
    wait_text(browser, "#send-result-stored", |t| t == "no").await;
    let id = wait_text(browser, "#send-result-id", |t| !t.is_empty()).await;
    let m = alice.message().await;
    assert_eq!(
        (
            m.content.as_str(),
            m.title.as_str(),
            m.extra.as_str(),
            m.sender.as_str(),
            m.action.as_str()
        ),
        (
            "hello from the console",
            "Maintenance",
            r#"{"ticket":42}"#,
            "system",
            "2"
        )
    );
    assert_eq!(m.id.to_string(), id);
    screenshot(browser, "console-send.png").await;

    // Stored messages: bob's three, counted, then deleted.
    click(browser, "button[data-view=stored]").await;
    type_into(browser, "#stored-uid", "bob").await;
    click(browser, "#stored-count-button").await;
    wait_text(browser, "#stored-count", |t| t == "3").await;
    screenshot(browser, "console-stored.png").await;
    click(browser, "#stored-delete").await;
    wait_text(browser, "#stored-status", |t| t.contains("Deleted 3")).await;
    let r = http(
        api,
        "GET",
        "/api/v1/accounts/bob/pending",
        &[("x-api-key", KEY)],
        "",
    )
    .await;
    assert_eq!(r.json()["pending"], 0);

    // Kick: alice gets the notice from the operator, then is closed; her row goes.
    click(browser, "button[data-view=sessions]").await;
    wait_text(browser, "tr[data-uid=alice]", |t| !t.is_empty()).await;
    click(browser, "tr[data-uid=alice] button.kick").await;
    wait_text(browser, "#sessions-status", |t| {
        t.contains("Kicked 1 connection(s) of alice")
    })
    .await;
    let seen = alice.expect_closed().await;
    let notice = seen
        .iter()
        .find_map(|f| match f {
            Frame::Message(m) if m.action == "999" => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no kick notice in {seen:?}"));
    assert_eq!(
        (notice.sender.as_str(), notice.content.as_str()),
        ("0", "admin")
    );
    wait_gone(browser, "tr[data-uid=alice]").await;

    // Signing out forgets the key.
    click(browser, "#sign-out").await;
    wait_text(browser, "#login-submit", |t| t == "Sign in").await;
    let stored = browser
        .execute(
            "return sessionStorage.getItem('cim.console.apiKey')",
            vec![],
        )
        .await
        .unwrap();
    assert!(stored.is_null(), "{stored}");

    session.close().await;
    reader.abort();
}
