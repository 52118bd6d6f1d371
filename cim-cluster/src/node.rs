//! A node's life in the cluster: registration (refused when a live node has the same name or
//! number), the heartbeat, the sweep that reaps dead nodes, the epoch check for a Redis that
//! came back empty, and the deregistration at shutdown.
//!
//! The sweep runs only after this node has reached Redis without a break for a whole deadline:
//! right after Redis restarts every deadline may look passed, and the other nodes must get the
//! chance to beat before anyone is reaped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cim_core::Session;
use cim_core::engine::{CloseRequest, ConnId, KickDecision, kick_notice};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::cluster::Inner;
use crate::error::ClusterError;
use crate::inbox::{entries, lock};
use crate::sessions::Removal;
use crate::value::{array, text};

/// Entries or accounts handled per step of a reap.
const REAP_PAGE: usize = 200;
/// How long a reaper holds a dead node's lock.
const REAP_LOCK_MS: u64 = 30_000;

impl Inner {
    /// Node ids of the live nodes (`true`) or of the registered dead ones.
    pub(crate) async fn nodes(&self, live: bool) -> Result<Vec<String>, ClusterError> {
        let mut inv = self.invocation(&self.scripts.live);
        inv.arg(if live { "live" } else { "dead" });
        array(self.call(&inv).await?)?
            .into_iter()
            .map(text)
            .collect()
    }

    async fn register(&self) -> Result<(), ClusterError> {
        let a = lock(&self.advertised).clone();
        let candidate: String = crate::hex_id(16);
        let mut inv = self.invocation(&self.scripts.register);
        let draining = self.draining.load(Ordering::Acquire);
        inv.arg(self.nid.as_str())
            .arg(self.config.node.as_str())
            .arg(self.config.node_id)
            .arg(self.config.deadline.as_millis() as u64)
            .arg(candidate)
            .arg(if draining { "1" } else { "0" })
            .arg(self.config.heartbeat.as_millis() as u64);
        for addr in [&a.tcp, &a.websocket, &a.http, &a.tls, &a.wss, &a.xml] {
            inv.arg(addr.as_str());
        }
        let mut it = array(self.call(&inv).await?)?.into_iter();
        let status = it.next().map(text).transpose()?.unwrap_or_default();
        let mut rest = it.map(text);
        let mut next = || rest.next().transpose().map(Option::unwrap_or_default);
        if status == "taken" {
            return Err(ClusterError::Taken {
                name: self.config.node.clone(),
                number: self.config.node_id,
                other: next()?,
                other_name: next()?,
                other_number: next()?,
            });
        }
        *lock(&self.epoch) = next()?;
        Ok(())
    }

    /// Registers again after Redis lost its data (or this node was taken for dead), and
    /// asserts every session of this node again, yielding to newer binds that conflict.
    async fn recover(&self, policy: &dyn cim_core::engine::KickPolicy) -> Result<(), ClusterError> {
        self.register().await?;
        self.reset_inbox.store(true, Ordering::Release);
        let sessions = self.local_sessions().await;
        let mut kept = 0;
        for s in &sessions {
            if self.reassert(s, policy).await? {
                kept += 1;
            }
        }
        let tags = self.local.tag_counts();
        if !tags.is_empty() {
            let mut inv = self.invocation(&self.scripts.tags_set);
            inv.arg(self.nid.as_str());
            for (tag, n) in &tags {
                inv.arg(tag.as_str()).arg(*n);
            }
            self.call(&inv).await?;
        }
        info!(
            sessions = kept,
            yielded = sessions.len() - kept,
            tags = tags.len(),
            "registered again and sessions asserted again"
        );
        Ok(())
    }

