//! [`ClusterSessions`]: the [`SessionManager`] of a cluster node — the account registry in
//! Redis (`s:<uid>`: session id → session), this node's connections in memory.
//!
//! A bind reads the account's sessions, applies the kick policy in Rust on that snapshot, and
//! commits with a compare-and-set on the account's version (deciding again on a race). Sessions
//! it closes on other nodes are told through those nodes' inboxes; this node's own are closed
//! in process.

use std::sync::Arc;

use async_trait::async_trait;
use cim_core::Session;
use cim_core::engine::{
    BindOutcome, CloseRequest, ConnId, ConnectionHandle, Delivery, KeepAll, KickDecision,
    KickPolicy, OPERATOR, OnlinePage, Page, SessionManager, SharedMessage, kick_notice,
};
use tracing::warn;

use crate::cluster::Inner;
use crate::error::ClusterError;
use crate::value::{array, bytes, count, int, text};

/// How often a bind decides again when the account changed under it, at most.
const BIND_TRIES: usize = 32;

/// An account's session as the registry holds it.
pub(crate) struct Entry {
    pub(crate) sid: String,
    pub(crate) session: Session,
    pub(crate) live: bool,
}

impl Entry {
    /// The node id part of the session id.
    pub(crate) fn owner(&self) -> &str {
        self.sid.rsplit_once('/').map_or("", |(n, _)| n)
    }

    pub(crate) fn conn(&self) -> u64 {
        self.sid
            .rsplit_once('/')
            .and_then(|(_, c)| c.parse().ok())
            .unwrap_or(0)
    }
}

/// The registry's value of a session: `1` or `0` (whether it acknowledges messages, read by
/// the send script), then its JSON.
pub(crate) fn encode_session(s: &Session) -> Vec<u8> {
    let mut v = vec![if s.client_ack { b'1' } else { b'0' }];
    v.extend(serde_json::to_vec(s).unwrap_or_default());
    v
}

fn decode_session(v: &[u8]) -> Result<Session, ClusterError> {
    serde_json::from_slice(v.get(1..).unwrap_or_default())
        .map_err(|e| ClusterError::Reply(format!("a session: {e}")))
}

/// A removal a bind commits: the session, and how its node is told.
pub(crate) struct Removal {
    pub(crate) entry: Entry,
    pub(crate) how: KickDecision,
}

impl Inner {
    /// The account's version and sessions.
    pub(crate) async fn snapshot(&self, uid: &str) -> Result<(String, Vec<Entry>), ClusterError> {
        let mut inv = self.invocation(&self.scripts.snapshot);
        inv.arg(uid);
        let mut it = array(self.call(&inv).await?)?.into_iter();
        let version = it.next().map(text).transpose()?.unwrap_or_default();
        let mut entries = Vec::new();
        while let (Some(sid), Some(value), Some(live)) = (it.next(), it.next(), it.next()) {
            let sid = text(sid)?;
            match decode_session(&bytes(value)?) {
                Ok(session) => entries.push(Entry {
                    sid,
                    session,
                    live: int(live)? == 1,
                }),
                Err(e) => warn!(%sid, error = %e, "unreadable session in the registry"),
            }
        }
        Ok((version, entries))
    }

    /// Commits `session` with `removals` if the account is still at `version`.
    pub(crate) async fn commit_bind(
        &self,
        session: &Session,
        version: &str,
        removals: &[Removal],
        device_name: &str,
    ) -> Result<bool, ClusterError> {
        let mut inv = self.invocation(&self.scripts.bind);
        inv.arg(session.uid.as_str())
            .arg(version)
            .arg(self.nid.as_str())
            .arg(self.sid(session.nid))
            .arg(encode_session(session))
            .arg(removals.len());
        for r in removals {
            let how = match (r.entry.live, r.how) {
                (false, _) => "d",
                (true, KickDecision::Kick) => "k",
                (true, _) => "c",
            };
            inv.arg(r.entry.sid.as_str()).arg(how).arg(device_name);
        }
        Ok(int(self.call(&inv).await?)? == 1)
    }

