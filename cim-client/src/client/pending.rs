//! Matching replies to the requests waiting for them.

use std::collections::{HashMap, VecDeque};

use cim_core::protocol::{key, send};
use cim_core::{ReplyBody, SentBody};
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};

/// Requests waiting for their replies on the current connection.
#[derive(Default)]
pub(super) struct Pending {
    by_request_id: HashMap<String, oneshot::Sender<Result<ReplyBody>>>,
    by_key: HashMap<String, VecDeque<oneshot::Sender<Result<ReplyBody>>>>,
    next_request_id: u64,
}

impl Pending {
    /// Registers a request; gives a `client_message` a `requestId` when it has none.
    pub(super) fn add(&mut self, body: &mut SentBody, reply: oneshot::Sender<Result<ReplyBody>>) {
        if body.key == key::CLIENT_MESSAGE {
            let rid = match body.data.get(send::REQUEST_ID) {
                Some(r) => r.to_owned(),
                None => {
                    self.next_request_id += 1;
                    let r = format!("r{}", self.next_request_id);
                    body.data.insert(send::REQUEST_ID, r.clone());
                    r
                }
            };
            self.by_request_id.insert(rid, reply);
        } else {
            self.by_key
                .entry(body.key.clone())
                .or_default()
                .push_back(reply);
        }
    }

    /// Hands `reply` to the request it answers, or gives it back.
    pub(super) fn answer(&mut self, reply: ReplyBody) -> Option<ReplyBody> {
        if let Some(rid) = reply.data.get(send::REQUEST_ID)
            && let Some(tx) = self.by_request_id.remove(rid)
        {
            let _ = tx.send(Ok(reply));
            return None;
        }
        let queue = self.by_key.get_mut(&reply.key)?;
        let tx = queue.pop_front();
        if queue.is_empty() {
            self.by_key.remove(&reply.key);
        }
        match tx {
            Some(tx) => {
                let _ = tx.send(Ok(reply));
                None
            }
            None => Some(reply),
        }
    }

    /// Fails every waiting request (the connection is gone).
    pub(super) fn fail_all(&mut self) {
        for (_, tx) in self.by_request_id.drain() {
            let _ = tx.send(Err(ClientError::Disconnected));
        }
        for (_, q) in self.by_key.drain() {
            for tx in q {
                let _ = tx.send(Err(ClientError::Disconnected));
            }
        }
    }
}
