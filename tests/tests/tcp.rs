//! The binary protocol over TCP: a stock client's bytes, heartbeats, pushes, requests, kicks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::engine::{ConnectionConfig, Timers};
use cim_core::{Frame, Message, ReplyBody, RequestContext, RequestHandler, Result, SentBody};
use cim_server::WsSettings;
use common::*;

/// docs/protocol.md section 2: `SentBody{key="client_bind", timestamp=1700000000000,
/// data{uid="10000", channel="android"}}` as a stock client writes it.
const STOCK_BIND: &[u8] = &[
    0x03, 0x36, 0x00, 0x0a, 0x0b, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x5f, 0x62, 0x69, 0x6e, 0x64,
    0x10, 0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x1a, 0x0c, 0x0a, 0x03, 0x75, 0x69, 0x64, 0x12, 0x05,
    0x31, 0x30, 0x30, 0x30, 0x30, 0x1a, 0x12, 0x0a, 0x07, 0x63, 0x68, 0x61, 0x6e, 0x6e, 0x65, 0x6c,
    0x12, 0x07, 0x61, 0x6e, 0x64, 0x72, 0x6f, 0x69, 0x64,
];
const PING: &[u8] = &[0x01, 0x04, 0x00, 0x50, 0x49, 0x4E, 0x47];
const PONG: &[u8] = &[0x00, 0x04, 0x00, 0x50, 0x4F, 0x4E, 0x47];

#[tokio::test]
async fn stock_client_bytes_bind_heartbeat_and_push() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(300),
            read_idle: Duration::from_secs(30),
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    };
    let (server, _) = start_with(conn, WsSettings::default(), |b| b).await;
    let mut c = tcp(&server).await;
    c.send_raw(STOCK_BIND).await;

    // The reply: type 4, a little-endian length, then ReplyBody{key, code "200", timestamp}.
    let mut head = [0u8; 3];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut head)
        .await
        .unwrap();
    assert_eq!(head[0], 4);
    let len = u16::from_le_bytes([head[1], head[2]]) as usize;
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut body)
        .await
        .unwrap();
    assert!(
        body.starts_with(b"\x0a\x0bclient_bind\x12\x03200"),
        "{body:x?}"
    );

    // Nothing written for write_idle: the exact PING bytes.
    let mut ping = [0u8; 7];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut ping)
        .await
        .unwrap();
    assert_eq!(ping, PING);
    c.send_raw(PONG).await;

    let sessions = server.hub().sessions().sessions("10000").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].channel, "android");
    assert_receives(&server, &mut c, "10000", "hello").await;
}

#[tokio::test]
async fn unknown_key_is_answered_404() {
    let (server, _) = start().await;
    let mut c = bound_tcp(&server, "u404").await;
    c.send(Frame::Sent(SentBody::new("no_such_key").with("a", "b")))
        .await;
    let r = c.reply().await;
    assert_eq!((r.key.as_str(), r.code.as_str()), ("no_such_key", "404"));
    // The connection stays usable.
    assert_receives(&server, &mut c, "u404", "still here").await;
}

#[tokio::test]
async fn bind_without_uid_is_refused_and_the_connection_may_bind_again() {
    let (server, _) = start().await;
    let mut c = tcp(&server).await;
    c.send(Frame::Sent(
        SentBody::new("client_bind").with("channel", "android"),
    ))
    .await;
    let r = c.reply().await;
    assert_eq!((r.key.as_str(), r.code.as_str()), ("client_bind", "400"));
    assert!(r.message.contains("uid"), "{r:?}");
    c.bind("late", "android", "d").await;
    assert_receives(&server, &mut c, "late", "ok").await;
}

