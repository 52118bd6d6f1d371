//! [`Parker`]: idle connections without a task.
//!
//! A connection's task, with its runtime registration, is most of what an idle connection
//! costs (a 512-byte task cell and 256 bytes of registration for a TCP one, against some 300
//! for the state it keeps). So a connection that has just bound, or has been idle for its
//! listener's `park_after`, gives both up: its task moves its state into a box held in its own
//! queue, its transport gives up its registration
//! ([`Transport::park`](crate::engine::Transport::park)), and its socket is watched by an
//! `epoll` (`kqueue`) set of the node's, on a thread of its own. What would have woken the task
//! resumes the connection in a new one: input or a hang-up on the socket (the thread finds the
//! queue through the node's live set), a close request in its queue, a heartbeat that closes
//! it. Resuming costs a spawn and two registrations. Its heartbeat's deadline reaches it
//! through the queue too, and a PING is written from the parked state like a push. A
//! push to a connection that has idled for its `park_after` does not resume it: what was queued
//! is written straight from the parked state (by this thread, or for a fan-out by tasks of the
//! runtime, which resume the connections that need it), and the connection is resumed only if
//! its socket does not take it all at once. A push to one that has read or written within
//! `park_after` (one just bound, one pushed to a moment ago) resumes it: a task serves a busy
//! connection better.
//!
//! Parked connections end with the node's shutdown like any other. A runtime dropped without
//! it drops its parked connections' states too (closing their sockets), as it drops tasks.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::engine::conn::{ConnId, ConnectionHandle};
use crate::engine::driver::Rest;
use crate::engine::hub::Hub;
use crate::engine::locks::lock;

/// Readiness events taken from the set at once.
const EVENTS: usize = 256;

/// Parked connections the thread writes to itself when their queues woke them; more at once
/// (a fan-out) are written by tasks of the runtime, this many a task.
const WRITES_HERE: usize = 64;

/// The token of the set's own waker (connection ids start at 1 and never reach it).
const WAKE: Token = Token(usize::MAX);

/// A parked connection: its state, and how to start its task again. Held in the connection's
/// queue, so that whatever wakes the queue reaches it: a push to an idle one is written from it
/// ([`write_queued`](Self::write_queued)), anything else resumes it.
pub(crate) trait Resume: Send + 'static {
    /// The socket watched while parked.
    fn fd(&self) -> RawFd;
    /// Its node.
    fn hub(&self) -> &Arc<Hub>;
    /// Registers the socket with the runtime again and spawns the connection's task, which
    /// writes `rest` first. Called inside the runtime's context.
    fn resume(self: Box<Self>, rest: Option<Box<Rest>>);
    /// Its queue woke it (a push, a close request, a deadline): hands it to the parking thread
    /// ([`Parker::woke`]).
    fn wake(self: Box<Self>);
    /// Woken by its queue: writes what is queued without a task, if that is all there is to do,
    /// the connection has idled for its `park_after` (a busy one is resumed: its task writes
    /// better) and the socket takes it at once, and holds the state in its queue again, watched
    /// by `parker`; otherwise hands it back to be resumed. Called on the parking thread, or for
    /// a fan-out on a task of the runtime.
    fn write_queued(self: Box<Self>, parker: &Parker) -> Written;
}

/// What [`Resume::write_queued`] did.
pub(crate) enum Written {
    /// Wrote what was queued; connection `ConnId` is parked again.
    Parked(ConnId),
    /// The connection is to be resumed, with the rest of what it began to write.
    Resume(Box<dyn Resume>, Option<Box<Rest>>),
}

