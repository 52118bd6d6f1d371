//! What a connection's log lines carry: a handler runs inside the connection's span
//! (`conn{id uid}`) unless it says otherwise, and a handler's failure names the connection
//! either way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

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
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    // The test's runtime runs on this thread alone, so the server's tasks log here.
    let _logs = tracing::subscriber::set_default(subscriber);
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