#[tokio::test]
async fn client_message_reaches_the_receiver_and_is_acknowledged() {
    let (server, _) = start().await;
    let mut alice = bound_tcp(&server, "alice").await;
    let mut bob = bound_tcp(&server, "bob").await;
    alice
        .send(Frame::Sent(
            SentBody::new("client_message")
                .with("receiver", "bob")
                .with("action", "2")
                .with("content", "hi bob")
                .with("format", "txt")
                .with("requestId", "r-1"),
        ))
        .await;
    let reply = alice.reply().await;
    assert_eq!(reply.code, "200", "{reply:?}");
    assert_eq!(reply.data.get("requestId"), Some("r-1"));
    let id: i64 = reply.data.get("messageId").unwrap().parse().unwrap();
    let m = bob.message().await;
    assert_eq!(
        (m.sender.as_str(), m.content.as_str(), m.id),
        ("alice", "hi bob", id)
    );

    // Without a receiver: 400. Before binding: 403.
    alice
        .send(Frame::Sent(
            SentBody::new("client_message").with("content", "x"),
        ))
        .await;
    assert_eq!(alice.reply().await.code, "400");
    let mut stranger = tcp(&server).await;
    stranger
        .send(Frame::Sent(
            SentBody::new("client_message").with("receiver", "bob"),
        ))
        .await;
    assert_eq!(stranger.reply().await.code, "403");
}

/// The next frame of a slow reader: `None` for a push (counted in `received`) or a PING, the
/// reply when one comes.
async fn slow_read(client: &mut TcpClient, received: &AtomicU64) -> Option<ReplyBody> {
    match client.next_slowly(8 * 1024).await {
        Some(Frame::Message(m)) if m.action == "flood" => {
            received.fetch_add(1, Ordering::Relaxed);
            None
        }
        Some(Frame::Reply(r)) => Some(r),
        Some(Frame::Ping) => None,
        other => panic!("expected a push or the reply, got {other:?}"),
    }
}

/// A connection whose queue never empties still reads what its peer sends: its task looks at
/// the socket between writes however busy the queue. Its reader is slow, and the pusher keeps
/// 1 000 messages of 4 KiB on their way to it (more than the sockets' buffers hold, some 1.3 MB
/// on loopback), so that its queue has something in it whenever its task looks; its writes are
/// of 16 messages at most, so that each is short.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_connection_whose_queue_never_empties_still_reads_its_peer() {
    const IN_FLIGHT: u64 = 1_000;
    let conn = ConnectionConfig {
        queue_capacity: 4 * IN_FLIGHT as usize,
        max_batch: 16,
        ..ConnectionConfig::default()
    };
    let (server, _) = start_with(conn, WsSettings::default(), |b| b).await;
    // A small receive buffer, so that the sockets hold little of what is on its way.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr("tcp").unwrap()).await.unwrap();
    let mut alice = StreamClient::on(stream, cim_codec_binary::BinaryCodec::new());
    alice.bind("alice", "android", "dev-alice").await;
    let _bob = bound_tcp(&server, "bob").await;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let hub = Arc::clone(server.hub());
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sent - received.load(Ordering::Relaxed) >= IN_FLIGHT {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                let flood = Message {
                    action: "flood".into(),
                    ..message_to("alice", &"x".repeat(4 * 1024))
                };
                let sent_to = hub.send(flood).await.unwrap();
                assert_eq!(sent_to.delivered, 1, "{sent_to:?}");
                sent += 1;
            }
            sent
        })
    };
    while received.load(Ordering::Relaxed) < IN_FLIGHT {
        assert!(
            slow_read(&mut alice, &received).await.is_none(),
            "a reply before any request"
        );
    }
    alice
        .send(Frame::Sent(
            SentBody::new("client_message")
                .with("receiver", "bob")
                .with("content", "between the pushes")
                .with("requestId", "r-flood"),
        ))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(r) = slow_read(&mut alice, &received).await {
                return r;
            }
        }
    })
    .await
    .expect("the request was never read while the queue kept filling");
    assert_eq!(reply.data.get("requestId"), Some("r-flood"), "{reply:?}");
    assert_eq!(reply.code, "200", "{reply:?}");
    assert!(!pusher.is_finished(), "the pushes stopped before the reply");
    stop.store(true, Ordering::Relaxed);
    pusher.await.unwrap();
}