/// The parked connections of a node, and the set that watches their sockets (on a thread of
/// its own, which resumes them in the runtime that last parked one). The connections' states
/// are in their queues; the set's tokens are their ids, found in the node's live set.
pub(crate) struct Parker {
    registry: Registry,
    /// Wakes the watching thread: a queue woke a connection, or the parker is gone.
    wake: mio::Waker,
    /// Parked connections whose queue woke them.
    woken: Mutex<Vec<Box<dyn Resume>>>,
    runtime: Mutex<Option<Handle>>,
    /// The node, for the live set (set at the first park).
    hub: OnceLock<Weak<Hub>>,
    parked: AtomicUsize,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for Parker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parker")
            .field("parked", &self.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Parker {
    fn drop(&mut self) {
        // The thread finds the parker gone and ends.
        let _ = self.wake.wake();
    }
}

impl Parker {
    /// A parker with its watching thread.
    pub(crate) fn start() -> io::Result<Arc<Self>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let wake = mio::Waker::new(poll.registry(), WAKE)?;
        let parker = Arc::new(Self {
            registry,
            wake,
            woken: Mutex::default(),
            runtime: Mutex::new(None),
            hub: OnceLock::new(),
            parked: AtomicUsize::new(0),
            gauge: metrics::gauge!(crate::engine::metrics::CONNECTIONS_PARKED),
        });
        let weak = Arc::downgrade(&parker);
        std::thread::Builder::new()
            .name("cim-park".into())
            .spawn(move || watch(poll, &weak))?;
        Ok(parker)
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Parks `entry`, the connection `handle`'s: its socket watched, its state held in its
    /// queue. Hands it back when it cannot be parked: something is queued for it already, or
    /// its socket could not be watched. Called by the connection's task, inside the runtime.
    pub(crate) fn park<R: Resume>(
        self: &Arc<Self>,
        handle: &ConnectionHandle,
        entry: Box<R>,
    ) -> Result<(), Box<R>> {
        let id = handle.id();
        let Some(token) = token(id) else {
            return Err(entry);
        };
        let _ = self.hub.set(Arc::downgrade(entry.hub()));
        if !self.watch_runtime() {
            return Err(entry);
        }
        let fd = entry.fd();
        let watch = || {
            self.registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                .inspect_err(
                    |e| warn!(conn = id.0, error = %e, "cannot watch a socket for parking"),
                )
        };
        // Counted first: once held, it may be resumed (and counted out) at any moment.
        self.parked.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
        handle.hold_parked(entry, watch).inspect_err(|_| {
            self.parked.fetch_sub(1, Ordering::Relaxed);
            self.gauge.decrement(1.0);
        })
    }

    /// Watches the socket of connection `id` again, after a write while parked during which its
    /// socket woke the thread: its readiness is looked at afresh, so that input that came
    /// meanwhile (whose event found the connection's state out of its queue) is not missed.
    pub(crate) fn rewatch(&self, fd: RawFd, id: ConnId) -> io::Result<()> {
        let token = token(id).ok_or_else(|| io::Error::other("no token for this connection"))?;
        self.registry
            .reregister(&mut SourceFd(&fd), token, Interest::READABLE)
    }

    /// Records the runtime connections are resumed in, the first time (or the first since it
    /// went away), with a task that tells when it goes; `false` outside a runtime.
    fn watch_runtime(self: &Arc<Self>) -> bool {
        let mut runtime = lock(&self.runtime);
        if runtime.is_some() {
            return true;
        }
        let Ok(rt) = Handle::try_current() else {
            return false;
        };
        let sentinel = RuntimeGone(Arc::downgrade(self));
        // Never ends: it is dropped with the runtime's other tasks.
        rt.spawn(async move {
            let _sentinel = sentinel;
            std::future::pending::<()>().await;
        });
        *runtime = Some(rt);
        true
    }

    /// The runtime went away without the node's shutdown: its parked connections can no longer
    /// be resumed, and are dropped as its tasks were (their sockets closed).
    fn runtime_gone(&self) {
        *lock(&self.runtime) = None;
        let mut gone = std::mem::take(&mut *lock(&self.woken));
        if let Some(hub) = self.hub.get().and_then(Weak::upgrade) {
            gone.extend(
                hub.live
                    .handles()
                    .iter()
                    .filter_map(ConnectionHandle::take_parked),
            );
        }
        for entry in gone {
            self.release(&*entry);
        }
    }

    /// Counts a parked connection out and stops watching its socket, before it is resumed or
    /// dropped.
    fn release(&self, entry: &dyn Resume) {
        self.parked.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
        // Before the runtime registers it: one set watches a socket at a time.
        let _ = self.registry.deregister(&mut SourceFd(&entry.fd()));
    }

    /// A queue woke its parked connection.
    pub(crate) fn woke(&self, entry: Box<dyn Resume>) {
        let mut woken = lock(&self.woken);
        let first = woken.is_empty();
        woken.push(entry);
        drop(woken);
        // The thread takes every one at once: one wake-up per batch.
        if first && let Err(e) = self.wake.wake() {
            warn!(error = %e, "cannot wake the parking thread");
        }
    }

    /// Has a connection woken by its queue write what was queued, and resumes it if it has to
    /// be. A panic there (a codec's, an event listener's) ends that connection alone, as it
    /// would end its task, not the parking thread.
    fn write_queued(&self, entry: Box<dyn Resume>) {
        let written =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.write_queued(self)));
        match written {
            Ok(Written::Resume(entry, rest)) => self.resume(entry, rest),
            Ok(Written::Parked(id)) => {
                // The runtime went away meanwhile, and `runtime_gone` did not find it held.
                if lock(&self.runtime).is_none()
                    && let Some(entry) = self
                        .hub
                        .get()
                        .and_then(Weak::upgrade)
                        .and_then(|hub| hub.live.get(id))
                        .and_then(|h| h.take_parked())
                {
                    self.release(&*entry);
                }
            }
            Err(_) => {
                // Its state, socket and all, was dropped on the way out.
                warn!("a parked connection's write panicked; the connection is closed");
                self.parked.fetch_sub(1, Ordering::Relaxed);
                self.gauge.decrement(1.0);
            }
        }
    }

