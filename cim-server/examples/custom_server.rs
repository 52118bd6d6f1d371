//! A custom push server in a few dozen lines: CIM's binary protocol and WebSocket, an `echo`
//! handler of our own, a listener that logs binds, and a greeting pushed to every new session.
//!
//! ```sh
//! cargo run -p cim-server --example custom_server
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::engine::EventListener;
use cim_core::{Message, ReplyBody, RequestContext, RequestHandler, Result, SentBody, Session};
use cim_server::{Listener, Server};

/// `echo`: answers with the request's own data, plus who asked.
struct Echo;

#[async_trait]
impl RequestHandler for Echo {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let who = ctx.session.map_or("anonymous", |s| s.uid.as_str());
        let mut reply = ReplyBody::ok(&body.key).with("from", who);
        reply.data.extend(body.data);
        Ok(Some(reply))
    }
}

/// Logs binds and closes.
struct Audit;

impl EventListener for Audit {
    fn on_bound(&self, s: &Session) {
        println!("bound {} on {} ({})", s.uid, s.channel, s.device_name);
    }
    fn on_closed(&self, _: cim_core::ConnId, s: Option<&Session>, reason: &str) {
        println!("closed {:?}: {reason}", s.map(|s| &s.uid));
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder()
        .listener(Listener::binary("127.0.0.1:23456".parse()?))
        .listener(Listener::websocket("127.0.0.1:34567".parse()?))
        .handler("echo", Echo)
        .event_listener(Arc::new(Audit))
        .start()
        .await?;
    for (protocol, addr) in server.addrs() {
        println!("{protocol} listening on {addr}");
    }

    // Push something to account "10000" every ten seconds, from outside any connection.
    let hub = Arc::clone(server.hub());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let msg = Message {
                receiver: "10000".into(),
                action: "2".into(),
                sender: "system".into(),
                content: "tick".into(),
                ..Message::default()
            };
            if let Ok(sent) = hub.send(msg).await {
                println!(
                    "tick {} reached {} connection(s)",
                    sent.id, sent.delivery.delivered
                );
            }
        }
    });

    tokio::signal::ctrl_c().await?;
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
