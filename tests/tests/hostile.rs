//! Hostile input and honest answers: oversized messages refused at the door and never lost,
//! refusals a client hears at once, account ids held to the rule at bind, floods over the
//! connection limit, command-line clients that do not take an account from each other in a loop,
//! and logs that say what happened.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use cim_client::{Backoff, BindInfo, Client, ClientConfig, ClientError, Event, Events, text};
use cim_core::engine::{Admission, ConnectionConfig};
use cim_core::protocol::code;
use cim_core::{Error, Frame, Message};
use cim_server::{Listener, Server, WsMode, WsSettings};
use common::process::{JSON, ServerProcess, built_binary, http, lines, pending};
use common::*;

fn big(to: &str, len: usize) -> String {
    serde_json::json!({ "receiver": to, "content": "x".repeat(len) }).to_string()
}

/// Sends `big` a message of `len` bytes over the HTTP API and checks that it is the next one
/// `c` receives: nothing refused before it arrived.
async fn next_arrival_is(p: &ServerProcess, c: &mut TcpClient, len: usize) {
    let r = http(
        p.addr("http"),
        "POST",
        "/api/v1/messages",
        &[JSON],
        &big("big", len),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.message().await.content.len(), len);
}

/// A message no listener can carry is refused before it is routed or stored, with `413` naming
/// the limits — by the JSON API and by CIM's form endpoint — and never reaches anyone.
#[tokio::test]
async fn http_refuses_a_message_no_listener_carries() {
    let p = ServerProcess::start(&[]);
    let mut c = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    c.bind("big", "android", "d").await;
    let r = http(
        p.addr("http"),
        "POST",
        "/api/v1/messages",
        &[JSON],
        &big("big", 70_000),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let reason = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("tcp.max_frame") && reason.contains("websocket.max_frame"),
        "{reason}"
    );
    let form = format!(
        "sender=s&receiver=big&action=2&content={}",
        "x".repeat(70_000)
    );
    let r = http(
        p.addr("http"),
        "POST",
        "/api/message/send",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(pending(p.addr("http"), "big").await, 0);
    // What arrives next is the next message, not the refused one.
    next_arrival_is(&p, &mut c, 10).await;
}

/// A batch with a message no listener can carry is refused whole, with `413` naming the
/// message and the limits: none of it is sent or stored.
#[tokio::test]
async fn http_refuses_a_batch_with_a_message_no_listener_carries() {
    let p = ServerProcess::start(&[]);
    let mut c = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    c.bind("big", "android", "d").await;
    let batch = serde_json::json!({ "messages": [
        { "receiver": "big", "content": "x".repeat(10) },
        { "receiver": "big", "content": "x".repeat(70_000) },
    ]});
    let r = http(
        p.addr("http"),
        "POST",
        "/api/v1/messages/batch",
        &[JSON],
        &batch.to_string(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let reason = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("messages[1]: the message is too large for every listener")
            && reason.contains("tcp.max_frame"),
        "{reason}"
    );
    assert_eq!(pending(p.addr("http"), "big").await, 0);
    // What arrives next is the next message, not the batch's first.
    next_arrival_is(&p, &mut c, 5).await;
}

/// A message one listener carries and the receiver's own connection's listener does not is
/// not written there, and not lost: it is kept for the account, and a connection that can
/// carry it gets it.
#[tokio::test]
async fn a_message_too_large_for_one_listener_is_kept_for_another() {
    let (server, _) = start_with(
        ConnectionConfig::default(),
        WsSettings {
            max_message: 1 << 20,
            mode: WsMode::Protobuf,
            ..WsSettings::default()
        },
        |b| b.store(Arc::new(cim_core::engine::MemoryStore::default())),
    )
    .await;
    let mut tcp = bound_tcp(&server, "mixed").await;
    let sent = server
        .hub()
        .send(message_to("mixed", &"x".repeat(70_000)))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    assert_receives(&server, &mut tcp, "mixed", "small one").await;
    let store = server.hub().store().unwrap();
    assert_eq!(store.count("mixed").await.unwrap(), 1, "kept, not lost");
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("mixed", "web", "tab"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
    match ws_next(&mut ws).await {
        Some(Frame::Message(m)) => assert_eq!((m.id, m.content.len()), (sent.id, 70_000)),
        other => panic!("expected the kept message, got {other:?}"),
    }
}

/// A stored message that the connection binding now cannot carry is not deleted by the
/// replay: it stays stored (for a connection that can), and the rest is delivered.
#[tokio::test]
async fn a_stored_message_no_connection_can_carry_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut first = ServerProcess::start(&[
        ("CIM_STORE__PATH", &path),
        ("CIM_TCP__ENABLED", "false"),
        ("CIM_WEBSOCKET__MAX_FRAME", "1048576"),
    ]);
    let r = http(
        first.addr("http"),
        "POST",
        "/api/v1/messages",
        &[JSON],
        &big("kept", 70_000),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stored"], true);
    let r = http(
        first.addr("http"),
        "POST",
        "/api/v1/messages",
        &[JSON],
        &big("kept", 5),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        tokio::task::spawn_blocking(move || first.terminate())
            .await
            .unwrap()
            .success()
    );

    let p = ServerProcess::start(&[("CIM_STORE__PATH", &path)]);
    let mut c = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    c.bind("kept", "android", "d").await;
    assert_eq!(c.message().await.content.len(), 5, "the one it can carry");
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending(p.addr("http"), "kept").await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the large one was not kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses messages with the letter `z` in them, to see refusals reach the sender.
struct NoZ;

impl Admission for NoZ {
    fn admit(&self, message: &Message) -> cim_core::Result<()> {
        if message.content.contains('z') {
            return Err(Error::reply(code::TOO_LARGE, "no z"));
        }
        Ok(())
    }
}

/// A server on a TCP listener that refuses messages with a `z` in them.
async fn no_z_server() -> cim_server::RunningServer {
    Server::builder()
        .listener(Listener::binary(loopback()))
        .admission(Arc::new(NoZ))
        .start()
        .await
        .unwrap()
}

/// Every refusal of `client_message` carries the request's `requestId`, so the client reports
/// it at once instead of waiting out its request timeout.
#[tokio::test]
async fn client_message_refusals_reach_the_client_at_once() {
    let server = no_z_server().await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let mut config = ClientConfig::new(endpoint.parse().unwrap(), BindInfo::new("sender"));
    // Long enough that a refusal waiting for the timeout could not pass for an answer.
    config.request_timeout = Duration::from_secs(600);
    let (client, _events) = Client::connect(config).await.unwrap();
    for (to, content, want) in [("", "hello", "400"), ("bob", "zzz", "413")] {
        let started = tokio::time::Instant::now();
        match client.send_message(to, text(content)).await {
            Err(ClientError::Refused(r)) => {
                assert_eq!(r.code, want, "{r:?}");
                assert!(started.elapsed() < Duration::from_secs(300));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert!(client.send_message("bob", text("fine")).await.is_ok());
}

/// `client_message`s pipelined in one write are admitted one by one: the refused one is
/// answered with its refusal and its `requestId`, the others are sent, in order.
#[tokio::test]
async fn pipelined_client_messages_are_admitted_one_by_one() {
    let server = no_z_server().await;
    let mut bob = bound_tcp(&server, "bob").await;
    let mut sender = bound_tcp(&server, "sender").await;
    sender
        .send_raw(&pipelined_sends(&[
            ("bob", "a"),
            ("bob", "zz"),
            ("bob", "b"),
        ]))
        .await;
    for (i, want) in ["200", "413", "200"].into_iter().enumerate() {
        let r = sender.reply().await;
        assert_eq!(
            (r.code.as_str(), r.data.get("requestId")),
            (want, Some(format!("r{i}").as_str())),
            "{r:?}"
        );
    }
    assert_eq!(bob.message().await.content, "a");
    assert_eq!(bob.message().await.content, "b");
}

/// A bind holds the account id to the same rule as the HTTP API: not empty, at most the
/// configured bytes, no control characters.
#[tokio::test]
async fn bind_refuses_account_ids_outside_the_rule() {
    let server = Server::builder()
        .listener(Listener::binary(loopback()))
        .max_uid_bytes(16)
        .start()
        .await
        .unwrap();
    let mut c = tcp(&server).await;
    for (uid, want) in [
        ("a".repeat(17), "uid is 17 bytes"),
        ("a\u{7}b".to_owned(), "control character"),
    ] {
        c.send(Frame::Sent(bind_body(&uid, "android", "d"))).await;
        let r = c.reply().await;
        assert_eq!(r.code, "400", "{r:?}");
        assert!(r.message.contains(want), "{r:?}");
    }
    c.bind(&"a".repeat(16), "android", "d").await;
}

/// Over `max_connections`, extra clients are refused without a log line each (a count every
/// few seconds instead), and a WebSocket upgrade is answered `503`.
#[tokio::test]
async fn refusals_over_the_connection_limit_are_counted_and_websockets_told() {
    let p = ServerProcess::start(&[("CIM_MAX_CONNECTIONS", "2")]);
    let _a = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    let _b = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    // Let both be accepted before the flood.
    let mut held = http(p.addr("http"), "GET", "/health", &[], "").await;
    assert_eq!(held.status, 200);
    for _ in 0..40 {
        let mut c =
            StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
        assert!(c.expect_closed().await.is_empty());
    }
    let mut ws = tokio::net::TcpStream::connect(p.addr("websocket"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ws.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, ws.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The log: one line for the first refusal (the rest are counted into the next line, at
    // most every ten seconds).
    held = http(p.addr("http"), "GET", "/health", &[], "").await;
    assert_eq!(held.status, 200);
    let lines: Vec<String> = p.stderr.try_iter().collect();
    let refusals = lines
        .iter()
        .filter(|l| l.contains("max_connections reached"))
        .count();
    assert_eq!(refusals, 1, "{lines:#?}");
}

/// Two `cim listen` of one account on conflicting channels are two devices (each process has
/// its own default device id): the second kicks the first, which says so and exits, instead of
/// the two taking the account from each other in a loop.
#[tokio::test]
async fn two_cli_listeners_of_one_account_do_not_take_it_from_each_other() {
    let p = ServerProcess::start(&[]);
    let tcp = format!("tcp://{}", p.addr("tcp"));
    let cim = built_binary("cim-cli", "cim");
    let spawn = |channel: &str| {
        let mut c = std::process::Command::new(&cim)
            .args(["listen", "--uid", "twice", "--channel", channel, "-s", &tcp])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = lines(c.stderr.take().unwrap());
        (c, err)
    };
    let (mut first, first_err) = spawn("android");
    let wait_for = |rx: &std::sync::mpsc::Receiver<String>, what: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line with {what}"));
        if line.contains(what) {
            return line;
        }
    };
    wait_for(&first_err, "listening as twice");
    let (mut second, second_err) = spawn("ios");
    wait_for(&second_err, "listening as twice");
    let line = wait_for(&first_err, "another device");
    assert!(line.contains("twice"), "{line}");
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success());
    let r = http(
        p.addr("http"),
        "GET",
        "/api/v1/accounts/twice/sessions",
        &[],
        "",
    )
    .await;
    let sessions = r.json();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(sessions[0]["channel"], "ios");
    let _ = second.kill();
    let _ = second.wait();
}

async fn closed_event(events: &mut Events) -> (String, Option<Duration>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no Closed event")
            .expect("the events ended");
        if let Event::Closed { reason, retry_in } = e {
            return (reason, retry_in);
        }
    }
}

/// Two clients of one account *and one device* close each other silently (the rule for a
/// device that reconnects): each then backs off further at every such close, and says why,
/// instead of reconnecting in a tight loop.
#[tokio::test]
async fn a_client_closed_by_its_own_device_backs_off_and_says_why() {
    let server = Server::builder()
        .listener(Listener::binary(loopback()))
        .start()
        .await
        .unwrap();
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let config = |channel: &str| {
        let mut bind = BindInfo::new("same");
        bind.channel = channel.into();
        bind.device_id = "one-device".into();
        let mut c = ClientConfig::new(endpoint.parse().unwrap(), bind);
        c.backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        };
        c
    };
    let (_a, mut a_events) = Client::connect(config("android")).await.unwrap();
    let (_b, _b_events) = Client::connect(config("ios")).await.unwrap();
    let mut in_a_row = Vec::new();
    while in_a_row.len() < 3 {
        let (reason, retry_in) = closed_event(&mut a_events).await;
        assert!(retry_in.is_some(), "{reason}");
        assert!(reason.contains("after binding"), "{reason}");
        // The first close says nothing of a takeover: once could be anything.
        if in_a_row.is_empty() && !reason.contains(" times in a row") {
            assert!(!reason.contains("taking it over"), "{reason}");
            continue;
        }
        let n: u32 = reason
            .split(" times in a row")
            .next()
            .and_then(|s| s.rsplit(", ").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {reason:?}"));
        assert!(n >= 2 && reason.contains("taking it over"), "{reason}");
        in_a_row.push(n);
    }
    assert!(
        in_a_row.windows(2).all(|w| w[1] > w[0]),
        "each close counts as one more in a row: {in_a_row:?}"
    );
}

/// An operator's kick says who kicked (content `admin`) and is logged as an operator's, not as a
/// newer bind's; a second bind on one connection names the new account once in the log; a
/// push is logged at debug level with its id.
#[tokio::test]
async fn logs_and_notices_say_what_happened() {
    let p = ServerProcess::start(&[("RUST_LOG", "info,cim_core=debug")]);
    let mut c = StreamClient::connect(p.addr("tcp"), cim_codec_binary::BinaryCodec::new()).await;
    c.bind("first", "android", "d").await;
    c.bind("second", "android", "d").await;
    let r = http(
        p.addr("http"),
        "POST",
        "/api/v1/messages",
        &[JSON],
        &big("second", 3),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(c.message().await.id.to_string(), id);
    let r = http(
        p.addr("http"),
        "DELETE",
        "/api/v1/accounts/second/sessions",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["kicked"], 1);
    let kick = c.message().await;
    assert_eq!(
        (kick.action.as_str(), kick.content.as_str()),
        ("999", "admin")
    );
    c.expect_closed().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen_push = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = p.stderr.recv_timeout(left).expect("no 'closed' line");
        if line.contains("sent") && line.contains(&id) {
            seen_push = true;
        }
        if line.contains("closed") && line.contains("reason") {
            assert!(line.contains("kicked by an operator"), "{line}");
            assert_eq!(line.matches("uid=").count(), 1, "{line}");
            assert!(line.contains("uid=\"second\""), "{line}");
            break;
        }
    }
    assert!(seen_push, "the push was not logged at debug level");
}
