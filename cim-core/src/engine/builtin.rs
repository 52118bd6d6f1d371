//! The handlers every server has: `client_message`, `client_set_tag`, `client_remove_tag`,
//! `client_ack` and `client_get_offline_message`, and [`defaults`], the table of them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::data::DataMap;
use crate::engine::conn::Outbound;
use crate::engine::handler::{RequestContext, RequestHandler};
use crate::engine::handover::Replay;
use crate::engine::shared::SharedMessage;
use crate::engine::store::MessageStore;
use crate::error::{Error, Result};
use crate::message::{Message, ReplyBody, SentBody};
use crate::protocol::{code, key, send};

/// The built-in handlers, by key: what every hub starts with.
pub fn defaults() -> Vec<(&'static str, Arc<dyn RequestHandler>)> {
    vec![
        (key::CLIENT_MESSAGE, Arc::new(ClientMessage)),
        (key::CLIENT_SET_TAG, Arc::new(SetTag)),
        (key::CLIENT_REMOVE_TAG, Arc::new(RemoveTag)),
        (key::CLIENT_ACK, Arc::new(ClientAck)),
        (
            key::CLIENT_GET_OFFLINE_MESSAGE,
            Arc::new(GetOfflineMessages),
        ),
    ]
}

/// `client_message`: sends a message from the bound account to `receiver`; replies with the
/// `messageId` it was given and the client's `requestId`. Every reply carries the `requestId`,
/// refusals included, so a client waiting for it learns at once.
#[derive(Debug, Default)]
pub struct ClientMessage;

/// The reply to a `client_message` that could not be sent, carrying its `requestId`.
fn refused(request_id: &Option<String>, e: Error) -> ReplyBody {
    let (status, message) = match e {
        Error::Reply { code, message } => (code, message),
        Error::Unavailable { .. } => (code::UNAVAILABLE, e.to_string()),
        other => (code::SERVER_ERROR, other.to_string()),
    };
    with_request_id(
        request_id,
        ReplyBody::new(key::CLIENT_MESSAGE, status).with_message(message),
    )
}

fn with_request_id(request_id: &Option<String>, reply: ReplyBody) -> ReplyBody {
    match request_id {
        Some(rid) => reply.with(send::REQUEST_ID, rid.clone()),
        None => reply,
    }
}

/// The message a `client_message` asks to send, with its `requestId`; or the refusal.
fn message_of(
    ctx: &RequestContext<'_>,
    body: SentBody,
) -> std::result::Result<(Option<String>, Message), ReplyBody> {
    // The fields move from the request into the message in one pass over its map (no copies,
    // no removals on the hot path); other keys are ignored.
    let mut request_id = None;
    let mut message = Message::default();
    for (k, v) in body.data {
        match k.as_str() {
            send::REQUEST_ID => request_id = Some(v),
            send::RECEIVER => message.receiver = v,
            send::ACTION => message.action = v,
            send::CONTENT => message.content = v,
            send::FORMAT => message.format = v,
            send::TITLE => message.title = v,
            send::EXTRA => message.extra = v,
            send::FILE => message.file = v,
            send::FILE_TYPE => message.file_type = v,
            _ => {}
        }
    }
    let session = match ctx.bound() {
        Ok(s) => s,
        Err(e) => return Err(refused(&request_id, e)),
    };
    if message.receiver.is_empty() {
        return Err(refused(
            &request_id,
            Error::bad_request("receiver is required"),
        ));
    }
    message.sender = session.uid.to_string();
    Ok((request_id, message))
}

fn sent_reply(request_id: &Option<String>, id: i64) -> ReplyBody {
    // Room for exactly its entries: a map grown one entry at a time takes room for four.
    let mut reply = ReplyBody::ok(key::CLIENT_MESSAGE);
    reply.data = DataMap::with_capacity(1 + usize::from(request_id.is_some()));
    with_request_id(request_id, reply.with(send::MESSAGE_ID, id.to_string()))
}

