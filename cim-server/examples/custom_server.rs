//! A custom push server in a few dozen lines, composed through the builder: CIM's binary
//! protocol and WebSocket, an `echo` handler of our own, a message store of our own (an audited
//! wrapper around the in-memory one), a kick policy of our own (one device per account, whatever
//! the channel), and an event listener that greets every session as it binds and logs closes.
//!
//! ```sh
//! cargo run -p cim-server --example custom_server
//! # then bind account 10000 with any CIM client, e.g. `cargo run -p cim-cli -- listen --uid 10000`
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::engine::{
    Appended, EventContext, EventListener, KickDecision, KickPolicy, MemoryStore, MessageStore,
    Seq, Stored,
};
use cim_core::{
    ConnId, Message, ReplyBody, RequestContext, RequestHandler, Result, SentBody, Session,
};
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

/// One device per account: a bind from another device kicks every other connection of the
/// account (the same device reconnecting closes its old connection silently).
struct OneDevice;

impl KickPolicy for OneDevice {
    fn decide(&self, existing: &Session, incoming: &Session) -> KickDecision {
        if existing.device_id == incoming.device_id {
            KickDecision::CloseSilently
        } else {
            KickDecision::Kick
        }
    }
}

/// Greets every session as it binds (the greeting goes through the router like any send, so it
/// is stored if the client is gone already) and logs closes.
struct Greeter;

impl EventListener for Greeter {
    fn on_bound(&self, ctx: &EventContext<'_>, s: &Session) {
        println!("bound {} on {} ({})", s.uid, s.channel, s.device_name);
        ctx.send(Message {
            receiver: s.uid.to_string(),
            sender: "system".into(),
            action: "2".into(),
            content: format!("welcome, {}", s.uid),
            ..Message::default()
        });
    }
    fn on_closed(&self, _: &EventContext<'_>, _: ConnId, s: Option<&Session>, reason: &str) {
        println!("closed {:?}: {reason}", s.map(|s| &s.uid));
    }
}

/// A store of our own: the in-memory store, with every write printed.
struct Audited(MemoryStore);

#[async_trait]
impl MessageStore for Audited {
    async fn append(&self, uid: &str, msg: &Message) -> Result<Appended> {
        let appended = self.0.append(uid, msg).await?;
        println!("stored message {} for {uid} as #{}", msg.id, appended.seq);
        Ok(appended)
    }
    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> Result<Vec<Stored>> {
        self.0.pending(uid, after, limit).await
    }
    async fn ack(&self, uid: &str, upto: Seq) -> Result<usize> {
        let n = self.0.ack(uid, upto).await?;
        println!("delivered {n} stored message(s) of {uid}");
        Ok(n)
    }
    async fn last_seq(&self, uid: &str) -> Result<Seq> {
        self.0.last_seq(uid).await
    }
    async fn count(&self, uid: &str) -> Result<usize> {
        self.0.count(uid).await
    }
    async fn clear(&self, uid: &str) -> Result<usize> {
        self.0.clear(uid).await
    }
    async fn expire(&self, older_than_ms: i64) -> Result<usize> {
        self.0.expire(older_than_ms).await
    }
    async fn flush(&self) -> Result<()> {
        self.0.flush().await
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder()
        .listener(Listener::binary("127.0.0.1:23456".parse()?))
        .listener(Listener::websocket("127.0.0.1:34567".parse()?))
        .handler("echo", Echo)
        .store(Arc::new(Audited(MemoryStore::new(1000))))
        .kick_policy(Arc::new(OneDevice))
        .event_listener(Arc::new(Greeter))
        .start()
        .await?;
    for (protocol, addr) in server.addrs() {
        println!("{protocol} listening on {addr}");
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
