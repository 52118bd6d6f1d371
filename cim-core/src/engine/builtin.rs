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
    async fn handle(&self, ctx: &RequestContext<'_>, body: SentBody) -> Result<Option<ReplyBody>> {
        let session = ctx.bound()?;
        let receiver = body.get(send::RECEIVER);
        if receiver.is_empty() {
            return Err(Error::bad_request("receiver is required"));
        }
        let message = Message {
            action: body.get(send::ACTION).to_owned(),
            content: body.get(send::CONTENT).to_owned(),
            format: body.get(send::FORMAT).to_owned(),
            title: body.get(send::TITLE).to_owned(),
            extra: body.get(send::EXTRA).to_owned(),
            sender: session.uid.clone(),
            receiver: receiver.to_owned(),
            ..Message::default()
        };
        let sent = ctx.hub.send(message).await?;
        let mut reply = ReplyBody::ok(&body.key).with(send::MESSAGE_ID, sent.id.to_string());
        if let Some(rid) = body.data.get(send::REQUEST_ID) {
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
