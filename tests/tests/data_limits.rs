//! The limit of entries in one `data` map, over real sockets: a frame at the limit is served, one
//! entry more closes that connection with a logged reason, and a bound client keeps receiving.
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
use cim_core::engine::ConnectionConfig;
use cim_core::{Frame, SentBody};
use cim_server::{Listener, Protocol, RunningServer, Server, WsSettings};
use common::process::*;
use common::*;

const LIMIT: usize = 32;
const REASON: &str = "data map exceeds the limit of 32 entries";

/// A server whose listeners take maps of up to [`LIMIT`] entries.
async fn limited_server() -> (RunningServer, Arc<Closes>) {
    init_logs();
    let closes = Arc::new(Closes::default());
    let conn = ConnectionConfig::default();
    let server = Server::builder()
        .listener(Listener::binary(loopback()).with_max_data_entries(LIMIT))
        .listener(Listener {
            addr: loopback(),
            protocol: Protocol::WebSocket(WsSettings::default()),
            connection: conn,
            max_data_entries: LIMIT,
            access: Default::default(),
        })
        .listener(Listener::xml(loopback()).with_max_data_entries(LIMIT))
        .event_listener(closes.clone())
        .start()
        .await
        .unwrap();
    (server, closes)
}

/// A request with an unknown key (answered 404) whose map has `n` entries.
fn wide(n: usize) -> Frame {
    let mut body = SentBody::new("x");
    body.data = (0..n).map(|i| (format!("k{i}"), "v")).collect();
    Frame::Sent(body)
}

#[tokio::test]
async fn tcp_map_limit_at_the_edge() {
    let (server, closes) = limited_server().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut c = bound_tcp(&server, "edge").await;
    c.send(wide(LIMIT)).await;
    assert_eq!(c.reply().await.code, "404");
    c.send(wide(LIMIT + 1)).await;
    c.expect_closed().await;
    closes.wait_for(REASON).await;
    // Before binding, too.
    let mut stranger = tcp(&server).await;
    stranger.send(wide(LIMIT + 1)).await;
    stranger.expect_closed().await;
    assert_receives(&server, &mut witness, "w", "after the wide tcp frames").await;
}

async fn send(ws: &mut Ws, json: bool, frame: Frame) {
    if json {
        ws_send_json(ws, &frame).await;
    } else {
        ws_send_binary(ws, &frame).await;
    }
}

#[tokio::test]
async fn websocket_map_limit_at_the_edge() {
    let (server, closes) = limited_server().await;
    let mut witness = bound_tcp(&server, "w").await;
    for json in [false, true] {
        let (mut ws, _) = ws_connect(&server, "/", None).await;
        send(&mut ws, json, wide(LIMIT)).await;
        assert!(
            matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "404"),
            "json: {json}"
        );
        send(&mut ws, json, wide(LIMIT + 1)).await;
        assert_eq!(ws_next(&mut ws).await, None, "json: {json}");
        assert_receives(&server, &mut witness, "w", "after a wide ws frame").await;
    }
    let closed = closes
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, r)| r.contains(REASON))
        .count();
    assert_eq!(closed, 2);
}

#[tokio::test]
async fn xml_map_limit_at_the_edge() {
    let (server, closes) = limited_server().await;
    let mut witness = bound_tcp(&server, "w").await;
    let mut c = StreamClient::connect(server.addr("xml").unwrap(), XmlCodec::new()).await;
    c.send(wide(LIMIT)).await;
    assert_eq!(c.reply().await.code, "404");
    c.send(wide(LIMIT + 1)).await;
    c.expect_closed().await;
    closes.wait_for(REASON).await;
    assert_receives(&server, &mut witness, "w", "after the wide document").await;
}

/// The attack that the limit answers: many connections sending the widest frame a 64 KB body
/// holds (4 000 short keys) before binding. Each is closed; the bound client is served between
/// every round.
#[tokio::test]
async fn wide_frames_before_bind_do_not_starve_a_bound_client() {
    let (server, closes) = limited_server().await;
    let mut witness = bound_tcp(&server, "w").await;
    let frame = {
        let mut body = SentBody::new("client_bind");
        body.data = (0..4000).map(|i| (format!("{i:x}"), "v")).collect();
        Frame::Sent(body)
    };
    let mut wire = bytes::BytesMut::new();
    cim_core::StreamCodec::encode(&mut BinaryCodec::new(), &frame, &mut wire).unwrap();
    for round in 0..5 {
        let mut attackers = Vec::new();
        for _ in 0..10 {
            let mut a = tcp(&server).await;
            a.send_raw(&wire).await;
            attackers.push(a);
        }
        for mut a in attackers {
            a.expect_closed().await;
        }
        assert_receives(&server, &mut witness, "w", &format!("round {round}")).await;
    }
    let closed = closes
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, r)| r.contains(REASON))
        .count();
    assert_eq!(closed, 50);
}

/// `connection.max_data_entries` reaches the listeners of the `cim-server` binary, and the
/// reason is in its log.
#[tokio::test]
async fn the_setting_reaches_the_server() {
    let p = ServerProcess::start(&[("CIM_CONNECTION__MAX_DATA_ENTRIES", "8")]);
    let mut witness = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    witness.bind("w", "android", "dev-w").await;
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.send(wide(8)).await;
    assert_eq!(c.reply().await.code, "404");
    c.send(wide(9)).await;
    c.expect_closed().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let line = p
            .stderr
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("no log line for the closed connection");
        if line.contains("data map exceeds the limit of 8 entries") {
            break;
        }
    }
    let body = r#"{"receiver":"w","action":"2","content":"still here"}"#;
    let r = http(p.addr("http"), "POST", "/api/v1/messages", &[JSON], body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let m = tokio::time::timeout(Duration::from_secs(10), witness.message())
        .await
        .unwrap();
    assert_eq!(m.content, "still here");
}
