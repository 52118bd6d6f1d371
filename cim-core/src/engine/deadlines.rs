//! [`Deadlines`]: one timer for the heartbeats of all connections of a node.
//!
//! Each connection keeps one entry, its next heartbeat deadline; a single task sleeps until the
//! earliest and pokes the connections that are due through their queues. The connection then
//! runs its [`Heartbeat`](crate::engine::Heartbeat) and sets its next deadline. (A timer of its
//! own would cost every connection's task 112 bytes, held for the connection's whole life, for a
//! timer that fires about once a minute.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::engine::conn::{ConnId, ConnectionHandle};
use crate::engine::locks::lock;

/// The longest the task sleeps before it looks again whether its node is still there.
const MAX_NAP: Duration = Duration::from_secs(1);

pub(crate) struct Deadlines {
    /// The deadlines, in whole milliseconds since `epoch` (rounded up: an entry never fires
    /// early), and the connection: 16 bytes a key, where an `Instant` and the id took 24.
    due: Mutex<BTreeMap<(u64, ConnId), ConnectionHandle>>,
    epoch: Instant,
    /// An entry earlier than every other was added: the task sleeps too long.
    sooner: Notify,
    /// The task that pokes; started by the first entry (inside the runtime), and again if its
    /// runtime went away.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            due: Mutex::default(),
            epoch: Instant::now(),
            sooner: Notify::new(),
            task: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("entries", &self.entries().len())
            .finish_non_exhaustive()
    }
}

impl Deadlines {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<(u64, ConnId), ConnectionHandle>> {
        lock(&self.due)
    }

    /// `at` in whole milliseconds since the epoch, rounded down.
    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// The key of a deadline at `at`: its milliseconds rounded up.
    fn key(&self, at: Instant) -> u64 {
        let ms = self.millis(at);
        if self.instant(ms) < at {
            ms.saturating_add(1)
        } else {
            ms
        }
    }

    /// The instant of the deadline `key` (the nap's end when that is past what an `Instant` holds).
    fn instant(&self, key: u64) -> Instant {
        self.epoch
            .checked_add(Duration::from_millis(key))
            .unwrap_or_else(|| Instant::now() + MAX_NAP)
    }

    /// Pokes `handle` at `at` (once). Must be called inside a tokio runtime.
    pub(crate) fn set(self: &Arc<Self>, at: Instant, handle: &ConnectionHandle) {
        let key = self.key(at);
        let earliest = {
            let mut due = self.entries();
            due.insert((key, handle.id()), handle.clone());
            due.first_key_value().is_some_and(|(k, _)| k.0 == key)
        };
        self.ensure_task();
        if earliest {
            self.sooner.notify_one();
        }
    }

    /// Removes the entry [`set`](Self::set) at `at` for `id`, if it has not fired.
    pub(crate) fn clear(&self, at: Instant, id: ConnId) {
        let key = self.key(at);
        self.entries().remove(&(key, id));
    }

    fn ensure_task(self: &Arc<Self>) {
        let mut task = lock(&self.task);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            *task = Some(tokio::spawn(run(Arc::downgrade(self))));
        }
    }

    /// Takes the entries due at `now`, and the next deadline.
    fn take_due(&self, now: Instant) -> (Vec<ConnectionHandle>, Option<Instant>) {
        let now = self.millis(now);
        let mut due = self.entries();
        let mut fired = Vec::new();
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fired.push(entry.remove());
        }
        (fired, due.first_key_value().map(|(k, _)| self.instant(k.0)))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }
}

