//! The handlers every server has: `client_message`, `client_set_tag`, `client_remove_tag`.

use async_trait::async_trait;

use crate::engine::handler::{RequestContext, RequestHandler};
use crate::error::{Error, Result};
use crate::message::{Message, ReplyBody, SentBody};
use crate::protocol::send;

/// `client_message`: sends a message from the bound account to `receiver`; replies with the
/// `messageId` it was given and the client's `requestId`.
#[derive(Debug, Default)]
pub struct ClientMessage;

#[async_trait]
impl RequestHandler for ClientMessage {
    async fn handle(
        &self,
        ctx: &RequestContext<'_>,
        mut body: SentBody,
    ) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        // The fields move from the request into the message (no copies on the hot path).
        let mut take = |k: &str| body.data.remove(k).unwrap_or_default();
        let receiver = take(send::RECEIVER);
        if receiver.is_empty() {
            return Err(Error::bad_request("receiver is required"));
        }
        let message = Message {
            action: take(send::ACTION),
            content: take(send::CONTENT),
            format: take(send::FORMAT),
            title: take(send::TITLE),
            extra: take(send::EXTRA),
            file: take(send::FILE),
            file_type: take(send::FILE_TYPE),
            sender: session.uid.clone(),
            receiver,
            ..Message::default()
        };
        let request_id = body.data.remove(send::REQUEST_ID);
        let sent = ctx.hub.send(message).await?;
        let mut reply = ReplyBody::ok(body.key).with(send::MESSAGE_ID, sent.id.to_string());
        if let Some(rid) = request_id {
            reply.data.insert(send::REQUEST_ID, rid);
        }
        Ok(Some(reply))
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
        ctx.hub.sessions().set_tag(session, tag_of(&body)?).await?;
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
        ctx.hub
            .sessions()
            .remove_tag(session, tag_of(&body)?)
            .await?;
        Ok(Some(ReplyBody::ok(&body.key)))
    }
}

fn store_of<'a>(
    ctx: &'a RequestContext<'_>,
) -> Result<&'a std::sync::Arc<dyn crate::engine::MessageStore>> {
    ctx.hub.store().ok_or_else(|| {
        Error::reply(
            crate::protocol::code::NOT_FOUND,
            "this server keeps no messages",
        )
    })
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
        Ok(Some(ReplyBody::ok(&body.key).with("acked", n.to_string())))
    }
}

/// `client_get_offline_message`: queues the bound account's stored messages to this connection,
/// oldest first (up to `limit`, default 500). For a client without receipts they are then
/// deleted; a client with receipts acknowledges them. Replies with `count`.
#[derive(Debug, Default)]
pub struct GetOfflineMessages;

#[async_trait]
impl RequestHandler for GetOfflineMessages {
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        let limit = match body.get("limit") {
            "" => 500,
            l => l
                .parse()
                .map_err(|_| Error::bad_request("limit must be a number"))?,
        };
        let store = store_of(ctx)?;
        let pending = store.pending(&session.uid, 0, limit).await?;
        let mut queued = 0;
        let mut last = None;
        for p in pending {
            let seq = p.seq;
            let item = crate::engine::Outbound::Message(std::sync::Arc::new(
                crate::engine::SharedMessage::new(p.message),
            ));
            if ctx.handle.push(item).is_err() {
                break;
            }
            queued += 1;
            last = Some(seq);
        }
        if !session.client_ack
            && let Some(last) = last
        {
            store.ack(&session.uid, last).await?;
        }
        Ok(Some(
            ReplyBody::ok(&body.key).with("count", queued.to_string()),
        ))
    }
}
