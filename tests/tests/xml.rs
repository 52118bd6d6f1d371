//! The MINA-era XML protocol over TCP (CIM 2.x's own clients: tests/tests/xml_2x.rs).
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
use cim_server::WsSettings;
use common::*;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn legacy_client_binds_answers_heartbeats_and_receives() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(300),
            read_idle: Duration::from_secs(30),
            ..Timers::default()
        },
        ..ConnectionConfig::default()
    };
    let (server, _) = start_with(conn, WsSettings::default(), |b| b).await;
    let mut c = xml(&server).await;
    // A MINA-era bind: legacy `account` and `device` keys, `\b` terminator.
    c.send_raw(
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_bind</key><timestamp>1487900000000</timestamp>\
          <data><account>x1</account><channel>android</channel><device>Old Phone</device></data></sent>\x08",
    )
    .await;
    let r = c.reply().await;
    assert_eq!((r.key.as_str(), r.code.as_str()), ("client_bind", "200"));
    let s = &server.hub().sessions().sessions("x1").await.unwrap()[0];
    assert_eq!(s.device_name, "Old Phone");

    // The heartbeat is the bare string S_H_RQ; the client answers C_H_RS.
    let mut hb = [0u8; 7];
    c.stream.read_exact(&mut hb).await.unwrap();
    assert_eq!(&hb, b"S_H_RQ\x08");
    c.send_raw(b"C_H_RS\x08").await;

    server
        .hub()
        .send(message_to("x1", "<b>bold</b> & ]]> done"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    while !raw.ends_with(b"\x08") {
        let mut b = [0u8; 1];
        c.stream.read_exact(&mut b).await.unwrap();
        raw.push(b[0]);
    }
    let text = String::from_utf8(raw).unwrap();
    assert!(
        text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><message><mid>"),
        "{text}"
    );
    assert!(
        text.contains("<content><![CDATA[<b>bold</b> & ]]]]><![CDATA[> done]]></content>"),
        "{text}"
    );
}

#[tokio::test]
async fn xml_requests_and_404() {
    let (server, _) = start().await;
    let mut c = xml(&server).await;
    c.bind("x2", "android", "d").await;
    c.send(Frame::Sent(cim_core::SentBody::new("nothing_here")))
        .await;
    assert_eq!(c.reply().await.code, "404");
    let mut t = tcp(&server).await;
    t.bind("x3", "android", "d").await;
    c.send(Frame::Sent(
        cim_core::SentBody::new("client_message")
            .with("receiver", "x3")
            .with("content", "from xml"),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
    assert_eq!(t.message().await.content, "from xml");
}