/// Pokes what is due, sleeps until the next deadline (or an earlier one is set); ends when its
/// node is gone.
async fn run(deadlines: Weak<Deadlines>) {
    loop {
        let Some(d) = deadlines.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (fired, next) = d.take_due(now);
        for handle in fired {
            handle.poke();
        }
        let wake = next.map_or(now + MAX_NAP, |at| at.min(now + MAX_NAP));
        tokio::select! {
            () = sleep_until(wake) => {}
            () = d.sooner.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pokes_each_connection_at_its_deadline_once() {
        let d = Arc::new(Deadlines::default());
        let (a, ra) = ConnectionHandle::new(ConnId(1), 4);
        let (b, rb) = ConnectionHandle::new(ConnId(2), 4);
        let t0 = Instant::now();
        d.set(t0 + Duration::from_millis(150), &b);
        d.set(t0 + Duration::from_millis(50), &a);
        ra.ready().await;
        assert!(ra.take_due(), "a is due first");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(!rb.take_due(), "b is not due yet");
        rb.ready().await;
        assert!(rb.take_due());
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(d.len(), 0, "fired entries are gone");
        assert!(!ra.take_due(), "a was poked once");
    }

    #[tokio::test]
    async fn a_deadline_between_milliseconds_fires_on_the_next_one_never_before() {
        let d = Arc::new(Deadlines::default());
        let (a, _ra) = ConnectionHandle::new(ConnId(1), 4);
        let at = d.epoch + Duration::from_micros(1_500);
        d.set(at, &a);
        let (fired, next) = d.take_due(at);
        assert!(fired.is_empty(), "1.5 ms is kept as 2 ms");
        assert_eq!(next, Some(d.epoch + Duration::from_millis(2)));
        assert_eq!(d.take_due(d.epoch + Duration::from_millis(2)).0.len(), 1);
        // Set and cleared at the same instant: the same key.
        d.set(at, &a);
        d.clear(at, a.id());
        assert_eq!(d.len(), 0);
    }

    #[tokio::test]
    async fn a_cleared_entry_never_fires() {
        let d = Arc::new(Deadlines::default());
        let (a, ra) = ConnectionHandle::new(ConnId(1), 4);
        let at = Instant::now() + Duration::from_millis(30);
        d.set(at, &a);
        d.clear(at, a.id());
        assert_eq!(d.len(), 0);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!ra.take_due());
    }
}

/// The driver and the shared timer together.
#[cfg(test)]
mod driver_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::engine::conn::Outbound;
    use crate::engine::driver::serve_connection;
    use crate::engine::heartbeat::Timers;
    use crate::engine::hub::Hub;
    use crate::engine::transport::{ConnectionConfig, Transport};
    use crate::error::Result;
    use crate::frame::Frame;
    use crate::message::SentBody;
    use crate::protocol::{code, key};
    use tokio::sync::mpsc;

    /// Frames over channels: the engine end of a connection whose peer is the test.
    struct Channels {
        from_peer: mpsc::Receiver<Frame>,
        to_peer: mpsc::UnboundedSender<Frame>,
    }

    impl Transport for Channels {
        async fn recv(&mut self) -> Result<Option<Frame>> {
            Ok(self.from_peer.recv().await)
        }

        async fn send(&mut self, items: &[Outbound]) -> Result<()> {
            for item in items {
                if let Outbound::Frame(f) = item {
                    let _ = self.to_peer.send((**f).clone());
                }
            }
            Ok(())
        }

        async fn close(&mut self, _: crate::engine::transport::Closing) {}
    }

    #[tokio::test]
    async fn heartbeats_run_on_the_shared_timer_and_leave_nothing_behind() {
        let hub = Arc::new(Hub::builder().build());
        let (peer_tx, from_peer) = mpsc::channel(8);
        let (to_peer, mut peer_rx) = mpsc::unbounded_channel();
        let config = ConnectionConfig {
            timers: Timers {
                write_idle: Duration::from_millis(60),
                read_idle: Duration::from_secs(30),
                max_pong_timeout: 3,
                bind_timeout: Duration::from_secs(5),
            },
            ..ConnectionConfig::default()
        };
        let task = tokio::spawn(serve_connection(
            Arc::clone(&hub),
            Channels { from_peer, to_peer },
            config,
            ([127, 0, 0, 1], 9).into(),
        ));
        peer_tx
            .send(Frame::Sent(
                SentBody::new(key::CLIENT_BIND).with(crate::protocol::bind::UID, "u1"),
            ))
            .await
            .unwrap();
        assert!(matches!(peer_rx.recv().await, Some(Frame::Reply(r)) if r.code == code::OK));
        // Two PINGs, each after write_idle of silence: the deadline is set again after each.
        for _ in 0..2 {
            let t = Instant::now();
            assert_eq!(peer_rx.recv().await, Some(Frame::Ping));
            assert!(
                t.elapsed() >= Duration::from_millis(50),
                "{:?}",
                t.elapsed()
            );
        }
        assert_eq!(hub.deadlines.len(), 1, "one entry per connection");
        drop(peer_tx);
        task.await.unwrap();
        assert_eq!(
            hub.deadlines.len(),
            0,
            "a closed connection leaves no deadline"
        );
        assert_eq!(hub.live.len(), 0);
    }
}
