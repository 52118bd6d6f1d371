//! Bad input and limits: each closes or refuses only the offender, with a logged reason, while
//! a bound client on the same server keeps receiving.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_codec_xml::XmlCodec;
use cim_core::engine::{ConnectionConfig, Timers};
use cim_core::{Frame, SentBody};
use cim_server::{Listener, Protocol, RunningServer, Server, WsSettings};
use common::*;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A server whose binary listener takes bodies up to 100 bytes, WebSocket messages up to 1000
/// and XML documents up to 200, with `conn` for every listener.
async fn small_server(
    conn: ConnectionConfig,
    max_connections: usize,
) -> (RunningServer, Arc<Closes>) {
    init_logs();
    let closes = Arc::new(Closes::default());
    let server = Server::builder()
        .listener(Listener {
            addr: loopback(),
            protocol: Protocol::Binary { max_frame: 100 },
            connection: conn,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Default::default(),
        })
        .listener(Listener {
            addr: loopback(),
            protocol: Protocol::WebSocket(WsSettings {
                max_message: 1000,
                ..WsSettings::default()
            }),
            connection: conn,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Default::default(),
        })
        .listener(Listener {
            addr: loopback(),
            protocol: Protocol::Xml {
                max_document: 200,
                flash_policy: false,
            },
            connection: conn,
            max_data_entries: cim_core::DataMap::DEFAULT_MAX_ENTRIES,
            access: Default::default(),
        })
        .event_listener(closes.clone())
        .max_connections(max_connections)
        .start()
        .await
        .unwrap();
    (server, closes)
}

async fn default_small() -> (RunningServer, Arc<Closes>) {
    small_server(ConnectionConfig::default(), 1000).await
}

/// A request with an unknown key whose binary body is exactly `n` bytes (n in 10..=137).
fn body_of(n: usize) -> Frame {
    let frame = Frame::Sent(SentBody::new("x").with("p", "v".repeat(n - 10)));
    let mut out = bytes::BytesMut::new();
    cim_core::StreamCodec::encode(&mut BinaryCodec::new(), &frame, &mut out).unwrap();
    assert_eq!(out.len(), 3 + n);
    frame
}

#[tokio::test]
async fn garbage_bytes_close_only_the_offender() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut bad = tcp(&server).await;
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    bad.expect_closed().await;
    closes.wait_for("unknown frame type 71").await;
    assert_receives(&server, &mut witness, "w", "after garbage").await;
}

#[tokio::test]
async fn unknown_type_byte() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut bad = bound_tcp(&server, "bad").await;
    bad.send_raw(&[9, 0, 0]).await;
    bad.expect_closed().await;
    closes.wait_for("unknown frame type 9").await;
    assert!(
        server
            .hub()
            .sessions()
            .sessions("bad")
            .await
            .unwrap()
            .is_empty()
    );
    assert_receives(&server, &mut witness, "w", "after type 9").await;
}

#[tokio::test]
async fn frame_size_limit_at_the_edge() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut c = bound_tcp(&server, "edge").await;
    // Exactly the limit: accepted (and answered 404, the key being unknown).
    c.send(body_of(100)).await;
    assert_eq!(c.reply().await.code, "404");
    // One byte over: the header alone closes the connection.
    c.send_raw(&[3, 101, 0]).await;
    c.expect_closed().await;
    closes
        .wait_for("frame of 101 bytes exceeds the limit of 100")
        .await;
    // An oversized length from a stranger, too.
    let mut big = tcp(&server).await;
    big.send_raw(&[3, 0xff, 0xff]).await;
    big.expect_closed().await;
    closes.wait_for("frame of 65535 bytes").await;
    assert_receives(&server, &mut witness, "w", "after oversize").await;
}

#[tokio::test]
async fn undecodable_body_and_server_only_frame_types() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut bad = tcp(&server).await;
    // A SENT frame whose body claims a 10-byte string but has 1 byte.
    bad.send_raw(&[3, 3, 0, 0x0a, 10, b'x']).await;
    bad.expect_closed().await;
    closes.wait_for("malformed request body").await;
    let mut bad = tcp(&server).await;
    bad.send(Frame::Message(message_to("w", "forged"))).await;
    bad.expect_closed().await;
    closes.wait_for("may not send Message").await;
    // The forged message went nowhere; the witness's next message is the real one.
    assert_receives(&server, &mut witness, "w", "after bad bodies").await;
}

#[tokio::test]
async fn frame_cut_off_by_a_close() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut bad = tcp(&server).await;
    bad.send_raw(&[3, 10, 0, 1, 2, 3]).await;
    bad.stream.shutdown().await.unwrap();
    closes
        .wait_for("stream ended inside a frame (6 bytes pending)")
        .await;
    assert_receives(&server, &mut witness, "w", "after the cut").await;
}

#[tokio::test]
async fn half_a_header_then_silence() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(150),
            read_idle: Duration::from_millis(400),
            max_pong_timeout: 2,
            bind_timeout: Duration::from_millis(100),
        },
        ..ConnectionConfig::default()
    };
    let (server, closes) = small_server(conn, 1000).await;
    // The witness answers PINGs; it must outlive both offenders.
    let mut witness = bound_tcp(&server, "w").await;
    let answer = tokio::spawn(async move {
        loop {
            match witness.next().await {
                Some(Frame::Ping) => witness.send(Frame::Pong).await,
                Some(Frame::Message(m)) if m.content == "stop" => return witness,
                Some(other) => panic!("{other:?}"),
                None => panic!("the witness was closed"),
            }
        }
    });
    // Unbound, half a header: the bind timeout closes it.
    let mut a = tcp(&server).await;
    a.send_raw(&[3]).await;
    // Bound, then half a header and silence: partial bytes are no PONG.
    let mut b = bound_tcp(&server, "stall").await;
    b.send_raw(&[3, 5]).await;
    a.expect_closed().await;
    b.expect_closed().await;
    closes.wait_for("no bind within the bind timeout").await;
    closes.wait_for("no answer to 2 heartbeats").await;
    server.hub().send(message_to("w", "stop")).await.unwrap();
    let _witness = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
}

