//! [`Registry`]: every live connection of a node, bound or not, so that a shutdown reaches each
//! through its queue (a connection then needs no shutdown waiter of its own).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::engine::conn::{CloseRequest, ConnId, ConnectionHandle};
use crate::engine::locks::lock;

const SHARDS: usize = 16;

pub(crate) struct Registry {
    shards: Box<[Mutex<HashMap<ConnId, ConnectionHandle>>]>,
    closing: AtomicBool,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            closing: AtomicBool::new(false),
        }
    }
}

impl Registry {
    #[allow(clippy::indexing_slicing)] // reduced modulo the (non-zero) length
    fn shard(&self, id: ConnId) -> MutexGuard<'_, HashMap<ConnId, ConnectionHandle>> {
        let i = (id.0 as usize) % self.shards.len();
        lock(&self.shards[i])
    }

    /// Registers a new connection. After [`close_all`](Self::close_all) it is asked to close
    /// at once.
    pub(crate) fn insert(&self, handle: &ConnectionHandle) {
        self.shard(handle.id()).insert(handle.id(), handle.clone());
        // Set before `close_all` walks the shards: either the walk finds this connection, or
        // this load sees the flag.
        if self.closing.load(Ordering::SeqCst) {
            handle.close(CloseRequest::Shutdown);
        }
    }

    /// Every live connection.
    pub(crate) fn handles(&self) -> Vec<ConnectionHandle> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(lock(shard).values().cloned());
        }
        all
    }

    /// The live connection `id`.
    #[cfg(unix)]
    pub(crate) fn get(&self, id: ConnId) -> Option<ConnectionHandle> {
        self.shard(id).get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: ConnId) {
        self.shard(id).remove(&id);
    }

    /// Asks every connection, now and later, to write what is queued and close.
    pub(crate) fn close_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for h in self.handles() {
            h.close(CloseRequest::Shutdown);
        }
    }

    /// Asks every connection accepted from now on to close at once, and returns the live ones,
    /// for the caller to close at its own pace (a drain).
    pub(crate) fn begin_drain(&self) -> Vec<ConnectionHandle> {
        self.closing.store(true, Ordering::SeqCst);
        let mut all = self.handles();
        // Oldest first: connection ids grow.
        all.sort_by_key(ConnectionHandle::id);
        all
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_all_reaches_present_and_later_connections() {
        let r = Registry::default();
        let (a, _ra) = ConnectionHandle::new(ConnId(1), 4);
        let (b, _rb) = ConnectionHandle::new(ConnId(2), 4);
        r.insert(&a);
        r.insert(&b);
        r.remove(ConnId(2));
        assert_eq!(r.len(), 1);
        r.close_all();
        assert!(a.is_closed() && !b.is_closed());
        let (c, _rc) = ConnectionHandle::new(ConnId(3), 4);
        r.insert(&c);
        assert!(
            c.is_closed(),
            "a connection that arrives during the shutdown closes"
        );
    }

    #[test]
    fn a_drain_hands_out_the_live_connections_and_closes_later_ones() {
        let r = Registry::default();
        let (a, _ra) = ConnectionHandle::new(ConnId(7), 4);
        let (b, _rb) = ConnectionHandle::new(ConnId(3), 4);
        r.insert(&a);
        r.insert(&b);
        let live = r.begin_drain();
        assert_eq!(
            live.iter().map(ConnectionHandle::id).collect::<Vec<_>>(),
            [ConnId(3), ConnId(7)]
        );
        assert!(!a.is_closed() && !b.is_closed(), "the caller closes them");
        let (c, _rc) = ConnectionHandle::new(ConnId(9), 4);
        r.insert(&c);
        assert!(
            c.is_closed(),
            "a connection that arrives during a drain closes"
        );
    }
}