    /// Puts one of this node's sessions back in the registry, unless a newer conflicting bind
    /// took its place meanwhile: then this connection yields (as the kick policy says). Returns
    /// whether it was kept.
    async fn reassert(
        &self,
        mine: &Session,
        policy: &dyn cim_core::engine::KickPolicy,
    ) -> Result<bool, ClusterError> {
        let my_sid = self.sid(mine.nid);
        for _ in 0..32 {
            let (version, found) = self.snapshot(&mine.uid).await?;
            let mut removals = Vec::new();
            let mut yield_to: Option<(KickDecision, Session)> = None;
            for e in found {
                if e.sid == my_sid {
                    continue;
                }
                if !e.live {
                    removals.push(Removal {
                        entry: e,
                        how: KickDecision::CloseSilently,
                    });
                    continue;
                }
                let newer =
                    (e.session.bind_time, e.sid.as_str()) > (mine.bind_time, my_sid.as_str());
                if newer {
                    let d = policy.decide(mine, &e.session);
                    if d != KickDecision::Keep {
                        yield_to = Some((d, e.session));
                        break;
                    }
                } else {
                    let d = policy.decide(&e.session, mine);
                    if d != KickDecision::Keep {
                        removals.push(Removal { entry: e, how: d });
                    }
                }
            }
            if let Some((how, newer)) = yield_to {
                let notice =
                    (how == KickDecision::Kick).then(|| kick_notice(&mine.uid, &newer.device_name));
                // Its tags are set again from the table after this, without it.
                let _ = self.local.release(
                    &mine.uid,
                    ConnId(mine.nid),
                    notice,
                    Some(CloseRequest::Kicked),
                );
                return Ok(false);
            }
            if self
                .commit_bind(mine, &version, &removals, &mine.device_name)
                .await?
            {
                self.close_local(&mine.uid, &removals, &mine.device_name)
                    .await;
                return Ok(true);
            }
        }
        Err(ClusterError::Reply(format!(
            "account {:?} kept changing while its session was asserted again",
            mine.uid
        )))
    }