#[tokio::test]
async fn unbound_connections_close_when_idle() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(200),
            bind_timeout: Duration::from_secs(60),
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    };
    let (server, closes) = small_server(conn, 1000).await;
    let mut c = tcp(&server).await;
    c.expect_closed().await;
    closes.wait_for("idle and never bound").await;
}

#[tokio::test]
async fn connection_limit_at_the_edge() {
    let (server, closes) = small_server(ConnectionConfig::default(), 2).await;
    let mut one = bound_tcp(&server, "one").await;
    let two = bound_tcp(&server, "two").await;
    assert_eq!(server.connections(), 2);
    // The third is closed on arrival.
    let mut three = tcp(&server).await;
    assert!(three.expect_closed().await.is_empty());
    assert_receives(&server, &mut one, "one", "still served").await;
    // When one leaves, a new connection is served again.
    drop(two);
    closes.wait_for("closed by peer").await;
    let mut four = bound_tcp(&server, "four").await;
    assert_receives(&server, &mut four, "four", "room again").await;
}

#[tokio::test]
async fn websocket_message_size_limit_at_the_edge() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    // 1000 bytes: `[3]` + a SentBody of 999 bytes (key of 996 bytes: tag, 2-byte length).
    let frame = Frame::Sent(SentBody::new("k".repeat(996)));
    let payload = cim_codec_binary::WsBinaryCodec.encode_payload(&frame);
    assert_eq!(payload.len(), 1000);
    ws.send(WsMessage::Binary(payload)).await.unwrap();
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "404"));
    let frame = Frame::Sent(SentBody::new("k".repeat(997)));
    ws.send(WsMessage::Binary(
        cim_codec_binary::WsBinaryCodec.encode_payload(&frame),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await, None);
    closes.wait_for("Message too long").await;
    assert_receives(&server, &mut witness, "w", "after the big ws message").await;
}

#[tokio::test]
async fn xml_document_size_limit() {
    let (server, closes) = default_small().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut bad = StreamClient::connect(server.addr("xml").unwrap(), XmlCodec::new()).await;
    bad.send_raw(&[b'<'; 201]).await;
    bad.expect_closed().await;
    closes
        .wait_for("frame of 201 bytes exceeds the limit of 200")
        .await;
    assert_receives(&server, &mut witness, "w", "after the long document").await;
}

#[tokio::test]
async fn a_slow_reader_never_stalls_anyone_else() {
    let conn = ConnectionConfig {
        queue_capacity: 8,
        write_timeout: Duration::from_secs(2),
        ..ConnectionConfig::default()
    };
    let (server, closes) = small_server(conn, 1000).await;
    let mut witness = bound_tcp(&server, "w").await;
    // A client that binds and then never reads: the kernel's buffers absorb pushes until they
    // fill, then its queue does.
    let mut slow = StreamClient::connect(server.addr("tcp").unwrap(), BinaryCodec::new()).await;
    slow.bind("slow", "android", "s").await;
    let mut failed_at = None;
    for i in 0..2_000_000u32 {
        let sent = server
            .hub()
            .send(message_to(
                "slow",
                "0123456789012345678901234567890123456789",
            ))
            .await
            .unwrap();
        if sent.delivered == 0 {
            failed_at = Some(i);
            break;
        }
        if i % 1000 == 0 {
            // Meanwhile, the witness is served.
            assert_receives(&server, &mut witness, "w", &format!("tick {i}")).await;
        }
    }
    assert!(failed_at.is_some(), "the slow reader's queue never filled");
    closes.wait_for("slow").await;
    assert!(
        server
            .hub()
            .sessions()
            .sessions("slow")
            .await
            .unwrap()
            .is_empty()
    );
    assert_receives(&server, &mut witness, "w", "after the slow reader").await;
    drop(slow);
}

#[tokio::test]
async fn a_write_that_stalls_for_the_write_timeout_ends_the_connection() {
    // A queue that never fills first: only the write timeout can end this connection.
    let conn = ConnectionConfig {
        queue_capacity: 1_000_000,
        write_timeout: Duration::from_millis(300),
        ..ConnectionConfig::default()
    };
    let (server, closes) = small_server(conn, 1000).await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut stalled = StreamClient::connect(server.addr("tcp").unwrap(), BinaryCodec::new()).await;
    stalled.bind("stalled", "android", "s").await;
    // Pushes until the kernel's buffers are full and a write waits, then a while more.
    let started = tokio::time::Instant::now();
    let mut i = 0u32;
    let reason = loop {
        if let Some(r) = closes
            .0
            .lock()
            .unwrap()
            .iter()
            .find_map(|(_, _, r)| r.contains("write stalled").then(|| r.clone()))
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled writer was never closed"
        );
        for _ in 0..200 {
            let _ = server
                .hub()
                .send(message_to(
                    "stalled",
                    "0123456789012345678901234567890123456789",
                ))
                .await;
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(reason.contains("300ms"), "{reason}");
    assert!(i > 0);
    assert_receives(&server, &mut witness, "w", "after the stalled writer").await;
    drop(stalled);
}
