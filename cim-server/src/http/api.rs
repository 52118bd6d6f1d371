//! The JSON API under `/api/v1`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use cim_core::engine::{Page, Sent};
use cim_core::{Message, Session};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::HttpState;
use super::error::{ApiError, ApiJson, ApiQuery};

/// A message to send, as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// Receiving account (required when sending to an account).
    #[serde(default)]
    pub receiver: String,
    /// Sending account; `system` when absent.
    #[serde(default)]
    pub sender: Option<String>,
    /// Message action.
    #[serde(default)]
    pub action: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Content.
    #[serde(default)]
    pub content: String,
    /// Format.
    #[serde(default)]
    pub format: String,
    /// Extra.
    #[serde(default)]
    pub extra: String,
    /// Attachment, usually a URL (CIM 2.x's `file`).
    #[serde(default)]
    pub file: String,
    /// The attachment's type, such as `image` or `voice`.
    #[serde(default, rename = "fileType")]
    pub file_type: String,
}

impl MessageIn {
    fn into_message(self) -> Message {
        Message {
            receiver: self.receiver,
            sender: self.sender.unwrap_or_else(|| "system".into()),
            action: self.action,
            title: self.title,
            content: self.content,
            format: self.format,
            extra: self.extra,
            file: self.file,
            file_type: self.file_type,
            ..Message::default()
        }
    }
}

/// The result of one send. Ids are strings (at most 2^53 − 1, so exact as JavaScript numbers too).
#[derive(Debug, Serialize)]
pub struct SentOut {
    /// The message id.
    pub id: String,
    /// Live connections it was queued to.
    pub delivered: usize,
    /// Whether it was stored for later delivery.
    pub stored: bool,
}

impl From<Sent> for SentOut {
    fn from(s: Sent) -> Self {
        Self {
            id: s.id.to_string(),
            delivered: s.delivered,
            stored: s.stored,
        }
    }
}

/// Applies the account-id rule to `uid`, the value of `field`.
fn check_account(field: &str, uid: &str, max_bytes: usize) -> Result<(), ApiError> {
    cim_core::check_uid(uid, max_bytes).map_err(|e| ApiError::bad_request(format!("{field} {e}")))
}

/// Checks a message's accounts: `receiver` (required when `needs_receiver`, else checked when
/// given) and `sender` when given. `at` prefixes the field names (`messages[3].`).
fn check_message(
    m: &MessageIn,
    needs_receiver: bool,
    at: &str,
    max_bytes: usize,
) -> Result<(), ApiError> {
    if m.receiver.is_empty() {
        if needs_receiver {
            return Err(ApiError::bad_request(format!("{at}receiver is required")));
        }
    } else {
        check_account(&format!("{at}receiver"), &m.receiver, max_bytes)?;
    }
    if let Some(sender) = &m.sender {
        check_account(&format!("{at}sender"), sender, max_bytes)?;
    }
    Ok(())
}

/// `POST /api/v1/messages`: one message to one account.
pub async fn send(
    State(st): State<Arc<HttpState>>,
    ApiJson(m): ApiJson<MessageIn>,
) -> Result<Json<SentOut>, ApiError> {
    check_message(&m, true, "", st.max_uid_bytes)?;
    Ok(Json(st.hub.send(m.into_message()).await?.into()))
}

/// A batch of messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// The messages, each to its own receiver.
    pub messages: Vec<MessageIn>,
}