#[async_trait]
impl RequestHandler for ClientMessage {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let (request_id, message) = match message_of(ctx, body) {
            Ok(m) => m,
            Err(refusal) => return Ok(Some(refusal)),
        };
        match ctx.services.send(message).await {
            Ok(sent) => Ok(Some(sent_reply(&request_id, sent.id))),
            Err(e) => Ok(Some(refused(&request_id, e))),
        }
    }

    /// A run of sends from one connection goes to the router as one batch
    /// ([`Router::send_many`](crate::engine::Router::send_many)), in order; each is admitted on
    /// its own, and each gets its own reply (a refusal for each one refused, or that the router
    /// could not send).
    async fn handle_many(
        &self,
        ctx: &RequestContext<'_>,
        bodies: Vec<SentBody>,
    ) -> Vec<Result<Option<ReplyBody>>> {
        let mut replies: Vec<Option<ReplyBody>> = Vec::with_capacity(bodies.len());
        let mut pending = Vec::with_capacity(bodies.len());
        let mut messages = Vec::with_capacity(bodies.len());
        for body in bodies {
            match message_of(ctx, body) {
                Ok((rid, m)) => {
                    pending.push((replies.len(), rid));
                    replies.push(None);
                    messages.push(m);
                }
                Err(refusal) => replies.push(Some(refusal)),
            }
        }
        if !messages.is_empty() {
            let sent = ctx.services.send_many(messages).await;
            for ((i, rid), s) in pending.iter().zip(sent) {
                if let Some(slot) = replies.get_mut(*i) {
                    *slot = Some(match s {
                        Ok(s) => sent_reply(rid, s.id),
                        Err(e) => refused(rid, e),
                    });
                }
            }
        }
        replies.into_iter().map(Ok).collect()
    }

    /// Sends arrive by the thousand and log little (a debug line per send naming its sender
    /// and receiver; a failure is logged in the connection's span by the engine): no span is
    /// made for them.
    fn in_connection_span(&self) -> bool {
        false
    }
}

fn tag_of(body: &SentBody) -> Result<&str> {
    let tag = body.get("tag");
    if tag.is_empty() {
        return Err(Error::bad_request("tag is required"));
    }
    Ok(tag)
}

/// `client_set_tag`: adds the connection to the tag named by `tag`.
#[derive(Debug, Default)]
pub struct SetTag;

#[async_trait]
impl RequestHandler for SetTag {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        ctx.services
            .sessions()
            .set_tag(session, tag_of(&body)?)
            .await?;
        Ok(Some(ReplyBody::ok(&body.key)))
    }
}

/// `client_remove_tag`: removes the connection from the tag named by `tag`.
#[derive(Debug, Default)]
pub struct RemoveTag;

#[async_trait]
impl RequestHandler for RemoveTag {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        ctx.services
            .sessions()
            .remove_tag(session, tag_of(&body)?)
            .await?;
        Ok(Some(ReplyBody::ok(&body.key)))
    }
}

fn store_of<'a>(ctx: &'a RequestContext<'_>) -> Result<&'a Arc<dyn MessageStore>> {
    ctx.services
        .store()
        .ok_or_else(|| Error::reply(code::NOT_FOUND, "this server keeps no messages"))
}

/// `client_ack`: the bound account acknowledges message `id` and every older one; they are
/// deleted from the store. Replies with `acked`, the number deleted.
#[derive(Debug, Default)]
pub struct ClientAck;

#[async_trait]
impl RequestHandler for ClientAck {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        let id: i64 = body
            .get("id")
            .parse()
            .map_err(|_| Error::bad_request("id must be a message id"))?;
        let n = store_of(ctx)?.ack_id(&session.uid, id).await?;
        ctx.services.metrics().acknowledged.increment(n as u64);
        Ok(Some(ReplyBody::ok(&body.key).with("acked", n.to_string())))
    }
}

/// `client_get_offline_message`: queues the bound account's stored messages to this connection,
/// oldest first (up to `limit`, default 500), as a bind's replay does — fenced, so nothing
/// refused before the request is missed. For a client without receipts they are then deleted;
/// a client with receipts acknowledges them. Replies with `count`.
#[derive(Debug, Default)]
pub struct GetOfflineMessages;

#[async_trait]
impl RequestHandler for GetOfflineMessages {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        let limit: usize = match body.get("limit") {
            "" => 500,
            l => l
                .parse()
                .map_err(|_| Error::bad_request("limit must be a number"))?,
        };
        store_of(ctx)?;
        let mut queued = 0;
        if let Some(mut replay) = Replay::start(ctx.services, session).await? {
            'pages: while queued < limit {
                let Some(page) = replay.next_page(limit - queued).await? else {
                    break;
                };
                for stored in page {
                    let item = Outbound::Message(Arc::new(SharedMessage::new(stored.message)));
                    if ctx.handle.push(item).is_err() {
                        break 'pages;
                    }
                    replay.written(stored.seq);
                    queued += 1;
                }
            }
            replay.finish().await?;
            ctx.services.metrics().replayed.increment(queued as u64);
        }
        Ok(Some(
            ReplyBody::ok(&body.key).with("count", queued.to_string()),
        ))
    }
}