#[tokio::test]
async fn tags_and_broadcast() {
    let (server, _) = start().await;
    let mut a = bound_tcp(&server, "ta").await;
    let mut b = bound_tcp(&server, "tb").await;
    let mut c = bound_tcp(&server, "tc").await;
    for client in [&mut a, &mut b] {
        client
            .send(Frame::Sent(
                SentBody::new("client_set_tag").with("tag", "news"),
            ))
            .await;
        assert_eq!(client.reply().await.code, "200");
    }
    let sent = server
        .hub()
        .send_to_tag("news", message_to("", "tagged"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 2);
    assert_eq!(a.message().await.content, "tagged");
    assert_eq!(b.message().await.content, "tagged");

    b.send(Frame::Sent(
        SentBody::new("client_remove_tag").with("tag", "news"),
    ))
    .await;
    assert_eq!(b.reply().await.code, "200");
    let sent = server
        .hub()
        .send_to_tag("news", message_to("", "again"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    assert_eq!(a.message().await.content, "again");

    let sent = server
        .hub()
        .broadcast(message_to("", "everyone"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 3);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.message().await.content, "everyone");
    }
    // b left the tag, so its next message is the broadcast, not "again".
    client_has_nothing_pending(&mut b).await;
}

async fn client_has_nothing_pending(c: &mut TcpClient) {
    let r = tokio::time::timeout(Duration::from_millis(200), c.next()).await;
    assert!(r.is_err(), "unexpected frame {r:?}");
}

#[tokio::test]
async fn kick_from_another_device_sends_999_then_closes() {
    let (server, closes) = start().await;
    let mut old = tcp(&server).await;
    old.bind("k1", "android", "phone-1").await;
    let mut new = tcp(&server).await;
    new.bind("k1", "ios", "phone-2").await;
    let frames = old.expect_closed().await;
    let kicks: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(kicks.len(), 1, "{frames:?}");
    assert_eq!(
        (
            kicks[0].action.as_str(),
            kicks[0].sender.as_str(),
            kicks[0].receiver.as_str()
        ),
        ("999", "0", "k1")
    );
    assert_eq!(kicks[0].content, "phone-2-name");
    closes.wait_for("kicked").await;
    // Only the new connection is registered, and it receives.
    assert_eq!(
        server.hub().sessions().sessions("k1").await.unwrap().len(),
        1
    );
    assert_receives(&server, &mut new, "k1", "to the new one").await;
}

#[tokio::test]
async fn same_device_is_closed_silently_and_web_tabs_are_kept() {
    let (server, _) = start().await;
    let mut old = tcp(&server).await;
    old.bind("k2", "android", "same").await;
    let mut new = tcp(&server).await;
    new.bind("k2", "android", "same").await;
    let frames = old.expect_closed().await;
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::Message(_))),
        "silent close sent {frames:?}"
    );

    // Two browser tabs of one device, and a phone: nobody is kicked.
    let mut tab1 = tcp(&server).await;
    tab1.bind("k3", "web", "browser").await;
    let mut tab2 = tcp(&server).await;
    tab2.bind("k3", "web", "browser").await;
    let mut phone = tcp(&server).await;
    phone.bind("k3", "android", "phone").await;
    let sent = server
        .hub()
        .send(message_to("k3", "all three"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 3);
    for c in [&mut tab1, &mut tab2, &mut phone] {
        assert_eq!(c.message().await.content, "all three");
    }
}

/// Records who `client_closed` was called for.
#[derive(Default)]
struct OnClosed(Mutex<Vec<(String, String)>>);

#[async_trait]
impl RequestHandler for OnClosed {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let uid = ctx.session.map(|s| s.uid.to_string()).unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((uid, body.get("reason").to_owned()));
        Ok(None)
    }
}