    /// Resumes a connection taken out of its queue.
    fn resume(&self, entry: Box<dyn Resume>, rest: Option<Box<Rest>>) {
        self.release(&*entry);
        entry.resume(rest);
    }
}

/// The set's token for connection `id`, if it has one.
fn token(id: ConnId) -> Option<Token> {
    usize::try_from(id.0).ok().map(Token).filter(|t| *t != WAKE)
}

/// Parked connections a task of the runtime writes to (a share of a fan-out). Those it has not
/// reached when it is dropped unrun (its runtime went away) are counted out as they go.
struct Share {
    parker: Arc<Parker>,
    left: std::vec::IntoIter<Box<dyn Resume>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        for entry in self.left.by_ref() {
            self.parker.release(&*entry);
        }
    }
}

/// Dropped with the runtime parked connections are resumed in.
struct RuntimeGone(Weak<Parker>);

impl Drop for RuntimeGone {
    fn drop(&mut self) {
        if let Some(parker) = self.0.upgrade() {
            parker.runtime_gone();
        }
    }
}

/// The watching thread: resumes the connections whose socket or queue woke, in the runtime
/// that last parked one. Ends when the parker is gone.
fn watch(mut poll: Poll, parker: &Weak<Parker>) {
    let mut events = Events::with_capacity(EVENTS);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() != io::ErrorKind::Interrupted {
                warn!(error = %e, "polling the parking set failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        let Some(p) = parker.upgrade() else {
            debug!("parking thread ends");
            return;
        };
        // Woken by their queues: most have only to write what was pushed.
        let woken = std::mem::take(&mut *lock(&p.woken));
        let mut ready = Vec::new();
        if let Some(hub) = p.hub.get().and_then(Weak::upgrade) {
            for event in events.iter().filter(|e| e.token() != WAKE) {
                let id = ConnId(event.token().0 as u64);
                // Not found: a wake-up from its queue took it first (and it is written to, or
                // resumed).
                if let Some(entry) = hub.live.get(id).and_then(|h| h.socket_woke()) {
                    ready.push(entry);
                }
            }
        }
        if ready.is_empty() && woken.is_empty() {
            continue;
        }
        let Some(rt) = lock(&p.runtime).clone() else {
            // The runtime is gone: dropped, as `runtime_gone` drops the others.
            for entry in ready.into_iter().chain(woken) {
                p.release(&*entry);
            }
            continue;
        };
        let _entered = rt.enter();
        if woken.len() <= WRITES_HERE {
            for entry in woken {
                p.write_queued(entry);
            }
        } else {
            // A fan-out: its writes spread over the runtime's workers, a share a task.
            let mut woken = woken.into_iter();
            loop {
                let share: Vec<_> = woken.by_ref().take(WRITES_HERE).collect();
                if share.is_empty() {
                    break;
                }
                let mut share = Share {
                    parker: Arc::clone(&p),
                    left: share.into_iter(),
                };
                rt.spawn(async move {
                    for entry in share.left.by_ref() {
                        share.parker.write_queued(entry);
                    }
                });
            }
        }
        for entry in ready {
            p.resume(entry, None);
        }
    }
}