    /// Carries out, on this node, the removals of a committed bind that are this node's own.
    pub(crate) async fn close_local(&self, uid: &str, removals: &[Removal], device_name: &str) {
        if removals.iter().any(|r| r.entry.owner() == self.nid) {
            // What was routed to them before is queued ahead of the notice.
            self.catch_up().await;
        }
        for r in removals {
            if r.entry.owner() != self.nid {
                continue;
            }
            let notice = (r.how == KickDecision::Kick).then(|| kick_notice(uid, device_name));
            if let Some(tags) = self.local.release(
                uid,
                ConnId(r.entry.conn()),
                notice,
                Some(CloseRequest::Kicked),
            ) {
                self.untag_all(&tags).await;
            }
        }
    }

    /// Counts this node's connections with each of `tags` down by one.
    pub(crate) async fn untag_all(&self, tags: &[String]) {
        for tag in tags {
            if let Err(e) = self.tag_delta(tag, -1).await {
                warn!(%tag, error = %e, "updating the tag's count failed");
            }
        }
    }

    pub(crate) async fn tag_delta(&self, tag: &str, delta: i64) -> Result<(), ClusterError> {
        let mut inv = self.invocation(&self.scripts.tag);
        inv.arg(self.nid.as_str()).arg(tag).arg(delta);
        self.call(&inv).await.map(|_| ())
    }

    async fn bind_registered(
        &self,
        session: &Session,
        policy: &dyn KickPolicy,
    ) -> Result<BindOutcome, ClusterError> {
        let my_sid = self.sid(session.nid);
        for _ in 0..BIND_TRIES {
            let (version, entries) = self.snapshot(&session.uid).await?;
            let mut removals = Vec::new();
            let mut outcome = BindOutcome::default();
            for entry in entries {
                if entry.sid == my_sid {
                    continue;
                }
                if !entry.live {
                    removals.push(Removal {
                        entry,
                        how: KickDecision::CloseSilently,
                    });
                    continue;
                }
                match policy.decide(&entry.session, session) {
                    KickDecision::Keep => {}
                    how => {
                        match how {
                            KickDecision::Kick => outcome.kicked.push(entry.session.clone()),
                            _ => outcome.closed.push(entry.session.clone()),
                        }
                        removals.push(Removal { entry, how });
                    }
                }
            }
            if self
                .commit_bind(session, &version, &removals, &session.device_name)
                .await?
            {
                self.close_local(&session.uid, &removals, &session.device_name)
                    .await;
                return Ok(outcome);
            }
        }
        Err(ClusterError::Reply(format!(
            "account {:?} changed {BIND_TRIES} times during one bind",
            session.uid
        )))
    }
}

/// The cluster's session manager for one node.
pub struct ClusterSessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSessions")
            .field("nid", &self.inner.nid)
            .finish_non_exhaustive()
    }
}

impl ClusterSessions {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    fn mine(&self, session: &Session) -> bool {
        session.node == self.inner.config.node
    }
}