#[tokio::test]
async fn client_closed_reaches_handlers_and_listeners_on_every_disconnect() {
    let seen = Arc::new(OnClosed::default());
    let (server, closes) = start_with(ConnectionConfig::default(), WsSettings::default(), {
        let seen = seen.clone();
        |b| b.handler("client_closed", seen)
    })
    .await;
    let c = bound_tcp(&server, "leaver").await;
    let unbound = tcp(&server).await;
    drop(c);
    drop(unbound);
    closes.wait_for("closed by peer").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.0.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            seen.0.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.0.lock().unwrap().clone();
    assert!(seen.iter().any(|(uid, _)| uid == "leaver"), "{seen:?}");
    assert!(seen.iter().any(|(uid, _)| uid.is_empty()), "{seen:?}");
    assert!(
        server
            .hub()
            .sessions()
            .sessions("leaver")
            .await
            .unwrap()
            .is_empty()
    );
    // A client may not send client_closed itself.
    let mut c = bound_tcp(&server, "sneaky").await;
    c.send(Frame::Sent(SentBody::new("client_closed"))).await;
    assert_eq!(c.reply().await.code, "403");
}

/// A session names the protocol of the listener that accepted its connection.
#[tokio::test]
async fn sessions_name_their_protocol() {
    let (server, _) = start().await;
    let _t = bound_tcp(&server, "proto").await;
    let mut x = xml(&server).await;
    x.bind("proto", "app", "xml-dev").await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("proto", "web", "ws-tab"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
    let mut protocols: Vec<String> = server
        .hub()
        .sessions()
        .sessions("proto")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.protocol.to_string())
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["tcp", "websocket", "xml"]);
}

/// Records how many requests each call of a handler got.
#[derive(Default)]
struct Runs(Mutex<Vec<usize>>);

#[async_trait]
impl RequestHandler for Runs {
    async fn handle(&self, _: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        self.0.lock().unwrap().push(1);
        Ok(Some(ReplyBody::ok(&body.key).with("n", body.get("n"))))
    }

    async fn handle_many(
        &self,
        _: &RequestContext<'_>,
        bodies: Vec<SentBody>,
    ) -> Vec<Result<Option<ReplyBody>>> {
        self.0.lock().unwrap().push(bodies.len());
        bodies
            .into_iter()
            .map(|b| Ok(Some(ReplyBody::ok(&b.key).with("n", b.get("n")))))
            .collect()
    }
}

/// Requests of one key that arrive together are handed to the handler as one run, and answered
/// in order; a request of another key in between ends the run.
#[tokio::test]
async fn a_burst_of_one_key_is_one_run() {
    use cim_core::StreamCodec;
    let runs = Arc::new(Runs::default());
    let (server, _) = start_with(ConnectionConfig::default(), WsSettings::default(), |b| {
        b.handler("run", Arc::clone(&runs))
    })
    .await;
    let mut c = tcp(&server).await;
    let mut out = bytes::BytesMut::new();
    let mut codec = cim_codec_binary::BinaryCodec::new();
    for i in 0..40 {
        let key = if i == 20 { "other" } else { "run" };
        let body = SentBody::new(key).with("n", i.to_string());
        codec.encode(&Frame::Sent(body), &mut out).unwrap();
    }
    c.send_raw(&out).await;
    for i in 0..40 {
        let r = c.reply().await;
        if i == 20 {
            assert_eq!((r.key.as_str(), r.code.as_str()), ("other", "404"), "{r:?}");
        } else {
            assert_eq!(
                (r.code.as_str(), r.data.get("n")),
                ("200", Some(i.to_string().as_str()))
            );
        }
    }
    let runs = runs.0.lock().unwrap().clone();
    assert_eq!(runs.iter().sum::<usize>(), 39, "{runs:?}");
    assert!(
        runs.iter().any(|n| *n > 1),
        "no run of more than one: {runs:?}"
    );
    assert!(
        runs.iter().all(|n| *n <= 20),
        "a run crossed the other key: {runs:?}"
    );
}
