//! What a connection's log lines carry: a handler runs inside the connection's span
//! (`conn{id uid}`) unless it says otherwise, and a handler's failure names the connection
//! either way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cim_core::engine::ConnectionConfig;
use cim_core::{Error, ReplyBody, RequestContext, RequestHandler, Result, SentBody};
use cim_server::WsSettings;
use common::*;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn line_with(&self, needle: &str) -> Option<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().find(|l| l.contains(needle)).map(str::to_owned)
    }

    /// The first line with `needle`, waiting for it (bounded).
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..500 {
            if let Some(line) = self.line_with(needle) {
                return line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no line with {needle:?}");
    }

    /// A subscriber writing here, at `level` and above.
    fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let c = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(level)
            .with_writer(move || c.clone())
            .finish()
    }
}

/// Logs a line, then fails when asked to; `in_span` is what it answers the engine.
struct Talker {
    in_span: bool,
}

#[async_trait]
impl RequestHandler for Talker {
    async fn handle(&self, _: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        tracing::info!(key = %body.key, "talker says hello");
        if body.get("fail") == "yes" {
            return Err(Error::unavailable("the talker", "asked to fail"));
        }
        Ok(Some(ReplyBody::ok(&body.key)))
    }

    fn in_connection_span(&self) -> bool {
        self.in_span
    }
}

#[tokio::test]
async fn handlers_log_in_the_connections_span_unless_they_say_no() {
    let captured = Captured::default();
    // The test's runtime runs on this thread alone, so the server's tasks log here.
    let _logs = tracing::subscriber::set_default(captured.subscriber(tracing::Level::INFO));
    let (server, _) = start_with(ConnectionConfig::default(), WsSettings::default(), |b| {
        b.handler("in_span", Arc::new(Talker { in_span: true }))
            .handler("no_span", Arc::new(Talker { in_span: false }))
    })
    .await;
    let mut c = bound_tcp(&server, "u-logged").await;
    for key in ["in_span", "no_span"] {
        c.send(cim_core::Frame::Sent(SentBody::new(key))).await;
        assert_eq!(c.reply().await.code, "200");
        c.send(cim_core::Frame::Sent(
            SentBody::new(key).with("fail", "yes"),
        ))
        .await;
        assert_eq!(c.reply().await.code, "500");
    }
    let hello = captured
        .line_with("key=in_span")
        .expect("no line from in_span");
    assert!(
        hello.contains("conn{id=") && hello.contains("uid=\"u-logged\"}"),
        "{hello}"
    );
    let quiet = captured
        .line_with("key=no_span")
        .expect("no line from no_span");
    assert!(!quiet.contains("conn{"), "{quiet}");
    // A failure is logged in the span whichever the handler chose.
    for key in ["in_span", "no_span"] {
        let failed = captured
            .line_with(&format!("handler failed key={key}"))
            .unwrap_or_else(|| panic!("no failure line for {key}"));
        assert!(failed.contains("uid=\"u-logged\"}"), "{failed}");
        assert_eq!(failed.matches("uid=").count(), 1, "{failed}");
    }
    // The bind ran in it too, and the built-in client_message (which says no) still answers.
    c.send(cim_core::Frame::Sent(
        SentBody::new("client_message")
            .with("receiver", "u-logged")
            .with("content", "to myself"),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
}

/// Answers with a reply too large for the binary codec's frame limit.
struct Huge;

#[async_trait]
impl RequestHandler for Huge {
    async fn handle(&self, _: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        Ok(Some(
            ReplyBody::ok(&body.key).with("big", "x".repeat(70_000)),
        ))
    }
}

/// What the transport logs about a reply it cannot write names the connection (the reply's
/// write is in the span of the handler that asked for it), and a `client_message` send, which
/// runs without the span, names its sender and receiver in its debug line.
#[tokio::test]
async fn a_reply_the_transport_refuses_and_a_send_are_logged_with_whose_they_are() {
    let captured = Captured::default();
    let _logs = tracing::subscriber::set_default(captured.subscriber(tracing::Level::DEBUG));
    let (server, _) = start_with(ConnectionConfig::default(), WsSettings::default(), |b| {
        b.handler("huge", Arc::new(Huge))
    })
    .await;
    let mut c = bound_tcp(&server, "u-huge").await;
    c.send(cim_core::Frame::Sent(SentBody::new("huge"))).await;
    let line = captured.wait_for("cannot encode").await;
    assert!(
        line.contains("conn{id=") && line.contains("uid=\"u-huge\"}"),
        "{line}"
    );
    c.send(cim_core::Frame::Sent(
        SentBody::new("client_message")
            .with("receiver", "u-huge")
            .with("content", "to myself"),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
    let sent = captured.wait_for(" sent ").await;
    assert!(
        sent.contains("sender=u-huge") && sent.contains("receiver=u-huge"),
        "{sent}"
    );
}
