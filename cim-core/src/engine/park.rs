//! [`Parker`]: idle connections without a task.
//!
//! A connection's task, with its runtime registration, is most of what an idle connection
//! costs (640 + 256 bytes for a TCP one, against some 300 for the state it keeps). So a
//! connection that has been idle for its listener's `park_after` gives both up: its task moves
//! its state into a box held here, its transport gives up its registration
//! ([`Transport::park`](crate::engine::Transport::park)), and its socket is watched by one
//! `epoll` (`kqueue`) set of the node's, itself watched by one task. Anything that would have
//! woken the task resumes the connection in a new one: input or a hang-up on the socket, a push
//! or a close request in its queue, its heartbeat's deadline (which reaches it through the
//! queue too). Resuming costs a spawn and two registrations; it happens at most once per
//! `park_after` of idleness.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::engine::conn::{ConnId, ConnectionHandle};
use crate::engine::locks::lock;

/// Readiness events taken from the set at once.
const EVENTS: usize = 256;

/// The token of the set's own waker (connection ids start at 1 and never reach it).
const WAKE: Token = Token(usize::MAX);

/// A parked connection: its state, and how to start its task again.
pub(crate) trait Resume: Send + 'static {
    /// The socket watched while parked.
    fn fd(&self) -> RawFd;
    /// Registers the socket with the runtime again and spawns the connection's task. Called
    /// inside the runtime's context.
    fn resume(self: Box<Self>);
}

/// The parked connections of a node, and the set that watches their sockets (on a thread of
/// its own, which resumes them in the runtime that last parked one).
pub(crate) struct Parker {
    registry: Registry,
    /// Wakes the watching thread: a queue woke a connection, or the parker is gone.
    wake: mio::Waker,
    parked: Mutex<HashMap<ConnId, Box<dyn Resume>>>,
    /// Parked connections whose queue woke them (a push, a close, a deadline).
    woken: Mutex<Vec<ConnId>>,
    runtime: Mutex<Option<Handle>>,
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
            parked: Mutex::default(),
            woken: Mutex::default(),
            runtime: Mutex::new(None),
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
        lock(&self.parked).len()
    }

    /// Parks `entry`, the connection `handle`'s, watching its socket and its queue; hands it
    /// back when it cannot be parked (its socket could not be watched). Called by the
    /// connection's task, inside the runtime, after its queue was last found empty: anything
    /// queued since resumes it at once.
    pub(crate) fn park<R: Resume>(
        self: &Arc<Self>,
        handle: &ConnectionHandle,
        entry: Box<R>,
    ) -> Result<(), Box<R>> {
        let id = handle.id();
        let Ok(token) = usize::try_from(id.0) else {
            return Err(entry);
        };
        if Token(token) == WAKE {
            return Err(entry);
        }
        if let Ok(rt) = Handle::try_current() {
            *lock(&self.runtime) = Some(rt);
        }
        let fd = entry.fd();
        // Held until the entry is in and the queue's waker set, so that a wake-up, which takes
        // the entry out under this lock, always finds it.
        let mut parked = lock(&self.parked);
        let watched = self
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE);
        if let Err(e) = watched {
            drop(parked);
            warn!(conn = id.0, error = %e, "cannot watch a socket for parking");
            return Err(entry);
        }
        parked.insert(id, entry);
        self.gauge.increment(1.0);
        let pending = handle.park_waker(Waker::from(Arc::new(QueueWake {
            id,
            parker: Arc::downgrade(self),
        })));
        drop(parked);
        if pending {
            self.woke(id);
        }
        Ok(())
    }

    /// A queue woke the parked connection `id`.
    fn woke(&self, id: ConnId) {
        let mut woken = lock(&self.woken);
        let first = woken.is_empty();
        woken.push(id);
        drop(woken);
        // The thread takes every id at once: one wake-up per batch.
        if first && let Err(e) = self.wake.wake() {
            warn!(error = %e, "cannot wake the parking thread");
        }
    }

    /// Resumes the parked connection `id`, if it is still parked.
    fn resume(&self, id: ConnId) {
        let Some(entry) = lock(&self.parked).remove(&id) else {
            return;
        };
        self.gauge.decrement(1.0);
        // Before the runtime registers it: one set watches a socket at a time.
        let _ = self.registry.deregister(&mut SourceFd(&entry.fd()));
        entry.resume();
    }
}

/// What a parked connection's queue wakes: its parker, with the connection's id.
struct QueueWake {
    id: ConnId,
    parker: Weak<Parker>,
}

impl Wake for QueueWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(parker) = self.parker.upgrade() {
            parker.woke(self.id);
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
        let mut ready = std::mem::take(&mut *lock(&p.woken));
        ready.extend(
            events
                .iter()
                .filter(|e| e.token() != WAKE)
                .map(|e| ConnId(e.token().0 as u64)),
        );
        if ready.is_empty() {
            continue;
        }
        let Some(rt) = lock(&p.runtime).clone() else {
            continue;
        };
        let _entered = rt.enter();
        for id in ready {
            p.resume(id);
        }
    }
}