    /// Reaps dead node `nid` if no other node is at it: its sessions go, its unread inbox is
    /// routed again (stored when nobody takes it), its keys are deleted.
    pub(crate) async fn reap(&self, nid: &str) -> Result<(), ClusterError> {
        let got = self
            .cmd(
                redis::cmd("SET")
                    .arg(self.key(&format!("reap:{nid}")))
                    .arg(self.nid.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(REAP_LOCK_MS),
            )
            .await?;
        if got == redis::Value::Nil {
            return Ok(());
        }
        // It may have beaten since it was found dead.
        if nid != self.nid && !self.nodes(false).await?.iter().any(|n| n == nid) {
            self.cmd(redis::cmd("DEL").arg(self.key(&format!("reap:{nid}"))))
                .await?;
            return Ok(());
        }
        if nid == self.nid {
            // Leaving: from now on nothing is routed here (this node counts as dead).
            self.cmd(redis::cmd("ZADD").arg(self.key("nodes")).arg(0).arg(nid))
                .await?;
        } else {
            warn!(node = %nid, "reaping a node whose deadline passed");
        }
        // Its sessions first: the accounts it had.
        loop {
            let v = self
                .cmd(
                    redis::cmd("HSCAN")
                        .arg(self.key(&format!("n:{nid}:u")))
                        .arg(0)
                        .arg("COUNT")
                        .arg(REAP_PAGE),
                )
                .await?;
            let mut it = array(v)?.into_iter();
            let items = it.nth(1).map(array).transpose()?.unwrap_or_default();
            if items.is_empty() {
                break;
            }
            let mut inv = self.invocation(&self.scripts.reap_sessions);
            inv.arg(nid);
            for (i, uid) in items.into_iter().enumerate() {
                if i % 2 == 0 {
                    inv.arg(text(uid)?);
                }
            }
            self.call(&inv).await?;
        }
        // Then what it had not delivered.
        let inbox = self.inbox_key(nid);
        let mut rerouted = 0;
        loop {
            let v = self
                .cmd(
                    redis::cmd("XRANGE")
                        .arg(&inbox)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(REAP_PAGE),
                )
                .await?;
            let page = entries(v)?;
            if page.is_empty() {
                break;
            }
            let mut again = Vec::new();
            // Routed messages only: kicks, broadcasts and tag pushes for a dead node go with it.
            for e in page.iter().filter(|e| e.kind() == b"m") {
                for (stored, had, m) in e.messages() {
                    if stored {
                        continue;
                    }
                    let skip = if had.is_empty() {
                        nid.to_owned()
                    } else {
                        format!("{had},{nid}")
                    };
                    again.push((Arc::new(cim_core::engine::SharedMessage::new(m)), skip));
                }
            }
            if !again.is_empty() {
                self.route(&again).await.map_err(ClusterError::from)?;
                rerouted += again.len();
                if nid != self.nid {
                    self.metrics
                        .rerouted_dead_node
                        .increment(again.len() as u64);
                }
            }
            let mut del = redis::cmd("XDEL");
            del.arg(&inbox);
            for e in &page {
                del.arg(&e.id);
            }
            self.cmd(&del).await?;
        }
        let mut inv = self.invocation(&self.scripts.reap_finish);
        inv.arg(nid);
        self.call(&inv).await?;
        if nid != self.nid {
            self.metrics.reaps.increment(1);
            warn!(node = %nid, rerouted, "dead node reaped");
        } else {
            debug!(rerouted, "this node deregistered");
        }
        Ok(())
    }

    async fn sweep(&self) -> Result<(), ClusterError> {
        for nid in self.nodes(false).await? {
            if nid != self.nid {
                self.reap(&nid).await?;
            }
        }
        Ok(())
    }

    /// One heartbeat; returns whether Redis answered.
    async fn beat(&self) -> Result<(), ClusterError> {
        let epoch = lock(&self.epoch).clone();
        let mut inv = self.invocation(&self.scripts.heartbeat);
        inv.arg(self.nid.as_str())
            .arg(epoch.as_str())
            .arg(self.config.deadline.as_millis() as u64);
        let mut it = array(self.call(&inv).await?)?.into_iter();
        let status = it.next().map(text).transpose()?.unwrap_or_default();
        match status.as_str() {
            "ok" => Ok(()),
            "epoch" => {
                let now = it.next().map(text).transpose()?.unwrap_or_default();
                self.epoch_losses.fetch_add(1, Ordering::Relaxed);
                self.metrics.epoch_losses.increment(1);
                error!(
                    was = %epoch,
                    now = %now,
                    "redis lost the cluster's data (its epoch changed): registering again and \
                     asserting this node's sessions again"
                );
                lock(&self.tracker).clear();
                let policy = Arc::clone(&self.config.kick_policy);
                self.recover(&*policy).await
            }
            _ => {
                warn!("this node was taken for dead and reaped: registering again");
                let policy = Arc::clone(&self.config.kick_policy);
                self.recover(&*policy).await
            }
        }
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let every = inner.config.heartbeat;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when Redis answered every beat (`None` after a failure).
    let mut reachable_since = Some(Instant::now());
    let mut failing = false;
    let mut last_expiry = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match inner.beat().await {
            Ok(()) => {
                if failing {
                    info!("redis answers the heartbeat again");
                    failing = false;
                }
                let since = *reachable_since.get_or_insert_with(Instant::now);
                // A sweep (a reap may take a while) runs beside the beats, never in their way:
                // a node reaping another must not miss its own deadline.
                if since.elapsed() >= inner.config.deadline
                    && !inner.sweeping.swap(true, Ordering::AcqRel)
                {
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        if let Err(e) = inner.sweep().await {
                            debug!(error = %e, "sweeping dead nodes failed");
                        }
                        inner.sweeping.store(false, Ordering::Release);
                    });
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "heartbeat failed");
                    failing = true;
                }
                reachable_since = None;
            }
        }
        if last_expiry.elapsed() >= Duration::from_secs(1) {
            inner.expire_handovers().await;
            last_expiry = Instant::now();
        }
    }
}

/// Registers this node and starts its heartbeat and its inbox reader.
pub(crate) async fn start(inner: &Arc<Inner>) -> Result<(), ClusterError> {
    if inner.started.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    inner.register().await?;
    info!(nid = %inner.nid, "joined the cluster");
    inner.spawn(heartbeat(Arc::clone(inner)));
    inner.spawn(crate::inbox::reader(Arc::clone(inner)));
    Ok(())
}

/// Stops the heartbeat and the reader, routes again what the inbox still holds, and
/// deregisters this node.
pub(crate) async fn shutdown(inner: &Arc<Inner>) -> Result<(), ClusterError> {
    if !inner.started.load(Ordering::Acquire) {
        return Ok(());
    }
    inner.stop.send_replace(true);
    let tasks = std::mem::take(&mut *lock(&inner.tasks));
    for t in tasks {
        let _ = t.await;
    }
    inner.delete_done().await;
    inner.reap(&inner.nid).await?;
    info!(nid = %inner.nid, "left the cluster");
    Ok(())
}