#[async_trait]
impl SessionManager for ClusterSessions {
    async fn bind(
        &self,
        session: Arc<Session>,
        conn: ConnectionHandle,
        policy: &dyn KickPolicy,
    ) -> cim_core::Result<BindOutcome> {
        let inner = &self.inner;
        if !self.mine(&session) {
            return Err(cim_core::Error::Conflict(format!(
                "a session of node {:?} bound through the cluster node {:?}: the hub's node name \
                 must be the cluster's",
                session.node, inner.config.node
            )));
        }
        // In this node's table first (replacing this connection's earlier session), so that
        // what is routed here once the registry names it finds the connection.
        let old_tags = inner.local.tags_of(&session);
        inner
            .local
            .bind(Arc::clone(&session), conn.clone(), &KeepAll)
            .await?;
        inner.untag_all(&old_tags).await;
        match inner.bind_registered(&session, policy).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                inner.local.release(&session.uid, conn.id(), None, None);
                Err(e.into())
            }
        }
    }

    async fn unbind(&self, session: &Session) -> cim_core::Result<()> {
        if !self.mine(session) {
            return Ok(());
        }
        let inner = &self.inner;
        // What was routed here for it before now reaches its queue first.
        inner.catch_up().await;
        let tags = inner
            .local
            .release(&session.uid, ConnId(session.nid), None, None);
        let mut inv = inner.invocation(&inner.scripts.unbind);
        inv.arg(session.uid.as_str()).arg(inner.sid(session.nid));
        inner.call(&inv).await?;
        if let Some(tags) = tags {
            inner.untag_all(&tags).await;
        }
        Ok(())
    }

    async fn push(&self, msg: Arc<SharedMessage>) -> cim_core::Result<Delivery> {
        self.inner.local.push(msg).await
    }

    async fn push_tag(&self, tag: &str, msg: Arc<SharedMessage>) -> cim_core::Result<Delivery> {
        self.inner.local.push_tag(tag, msg).await
    }

    async fn broadcast(&self, msg: Arc<SharedMessage>) -> cim_core::Result<Delivery> {
        self.inner.local.broadcast(msg).await
    }

    async fn set_tag(&self, session: &Session, tag: &str) -> cim_core::Result<()> {
        let inner = &self.inner;
        if inner.local.tags_of(session).iter().any(|t| t == tag) {
            return Ok(());
        }
        inner.local.set_tag(session, tag).await?;
        if inner.local.tags_of(session).iter().any(|t| t == tag) {
            inner.tag_delta(tag, 1).await?;
        }
        Ok(())
    }

    async fn remove_tag(&self, session: &Session, tag: &str) -> cim_core::Result<()> {
        let inner = &self.inner;
        if !inner.local.tags_of(session).iter().any(|t| t == tag) {
            return Ok(());
        }
        // A tag push routed here before the tag goes still reaches the connection.
        inner.catch_up().await;
        inner.local.remove_tag(session, tag).await?;
        inner.tag_delta(tag, -1).await?;
        Ok(())
    }

    async fn sessions(&self, uid: &str) -> cim_core::Result<Vec<Session>> {
        let (_, entries) = self.inner.snapshot(uid).await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.live)
            .map(|e| e.session)
            .collect())
    }

    async fn online(&self, page: &Page) -> cim_core::Result<OnlinePage> {
        let inner = &self.inner;
        let uids: Vec<String> = match &page.uid {
            Some(uid) => vec![uid.clone()],
            None => {
                let mut uids = std::collections::BTreeSet::new();
                for nid in inner.nodes(true).await? {
                    let v = inner
                        .cmd(redis::cmd("HKEYS").arg(inner.key(&format!("n:{nid}:u"))))
                        .await?;
                    for uid in array(v)? {
                        uids.insert(text(uid)?);
                    }
                }
                uids.into_iter().collect()
            }
        };
        let mut all = Vec::new();
        for uid in uids {
            let (_, entries) = inner.snapshot(&uid).await?;
            all.extend(
                entries
                    .into_iter()
                    .filter(|e| e.live)
                    .map(|e| e.session)
                    .filter(|s| page.channel.as_deref().is_none_or(|c| s.channel == c)),
            );
        }
        all.sort_by(|a, b| (&a.node, a.nid).cmp(&(&b.node, b.nid)));
        let total = all.len();
        let sessions = all.into_iter().skip(page.offset).take(page.limit).collect();
        Ok(OnlinePage { total, sessions })
    }

    async fn kick(&self, uid: &str) -> cim_core::Result<usize> {
        let inner = &self.inner;
        let mut inv = inner.invocation(&inner.scripts.kick);
        inv.arg(uid).arg(OPERATOR);
        Ok(count(inner.call(&inv).await?)?)
    }

    async fn count(&self) -> cim_core::Result<usize> {
        let inner = &self.inner;
        let inv = inner.invocation(&inner.scripts.count);
        Ok(count(inner.call(&inv).await?)?)
    }

    async fn start(&self) -> cim_core::Result<()> {
        crate::node::start(&self.inner).await.map_err(Into::into)
    }

    async fn shutdown(&self) -> cim_core::Result<()> {
        crate::node::shutdown(&self.inner).await.map_err(Into::into)
    }
}
