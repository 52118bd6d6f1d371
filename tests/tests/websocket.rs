//! WebSocket in protobuf and JSON modes: handshake rules, bind, heartbeat, push.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::time::Duration;

use cim_core::Frame;
use cim_core::engine::{ConnectionConfig, Timers};
use cim_server::{WsMode, WsSettings};
use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};

fn short_write_idle() -> ConnectionConfig {
    ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(300),
            read_idle: Duration::from_secs(30),
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    }
}

#[tokio::test]
async fn protobuf_mode_bind_ping_and_push() {
    let (server, _) = start_with(short_write_idle(), WsSettings::default(), |b| b).await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("wp", "web", "tab"))).await;
    let Some(Frame::Reply(r)) = ws_next(&mut ws).await else {
        panic!()
    };
    assert_eq!((r.key.as_str(), r.code.as_str()), ("client_bind", "200"));

    // The application PING is a binary message "\x01PING".
    let raw = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        raw,
        WsMessage::Binary(bytes::Bytes::from_static(b"\x01PING"))
    );
    ws.send(WsMessage::Binary(bytes::Bytes::from_static(b"\x00PONG")))
        .await
        .unwrap();

    let sent = server
        .hub()
        .send(message_to("wp", "over protobuf"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    let m = loop {
        match ws_next(&mut ws).await {
            Some(Frame::Ping) => continue,
            Some(Frame::Message(m)) => break m,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((m.content.as_str(), m.id), ("over protobuf", sent.id));
}

#[tokio::test]
async fn json_mode_bind_ping_and_push() {
    let (server, _) = start_with(short_write_idle(), WsSettings::default(), |b| b).await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    // Exactly what the stock web SDK sends.
    ws.send(WsMessage::Text(
        r#"{"type":3,"content":"{\"key\":\"client_bind\",\"timestamp\":1700000000000,\"data\":{\"uid\":\"wj\",\"channel\":\"web\"}}"}"#.into(),
    ))
    .await
    .unwrap();
    let raw = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WsMessage::Text(text) = raw else {
        panic!("{raw:?}")
    };
    let env: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(env["type"], 4);
    let reply: serde_json::Value = serde_json::from_str(env["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        (reply["key"].as_str(), reply["code"].as_str()),
        (Some("client_bind"), Some("200"))
    );

    // PING is {"type":1}; the SDK answers {"type":0,"content":"PONG"}.
    let raw = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(raw, WsMessage::Text(r#"{"type":1}"#.into()));
    ws.send(WsMessage::Text(r#"{"type":0,"content":"PONG"}"#.into()))
        .await
        .unwrap();

    server
        .hub()
        .send(message_to("wj", "over json"))
        .await
        .unwrap();
    let m = loop {
        match ws_next(&mut ws).await {
            Some(Frame::Ping) => continue,
            Some(Frame::Message(m)) => break m,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(m.content, "over json");
}

#[tokio::test]
async fn fixed_json_mode_and_fan_out_to_mixed_codecs() {
    let ws_settings = WsSettings {
        mode: WsMode::Json,
        ..WsSettings::default()
    };
    let (server, _) = start_with(ConnectionConfig::default(), ws_settings, |b| b).await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_json(&mut ws, &Frame::Sent(bind_body("mix", "web", "b"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.is_ok()));
    let mut phone = tcp(&server).await;
    phone.bind("mix", "android", "p").await;
    let mut old = xml(&server).await;
    old.bind("mix", "app", "x").await;
    let sent = server
        .hub()
        .send(message_to("mix", "to three codecs"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 3);
    assert!(
        matches!(ws_next(&mut ws).await, Some(Frame::Message(m)) if m.content == "to three codecs")
    );
    assert_eq!(phone.message().await.content, "to three codecs");
    assert_eq!(old.message().await.content, "to three codecs");
}

#[tokio::test]
async fn any_path_under_the_prefix_and_offered_subprotocols() {
    let ws_settings = WsSettings {
        path: "/im".into(),
        ..WsSettings::default()
    };
    let (server, _) = start_with(ConnectionConfig::default(), ws_settings, |b| b).await;
    let (mut ws, chosen) =
        ws_connect(&server, "/im/app?token=abc&x=1", Some("chat, superchat")).await;
    assert_eq!(chosen.as_deref(), Some("chat"));
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("wpath", "web", "t"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.is_ok()));

    // Outside the prefix: refused.
    let addr = server.addr("websocket").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[tokio::test]
async fn a_plain_http_request_gets_403() {
    let (server, _) = start().await;
    let addr = server.addr("websocket").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
}

#[tokio::test]
async fn websocket_control_frames_are_answered_and_are_not_heartbeats() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(200),
            read_idle: Duration::from_millis(500),
            max_pong_timeout: 2,
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    };
    let (server, closes) = start_with(conn, WsSettings::default(), |b| b).await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("wctl", "web", "t"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.is_ok()));
    // Keep sending WebSocket pings (answered by pongs) but never a CIM PONG: still dropped.
    let mut got_pong = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        if ws
            .send(WsMessage::Ping(bytes::Bytes::from_static(b"hi")))
            .await
            .is_err()
        {
            break;
        }
        match tokio::time::timeout(
            Duration::from_millis(100),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        {
            Ok(Some(Ok(WsMessage::Pong(_)))) => got_pong = true,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => break,
            _ => {}
        }
    }
    assert!(got_pong, "the WebSocket layer did not answer pings");
    closes.wait_for("no answer to 2 heartbeats").await;
}

/// The close frame a WebSocket client gets, or `None` if the connection ended without one.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        loop {
            match futures_util::StreamExt::next(ws).await {
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the server did not close the connection")
}

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009() {
    let ws_settings = WsSettings {
        max_message: 1024,
        ..WsSettings::default()
    };
    let (server, _) = start_with(ConnectionConfig::default(), ws_settings, |b| b).await;
    let mut witness = bound_tcp(&server, "witness").await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws.send(WsMessage::Binary(vec![3u8; 4096].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    assert_receives(&server, &mut witness, "witness", "still served").await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let (server, _) = start().await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("going", "web", "tab"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
    let stopping = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    assert_eq!(close_code(&mut ws).await, Some(1001));
    assert!(stopping.await.unwrap());
}

#[tokio::test]
async fn a_refused_bind_is_closed_with_1008() {
    struct NoOne;
    #[async_trait::async_trait]
    impl cim_core::engine::BindAuthenticator for NoOne {
        async fn authenticate(
            &self,
            _: &cim_core::SentBody,
            _: &cim_core::Session,
        ) -> Result<(), cim_core::engine::AuthError> {
            Err(cim_core::engine::AuthError("nobody binds here".into()))
        }
    }
    let (server, _) = start_with(ConnectionConfig::default(), WsSettings::default(), |b| {
        b.authenticator(std::sync::Arc::new(NoOne))
    })
    .await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("nobody", "web", "tab"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "401"));
    assert_eq!(close_code(&mut ws).await, Some(1008));
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_own_status() {
    let (server, closes) = start().await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("leaving", "web", "tab"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
    ws.send(WsMessage::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    // The close handshake completes: the server answers with a close frame echoing the status
    // before it ends the connection.
    assert_eq!(close_code(&mut ws).await, Some(4000));
    closes.wait_for("closed by peer").await;
}

#[tokio::test]
async fn text_that_is_not_utf8_is_closed_with_1007() {
    let (server, closes) = start().await;
    let mut witness = bound_tcp(&server, "witness").await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    // "κόσμε" followed by a lone surrogate's encoding, which UTF-8 forbids.
    let mut text = "κόσμε".as_bytes().to_vec();
    text.extend_from_slice(&[0xed, 0xa0, 0x80]);
    let frame = WsFrame::message(text, OpCode::Data(OpData::Text), true);
    ws.send(WsMessage::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1007));
    closes.wait_for("protocol error").await;
    assert_receives(&server, &mut witness, "witness", "still served").await;
}
