//! [`RedisStore`]: the [`MessageStore`] on Redis streams, shared by every node of a cluster.
//!
//! An account's messages are the stream `<prefix>q:<uid>`, each entry `<seq>-0` with the
//! message (`m`, JSON) and the time it was stored (`t`, Redis's clock); the sequence is the
//! counter `<prefix>qn:<uid>`, which outlives acknowledgements and clears. The set
//! `<prefix>qidx` names the accounts with stored messages, for the expiry. With
//! `appendonly yes` and `appendfsync always`, an append is on disk when it is answered.

use async_trait::async_trait;
use cim_core::Message;
use cim_core::engine::{Appended, MessageStore, Seq, Stored};
use redis::Value;
use redis::aio::ConnectionManager;

use crate::error::ClusterError;
use crate::lua::Scripts;
use crate::value::{array, bytes, count, int, text};

/// Stored messages on Redis streams. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    redis: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    prefix: String,
    cap: usize,
    /// `cim_cluster_redis_errors_total{part="store"}`.
    errors: metrics::Counter,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// The JSON of a message, as streams and inboxes hold it.
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    serde_json::to_vec(m).unwrap_or_default()
}

pub(crate) fn decode_message(b: &[u8]) -> Result<Message, ClusterError> {
    serde_json::from_slice(b).map_err(|e| ClusterError::Reply(format!("a stored message: {e}")))
}

/// The sequence of a stream entry id `<seq>-0`.
fn seq_of(id: &str) -> Option<Seq> {
    id.split_once('-').and_then(|(s, _)| s.parse().ok())
}

impl RedisStore {
    /// Connects to the Redis at `url` (see [`crate::connect`]); keys start with `prefix`; at
    /// most `cap` messages are kept per account.
    pub async fn open(
        url: &str,
        prefix: &str,
        cap: usize,
        timeout: std::time::Duration,
    ) -> Result<RedisStore, ClusterError> {
        let (_, redis) = crate::connect(url, timeout).await?;
        Ok(Self::with_connection(redis, prefix, cap))
    }

    /// A store over an open connection.
    pub fn with_connection(redis: ConnectionManager, prefix: &str, cap: usize) -> RedisStore {
        RedisStore {
            redis,
            scripts: std::sync::Arc::new(Scripts::new()),
            prefix: prefix.to_owned(),
            cap: cap.max(1),
            errors: crate::metrics::store_errors(),
        }
    }

    /// The prefix of its keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn queue(&self, uid: &str) -> String {
        format!("{}q:{uid}", self.prefix)
    }

    async fn cmd(&self, c: &redis::Cmd) -> Result<Value, ClusterError> {
        let mut r = self.redis.clone();
        let v = match c.query_async(&mut r).await {
            Err(e) if crate::cluster::reconnected(&e) => c.query_async(&mut r).await,
            other => other,
        };
        crate::cluster::counted(v, &self.errors)
    }

    async fn script(&self, s: &redis::Script, args: &[&[u8]]) -> Result<Value, ClusterError> {
        let mut inv = s.prepare_invoke();
        inv.arg(&self.prefix);
        for a in args {
            inv.arg(*a);
        }
        let mut r = self.redis.clone();
        let v = match inv.invoke_async(&mut r).await {
            Err(e) if crate::cluster::reconnected(&e) => inv.invoke_async(&mut r).await,
            other => other,
        };
        crate::cluster::counted(v, &self.errors)
    }
}

/// Reads the entries of an `XRANGE` reply.
fn entries(v: Value) -> Result<Vec<Stored>, ClusterError> {
    let mut out = Vec::new();
    for e in array(v)? {
        let mut parts = array(e)?.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(ClusterError::Reply("a stream entry without fields".into()));
        };
        let id = text(id)?;
        let seq = seq_of(&id).ok_or_else(|| ClusterError::Reply(format!("stream id {id}")))?;
        let mut message = None;
        let mut stored_at = 0;
        let mut fields = array(fields)?.into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            match bytes(k)?.as_slice() {
                b"m" => message = Some(decode_message(&bytes(v)?)?),
                b"t" => stored_at = int(v)?,
                _ => {}
            }
        }
        let message = message.ok_or_else(|| ClusterError::Reply(format!("entry {id}")))?;
        out.push(Stored {
            seq,
            stored_at,
            message,
        });
    }
    Ok(out)
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn append(&self, uid: &str, msg: &Message) -> cim_core::Result<Appended> {
        let cap = self.cap.to_string();
        let blob = encode_message(msg);
        let v = self
            .script(
                &self.scripts.append,
                &[uid.as_bytes(), &blob, cap.as_bytes()],
            )
            .await?;
        let mut it = array(v)?.into_iter();
        let seq = it.next().map(int).transpose()?.unwrap_or(0);
        let dropped = it.next().map(count).transpose()?.unwrap_or(0);
        Ok(Appended {
            seq: u64::try_from(seq).unwrap_or(0),
            dropped,
        })
    }

    async fn pending(&self, uid: &str, after: Seq, limit: usize) -> cim_core::Result<Vec<Stored>> {
        if after == Seq::MAX || limit == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .cmd(
                redis::cmd("XRANGE")
                    .arg(self.queue(uid))
                    .arg(format!("{}-0", after + 1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        Ok(entries(v)?)
    }

    async fn ack(&self, uid: &str, upto: Seq) -> cim_core::Result<usize> {
        let v = self
            .cmd(
                redis::cmd("XTRIM")
                    .arg(self.queue(uid))
                    .arg("MINID")
                    .arg(format!("{}-0", upto.saturating_add(1))),
            )
            .await?;
        Ok(count(v)?)
    }

    async fn last_seq(&self, uid: &str) -> cim_core::Result<Seq> {
        let v = self
            .cmd(redis::cmd("GET").arg(format!("{}qn:{uid}", self.prefix)))
            .await?;
        Ok(u64::try_from(int(v)?).unwrap_or(0))
    }

    async fn count(&self, uid: &str) -> cim_core::Result<usize> {
        let v = self.cmd(redis::cmd("XLEN").arg(self.queue(uid))).await?;
        Ok(count(v)?)
    }

    async fn clear(&self, uid: &str) -> cim_core::Result<usize> {
        let v = self.script(&self.scripts.clear, &[uid.as_bytes()]).await?;
        Ok(count(v)?)
    }

    async fn expire(&self, older_than_ms: i64) -> cim_core::Result<usize> {
        let cut = older_than_ms.to_string();
        let mut cursor = "0".to_owned();
        let mut total = 0;
        loop {
            let v = self
                .cmd(
                    redis::cmd("SSCAN")
                        .arg(format!("{}qidx", self.prefix))
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(200),
                )
                .await?;
            let mut it = array(v)?.into_iter();
            let (Some(next), Some(uids)) = (it.next(), it.next()) else {
                return Err(ClusterError::Reply("SSCAN".into()).into());
            };
            for uid in array(uids)? {
                let uid = bytes(uid)?;
                let n = self
                    .script(&self.scripts.expire, &[&uid, cut.as_bytes()])
                    .await?;
                total += count(n)?;
            }
            cursor = text(next)?;
            if cursor == "0" {
                return Ok(total);
            }
        }
    }

    async fn flush(&self) -> cim_core::Result<()> {
        // Durable as Redis's `appendfsync` says, when each append is answered.
        Ok(())
    }
}