/// `POST /api/v1/messages/batch`: many messages, sent in order.
pub async fn send_batch(
    State(st): State<Arc<HttpState>>,
    ApiJson(batch): ApiJson<BatchIn>,
) -> Result<Json<Value>, ApiError> {
    if batch.messages.is_empty() {
        return Err(ApiError::bad_request("messages is empty"));
    }
    if batch.messages.len() > st.max_batch {
        return Err(ApiError::bad_request(format!(
            "{} messages exceed the batch limit of {}",
            batch.messages.len(),
            st.max_batch
        )));
    }
    for (i, m) in batch.messages.iter().enumerate() {
        check_message(m, true, &format!("messages[{i}]."), st.max_uid_bytes)?;
    }
    let messages: Vec<Message> = batch
        .messages
        .into_iter()
        .map(MessageIn::into_message)
        .collect();
    // A message no listener can carry refuses the whole batch before any is sent, as a
    // malformed one does.
    for (i, m) in messages.iter().enumerate() {
        st.hub.services().admit(m).map_err(|e| {
            let e = ApiError::from(e);
            ApiError::new(e.status, format!("messages[{i}]: {}", e.reason))
        })?;
    }
    // The first failure answers the request, naming the message and saying that those before
    // it were sent (so that a client sends again only the rest).
    let mut results = Vec::with_capacity(messages.len());
    for (i, r) in st.hub.send_many(messages).await.into_iter().enumerate() {
        match r {
            Ok(sent) => results.push(SentOut::from(sent)),
            Err(e) => {
                let e = ApiError::from(e);
                let before = match i {
                    0 => "none was sent".to_owned(),
                    1 => "the one before it was sent".to_owned(),
                    n => format!("the {n} before it were sent"),
                };
                return Err(ApiError::new(
                    e.status,
                    format!("messages[{i}]: {}; {before}", e.reason),
                ));
            }
        }
    }
    Ok(Json(json!({ "results": results })))
}

/// `POST /api/v1/broadcast`: one message to every live connection.
pub async fn broadcast(
    State(st): State<Arc<HttpState>>,
    ApiJson(m): ApiJson<MessageIn>,
) -> Result<Json<SentOut>, ApiError> {
    check_message(&m, false, "", st.max_uid_bytes)?;
    Ok(Json(st.hub.broadcast(m.into_message()).await?.into()))
}

/// `POST /api/v1/tags/{tag}/messages`: one message to every connection with the tag.
pub async fn send_to_tag(
    State(st): State<Arc<HttpState>>,
    Path(tag): Path<String>,
    ApiJson(m): ApiJson<MessageIn>,
) -> Result<Json<SentOut>, ApiError> {
    check_message(&m, false, "", st.max_uid_bytes)?;
    Ok(Json(
        st.hub.send_to_tag(&tag, m.into_message()).await?.into(),
    ))
}

/// Paging and filters of the online list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineQuery {
    /// Sessions to skip.
    #[serde(default)]
    pub offset: usize,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// Only this account.
    pub uid: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
}

/// `GET /api/v1/sessions?offset=&limit=&uid=&channel=`: a page of online sessions.
pub async fn online(
    State(st): State<Arc<HttpState>>,
    ApiQuery(q): ApiQuery<OnlineQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(uid) = &q.uid {
        check_account("uid", uid, st.max_uid_bytes)?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is not between 1 and 1000"
        )));
    }
    let page = st
        .hub
        .sessions()
        .online(&Page {
            offset: q.offset,
            limit,
            uid: q.uid,
            channel: q.channel,
        })
        .await?;
    Ok(Json(
        json!({ "total": page.total, "sessions": page.sessions }),
    ))
}

/// `GET /api/v1/accounts/{uid}/sessions`: the live sessions of one account.
pub async fn account_sessions(
    State(st): State<Arc<HttpState>>,
    Path(uid): Path<String>,
) -> Result<Json<Vec<Session>>, ApiError> {
    check_account("uid", &uid, st.max_uid_bytes)?;
    Ok(Json(st.hub.sessions().sessions(&uid).await?))
}

/// `DELETE /api/v1/accounts/{uid}/sessions`: kicks the account off every connection.
pub async fn kick(
    State(st): State<Arc<HttpState>>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_account("uid", &uid, st.max_uid_bytes)?;
    let kicked = st.hub.services().kick(&uid).await?;
    Ok(Json(json!({ "kicked": kicked })))
}

/// A token request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    /// The account.
    pub uid: String,
    /// Lifetime in seconds (default `auth.token_ttl_secs`).
    pub ttl_secs: Option<u64>,
}

/// `POST /api/v1/tokens`: mints a bind token (needs `auth.token_secret`).
pub async fn mint_token(
    State(st): State<Arc<HttpState>>,
    ApiJson(t): ApiJson<TokenIn>,
) -> Result<Json<Value>, ApiError> {
    let Some(signer) = &st.signer else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "tokens are off: auth.token_secret is not set",
        ));
    };
    if t.uid.is_empty() {
        return Err(ApiError::bad_request("uid is required"));
    }
    check_account("uid", &t.uid, st.max_uid_bytes)?;
    let expires = crate::auth::now_secs().saturating_add(t.ttl_secs.unwrap_or(st.token_ttl_secs));
    Ok(Json(
        json!({ "token": signer.mint(&t.uid, expires), "expires_at": expires }),
    ))
}

/// `GET /health`: liveness, with counts.
pub async fn health(State(st): State<Arc<HttpState>>) -> Result<Json<Value>, ApiError> {
    let sessions = st.hub.sessions().count().await?;
    Ok(Json(
        json!({ "status": "ok", "node": st.hub.node(), "sessions": sessions }),
    ))
}

fn store(st: &HttpState) -> Result<&Arc<dyn cim_core::engine::MessageStore>, ApiError> {
    st.hub.store().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "this server keeps no messages",
        )
    })
}

/// `GET /api/v1/accounts/{uid}/pending`: how many messages wait for the account.
pub async fn pending_count(
    State(st): State<Arc<HttpState>>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_account("uid", &uid, st.max_uid_bytes)?;
    let count = store(&st)?.count(&uid).await?;
    Ok(Json(json!({ "uid": uid, "pending": count })))
}

/// `DELETE /api/v1/accounts/{uid}/pending`: deletes the account's waiting messages.
pub async fn pending_clear(
    State(st): State<Arc<HttpState>>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_account("uid", &uid, st.max_uid_bytes)?;
    let deleted = store(&st)?.clear(&uid).await?;
    Ok(Json(json!({ "uid": uid, "deleted": deleted })))
}

/// `GET /api/v1/dispatch` (no API key needed): the node a client should connect to — in a
/// cluster the least loaded live node that is not draining (one of the two least loaded, at
/// random, when they are within a connection of each other; a slot reserved on it; a node that
/// missed two heartbeats, or the one `?avoid=` names, only when no other qualifies); on one node
/// this one, unless it is draining — with its addresses.
pub async fn dispatch(
    State(st): State<Arc<HttpState>>,
    ApiQuery(q): ApiQuery<DispatchQuery>,
) -> Result<Json<cim_core::engine::NodeAddrs>, ApiError> {
    if let Some(avoid) = &q.avoid {
        let ok = (1..=MAX_NODE_NAME).contains(&avoid.len())
            && avoid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "avoid {avoid:?} is not a node name (1 to {MAX_NODE_NAME} letters, digits, '.', \
                 '_' or '-')"
            )));
        }
    }
    Ok(Json(st.dispatch.pick(q.avoid.as_deref()).await?))
}

/// The longest node name (as `node` in a cluster must be).
const MAX_NODE_NAME: usize = 64;

/// What a client tells dispatch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchQuery {
    /// A node the client just lost or could not reach: named only when no other qualifies.
    pub avoid: Option<String>,
}

/// A request to take the node out of dispatch, or back in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainIn {
    /// `true`: dispatch names this node no more (its connections stay); `false`: it does again.
    pub draining: bool,
}

/// `POST /api/v1/drain` `{"draining": true}`: takes this node out of dispatch, or back in; its
/// connections stay. Once a drain to exit (`/api/v1/admin/drain`, SIGUSR1) has begun, the node
/// cannot come back in (`409`).
pub async fn drain(
    State(st): State<Arc<HttpState>>,
    ApiJson(d): ApiJson<DrainIn>,
) -> Result<Json<Value>, ApiError> {
    if !d.draining && st.drain.requested() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "this node is draining to exit (POST /api/v1/admin/drain or SIGUSR1): it cannot go \
             back into dispatch",
        ));
    }
    st.dispatch.set_draining(d.draining).await?;
    Ok(Json(
        json!({ "node": st.hub.node(), "draining": d.draining }),
    ))
}

/// `POST /api/v1/admin/drain` (no body): drains this node to exit, as SIGUSR1 does — out of
/// dispatch before the answer, then no new connections, the open ones closed spread over
/// `shutdown.drain_ms`, and the node exits. Answers `202` with `started: false` when a drain
/// was already under way.
pub async fn admin_drain(
    State(st): State<Arc<HttpState>>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    st.dispatch.set_draining(true).await?;
    let started = st.drain.request();
    let drain_ms = u64::try_from(st.drain.window().as_millis()).unwrap_or(u64::MAX);
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({
            "node": st.hub.node(), "draining": true, "drain_ms": drain_ms, "started": started,
        })),
    ))
}
