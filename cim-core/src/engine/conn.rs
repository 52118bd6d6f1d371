//! [`ConnectionHandle`]: the only way anything but a connection's own task reaches it, through
//! a bounded outbound queue.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::task::{Context, Poll, Waker};

#[cfg(unix)]
use crate::engine::park::Resume;
use crate::engine::shared::SharedMessage;
use crate::frame::Frame;

/// A connection's id, unique within its node (CIM's `nid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hands out connection ids.
#[derive(Debug, Default)]
pub(crate) struct ConnIds(AtomicU64);

impl ConnIds {
    pub(crate) fn next(&self) -> ConnId {
        ConnId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Something queued for a connection to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame for this connection alone, encoded by its codec.
    Frame(Box<Frame>),
    /// A pushed message that may go to many connections: each codec encodes it once.
    Message(Arc<SharedMessage>),
}

/// What [`OutboundReceiver::drain_batch`] did.
pub(crate) struct Drained {
    /// The close request, if one is pending and every item before it has been taken.
    pub(crate) close: Option<CloseRequest>,
    /// Whether the queue is empty now.
    pub(crate) emptied: bool,
    /// Whether it overflowed under [`SlowConsumer::Keep`] and refuses pushes (known only once
    /// `emptied`: `false` before).
    pub(crate) overflowed: bool,
}

/// Why a push to a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The outbound queue is full: the reader is too slow. The connection is being closed.
    #[error("outbound queue full")]
    Full,
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
}

/// Why a connection was asked to close by someone other than its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseRequest {
    /// Its account bound elsewhere and the kick policy closed this one.
    Kicked,
    /// An operator kicked its account (the HTTP API, a handler).
    KickedByOperator,
    /// Its queue overflowed (slow consumer).
    Overflow,
    /// An operator or the API closed it.
    Closed(String),
    /// The server is shutting down.
    Shutdown,
}

impl fmt::Display for CloseRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseRequest::Kicked => f.write_str("kicked by a newer bind"),
            CloseRequest::KickedByOperator => f.write_str("kicked by an operator"),
            CloseRequest::Overflow => f.write_str("outbound queue overflow (slow consumer)"),
            CloseRequest::Closed(why) => write!(f, "closed: {why}"),
            CloseRequest::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// What a full outbound queue does to its connection. In configuration: `"close"` or `"keep"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum SlowConsumer {
    /// Close it (after writing what is queued). Messages that did not fit are stored, when the
    /// server has a store, and delivered on the next bind.
    #[default]
    Close,
    /// Keep it: refuse pushes (which are then stored) until the queue is written out, then
    /// deliver what was stored, in order. Without a store, refused messages are lost.
    Keep,
}

impl std::str::FromStr for SlowConsumer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "close" => Ok(SlowConsumer::Close),
            "keep" => Ok(SlowConsumer::Keep),
            other => Err(format!("{other:?}: expected one of close, keep")),
        }
    }
}

impl TryFrom<String> for SlowConsumer {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// Set once: after the queued items are written, the connection closes. (Boxed: every
    /// connection holds a queue, few ever close with a reason.)
    close: Option<Box<CloseRequest>>,
    /// The queue filled under [`SlowConsumer::Keep`]: pushes are refused until the connection
    /// has caught up.
    overflowed: bool,
    /// The socket woke the parking thread while the parked state was out of the queue (being
    /// written to): the event found nothing to resume, and the state is to look at its
    /// socket's readiness afresh when it is held again. (Input is rare while a connection is
    /// written to parked, so a write need not ask the kernel each time.)
    #[cfg(unix)]
    stirred: bool,
    /// Whom a push wakes: the connection's task, waiting for something to write (one consumer,
    /// so one waker), or the connection's state while it is parked.
    waiter: Waiter,
}

/// Whom a queue wakes.
#[derive(Default)]
enum Waiter {
    #[default]
    Nobody,
    /// The connection's task.
    Task(Waker),
    /// The connection's state while it is parked (`park.rs`): waking it resumes it.
    #[cfg(unix)]
    Parked(Box<dyn Resume>),
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("items", &self.items.len())
            .field("close", &self.close)
            .field("overflowed", &self.overflowed)
            .finish_non_exhaustive()
    }
}

/// Wakes the connection's task, if it waits, or resumes the parked connection, after releasing
/// the lock.
fn wake(mut st: MutexGuard<'_, State>) {
    let waiter = std::mem::take(&mut st.waiter);
    drop(st);
    match waiter {
        Waiter::Nobody => {}
        Waiter::Task(w) => w.wake(),
        #[cfg(unix)]
        Waiter::Parked(p) => p.wake(),
    }
}

#[derive(Debug)]
struct Queue {
    id: ConnId,
    state: Mutex<State>,
    /// A heartbeat deadline passed: the connection's task runs its heartbeat. (Beside the lock,
    /// not under it: the task checks it on every wake-up, and it is rarely set.)
    due: AtomicBool,
    capacity: u32,
    policy: SlowConsumer,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::engine::locks::lock(&self.state)
    }
}

/// A cheap, cloneable handle to one connection's outbound queue.
///
/// Pushing never waits: a full queue fails at once with [`PushError::Full`] and the connection
/// is closed, so a slow reader never stalls whoever pushes to it. The queue allocates nothing
/// while empty.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    /// The id lives in the queue: a handle is one pointer, and registries hold many.
    queue: Arc<Queue>,
}

impl ConnectionHandle {
    /// A handle and the receiving end for the connection's task. `capacity` bounds the queue
    /// (at least 1); a full queue closes the connection.
    pub fn new(id: ConnId, capacity: usize) -> (ConnectionHandle, OutboundReceiver) {
        Self::with_policy(id, capacity, SlowConsumer::Close)
    }

    /// Like [`new`](Self::new), with `policy` for a full queue.
    pub fn with_policy(
        id: ConnId,
        capacity: usize,
        policy: SlowConsumer,
    ) -> (ConnectionHandle, OutboundReceiver) {
        let queue = Arc::new(Queue {
            id,
            state: Mutex::new(State::default()),
            due: AtomicBool::new(false),
            capacity: u32::try_from(capacity.max(1)).unwrap_or(u32::MAX),
            policy,
        });
        (
            ConnectionHandle {
                queue: Arc::clone(&queue),
            },
            OutboundReceiver { queue },
        )
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.queue.id
    }

    /// Queues `item`. On a full queue the connection is marked for closing
    /// ([`CloseRequest::Overflow`]) and the item is handed back to the caller with the error,
    /// so nothing is lost silently.
    pub fn push(&self, item: Outbound) -> Result<(), (PushError, Outbound)> {
        let mut st = self.queue.lock();
        if st.close.is_some() {
            return Err((PushError::Closed, item));
        }
        if st.overflowed {
            return Err((PushError::Full, item));
        }
        if st.items.len() >= self.queue.capacity as usize {
            match self.queue.policy {
                SlowConsumer::Close => st.close = Some(Box::new(CloseRequest::Overflow)),
                SlowConsumer::Keep => st.overflowed = true,
            }
            wake(st);
            return Err((PushError::Full, item));
        }
        let was_empty = st.items.is_empty();
        st.items.push_back(item);
        // The task only waits on an empty queue: a queue that had items has woken it already.
        if was_empty {
            wake(st);
        }
        Ok(())
    }

    /// Queues a frame for this connection alone.
    pub fn push_frame(&self, frame: Frame) -> Result<(), PushError> {
        self.push(Outbound::Frame(Box::new(frame)))
            .map_err(|(e, _)| e)
    }

    /// Asks the connection to close once everything queued before this call is written.
    /// The first request wins; later ones are ignored.
    pub fn close(&self, why: CloseRequest) {
        let mut st = self.queue.lock();
        if st.close.is_none() {
            st.close = Some(Box::new(why));
        }
        wake(st);
    }

    /// Tells the connection's task that a heartbeat deadline passed.
    pub(crate) fn poke(&self) {
        // Set before the lock is taken: a task that then finds no waker to take has not yet
        // looked, and will see it.
        self.queue.due.store(true, Ordering::Release);
        wake(self.queue.lock());
    }

    /// Holds the parked connection's state (see `park.rs`), once `watch` has had its socket
    /// watched, unless something already waits for it (an item, a close request, a deadline):
    /// then, or if `watch` fails, the state is handed back. Both under the queue's lock, so
    /// that whatever resumes the connection, from the queue or from its socket, finds it.
    #[cfg(unix)]
    pub(crate) fn hold_parked<R: Resume>(
        &self,
        entry: Box<R>,
        watch: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), Box<R>> {
        self.hold(entry, true, watch)
    }

    /// Holds the parked connection's state again after a write from it, like
    /// [`hold_parked`](Self::hold_parked); its socket, still watched, is watched afresh
    /// (`rewatch`, which looks at its readiness again) only if it woke the parking thread
    /// meanwhile ([`socket_woke`](Self::socket_woke)): input that came during the write is
    /// then not missed, and a write that none came during costs no system call.
    #[cfg(unix)]
    pub(crate) fn hold_parked_again<R: Resume>(
        &self,
        entry: Box<R>,
        rewatch: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), Box<R>> {
        self.hold(entry, false, rewatch)
    }

    #[cfg(unix)]
    fn hold<R: Resume>(
        &self,
        entry: Box<R>,
        always: bool,
        watch: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), Box<R>> {
        let mut st = self.queue.lock();
        let pending = !st.items.is_empty()
            || st.close.is_some()
            || st.overflowed
            || self.queue.due.load(Ordering::Acquire);
        if pending || matches!(st.waiter, Waiter::Parked(_)) {
            return Err(entry);
        }
        if (always || st.stirred) && watch().is_err() {
            return Err(entry);
        }
        st.stirred = false;
        // The task that parked has ended: nothing is left to wake but the parked state.
        st.waiter = Waiter::Parked(entry);
        Ok(())
    }

    /// Takes the parked connection's state, for the runtime went away.
    #[cfg(unix)]
    pub(crate) fn take_parked(&self) -> Option<Box<dyn Resume>> {
        self.take(false)
    }

    /// Takes the parked connection's state, for its socket woke it. Not held (it is being
    /// written to): remembered, for [`hold_parked_again`](Self::hold_parked_again).
    #[cfg(unix)]
    pub(crate) fn socket_woke(&self) -> Option<Box<dyn Resume>> {
        self.take(true)
    }

    #[cfg(unix)]
    fn take(&self, socket_woke: bool) -> Option<Box<dyn Resume>> {
        let mut st = self.queue.lock();
        match std::mem::take(&mut st.waiter) {
            Waiter::Parked(p) => Some(p),
            other => {
                st.waiter = other;
                st.stirred |= socket_woke;
                None
            }
        }
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.queue.lock().close.is_some()
    }

    /// Number of items waiting to be written.
    pub fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }
}

/// The receiving end of a connection's queue, owned by its task.
#[derive(Debug)]
pub struct OutboundReceiver {
    queue: Arc<Queue>,
}

impl OutboundReceiver {
    /// Waits until something is queued, a close is requested or a heartbeat deadline passed
    /// ([`take_due`](Self::take_due)). Cancel-safe, and holds no
    /// state of its own while it waits (the waker is kept in the queue).
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_ready(cx))
    }

    /// [`ready`](Self::ready) as a poll function.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.queue.lock();
        if !st.items.is_empty() || st.close.is_some() || self.queue.due.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // (Never parked here: the parked state holds this receiver.)
        match &st.waiter {
            Waiter::Task(w) if w.will_wake(cx.waker()) => {}
            _ => st.waiter = Waiter::Task(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether nothing but items waits: no close request, no heartbeat deadline, no overflow.
    #[cfg(unix)]
    pub(crate) fn holds_only_items(&self) -> bool {
        let st = self.queue.lock();
        st.close.is_none() && !st.overflowed && !self.queue.due.load(Ordering::Acquire)
    }

    /// Whether items are queued.
    #[cfg(unix)]
    pub(crate) fn has_items(&self) -> bool {
        !self.queue.lock().items.is_empty()
    }

    /// Whether a heartbeat deadline passed, without taking it.
    #[cfg(unix)]
    pub(crate) fn is_due(&self) -> bool {
        self.queue.due.load(Ordering::Acquire)
    }

    /// Whether a heartbeat deadline passed since the last call.
    pub fn take_due(&self) -> bool {
        self.queue.due.load(Ordering::Relaxed) && self.queue.due.swap(false, Ordering::AcqRel)
    }

    /// Moves up to `max` queued items into `out` and returns the close request, if one is
    /// pending and every item before it has been taken.
    pub fn drain(&self, out: &mut Vec<Outbound>, max: usize) -> Option<CloseRequest> {
        self.drain_batch(out, max).close
    }

    /// [`drain`](Self::drain), also saying whether it left the queue empty.
    pub(crate) fn drain_batch(&self, out: &mut Vec<Outbound>, max: usize) -> Drained {
        let mut st = self.queue.lock();
        let n = st.items.len().min(max);
        out.extend(st.items.drain(..n));
        if !st.items.is_empty() {
            return Drained {
                close: None,
                emptied: false,
                overflowed: false,
            };
        }
        // Release the ring buffer of a queue that grew for a burst.
        if st.items.capacity() > 64 {
            st.items = VecDeque::new();
        }
        Drained {
            close: st.close.as_deref().cloned(),
            emptied: true,
            overflowed: st.overflowed,
        }
    }

    /// Whether the queue overflowed under [`SlowConsumer::Keep`] and refuses pushes.
    pub fn overflowed(&self) -> bool {
        self.queue.lock().overflowed
    }

    /// If the queue overflowed under [`SlowConsumer::Keep`] and has been written out, takes
    /// pushes again and returns `true`: the caller then delivers what was stored meanwhile.
    pub fn recover_overflow(&self) -> bool {
        let mut st = self.queue.lock();
        if st.overflowed && st.items.is_empty() {
            st.overflowed = false;
            true
        } else {
            false
        }
    }

    /// Closes the queue for good (the connection ended): later pushes fail with
    /// [`PushError::Closed`]. Returns what was still queued, so the caller can account for it.
    pub fn shut(&self, why: CloseRequest) -> Vec<Outbound> {
        let mut st = self.queue.lock();
        if st.close.is_none() {
            st.close = Some(Box::new(why));
        }
        st.items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle is one pointer (registries and the timer hold many); the queue behind it is
    /// the lock, the ring buffer, the close request boxed, the waker or the parked state (one
    /// at a time), the flag, an id and a `u32` capacity: 96 bytes, allocated once per connection
    /// (112 with the `Arc`'s counts, an allocator class of its own).
    #[test]
    fn a_handle_is_one_pointer_and_a_queue_96_bytes() {
        assert_eq!(std::mem::size_of::<ConnectionHandle>(), 8);
        assert_eq!(std::mem::size_of::<Queue>(), 96);
    }

    #[test]
    fn full_queue_refuses_and_marks_overflow() {
        let (h, rx) = ConnectionHandle::new(ConnId(1), 2);
        h.push_frame(Frame::Ping).unwrap();
        h.push_frame(Frame::Ping).unwrap();
        assert_eq!(h.push_frame(Frame::Ping), Err(PushError::Full));
        assert!(h.is_closed());
        let mut out = Vec::new();
        // The two accepted items come out, then the overflow.
        assert_eq!(rx.drain(&mut out, 10), Some(CloseRequest::Overflow));
        assert_eq!(out.len(), 2);
        assert_eq!(h.push_frame(Frame::Ping), Err(PushError::Closed));
    }

    #[test]
    fn close_comes_after_queued_items() {
        let (h, rx) = ConnectionHandle::new(ConnId(1), 8);
        for _ in 0..3 {
            h.push_frame(Frame::Ping).unwrap();
        }
        h.close(CloseRequest::Kicked);
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 2), None);
        assert_eq!(rx.drain(&mut out, 2), Some(CloseRequest::Kicked));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn keep_policy_refuses_until_written_out() {
        let (h, rx) = ConnectionHandle::with_policy(ConnId(1), 2, SlowConsumer::Keep);
        h.push_frame(Frame::Ping).unwrap();
        h.push_frame(Frame::Ping).unwrap();
        assert_eq!(h.push_frame(Frame::Ping), Err(PushError::Full));
        assert!(!h.is_closed());
        let mut out = Vec::new();
        assert_eq!(rx.drain(&mut out, 1), None);
        // Room again, but still refused until everything queued is out.
        assert_eq!(h.push_frame(Frame::Ping), Err(PushError::Full));
        assert!(!rx.recover_overflow());
        assert_eq!(rx.drain(&mut out, 1), None);
        assert!(rx.recover_overflow());
        assert!(!rx.recover_overflow());
        h.push_frame(Frame::Ping).unwrap();
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let (h, rx) = ConnectionHandle::new(ConnId(1), 8);
        let waiter = tokio::spawn(async move {
            rx.ready().await;
            let mut out = Vec::new();
            rx.drain(&mut out, 8);
            out.len()
        });
        tokio::task::yield_now().await;
        h.push_frame(Frame::Pong).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }

    /// A parked state the tests hold.
    #[cfg(unix)]
    struct Held(Arc<crate::engine::hub::Hub>);

    #[cfg(unix)]
    impl Resume for Held {
        fn fd(&self) -> std::os::fd::RawFd {
            -1
        }
        fn hub(&self) -> &Arc<crate::engine::hub::Hub> {
            &self.0
        }
        fn resume(self: Box<Self>, _: Option<Box<crate::engine::driver::Rest>>) {}
        fn wake(self: Box<Self>) {}
        fn write_queued(
            self: Box<Self>,
            _: &crate::engine::park::Parker,
        ) -> crate::engine::park::Written {
            crate::engine::park::Written::Parked(ConnId(0))
        }
    }

    /// A parked state is held only when nothing waits for the connection's task: not with an
    /// item queued, a close requested, a deadline passed or an overflow to recover from.
    #[cfg(unix)]
    #[test]
    fn a_parked_state_is_held_only_when_nothing_waits() {
        let hub = Arc::new(crate::engine::hub::Hub::builder().build());
        let held = || Box::new(Held(Arc::clone(&hub)));
        let (h, _rx) = ConnectionHandle::new(ConnId(1), 4);
        h.push_frame(Frame::Ping).unwrap();
        assert!(h.hold_parked(held(), || Ok(())).is_err(), "an item");
        let (h, _rx) = ConnectionHandle::new(ConnId(2), 4);
        h.close(CloseRequest::Shutdown);
        assert!(h.hold_parked(held(), || Ok(())).is_err(), "a close");
        let (h, _rx) = ConnectionHandle::new(ConnId(3), 4);
        h.poke();
        assert!(h.hold_parked(held(), || Ok(())).is_err(), "a deadline");
        let (h, rx) = ConnectionHandle::with_policy(ConnId(4), 1, SlowConsumer::Keep);
        h.push_frame(Frame::Ping).unwrap();
        assert!(h.push_frame(Frame::Ping).is_err());
        rx.drain(&mut Vec::new(), 8);
        assert!(h.hold_parked(held(), || Ok(())).is_err(), "an overflow");
        let (h, _rx) = ConnectionHandle::new(ConnId(5), 4);
        let failed = std::io::Error::other("cannot watch");
        assert!(h.hold_parked(held(), || Err(failed)).is_err(), "unwatched");
        assert!(h.hold_parked(held(), || Ok(())).is_ok());
        assert!(h.hold_parked(held(), || Ok(())).is_err(), "held once");
        assert!(h.take_parked().is_some());
        assert!(h.take_parked().is_none());
    }

    /// Held again after a write from it, a parked state has its socket watched afresh only if
    /// the socket woke the parking thread meanwhile (finding nothing to take); held anew, it
    /// always has.
    #[cfg(unix)]
    #[test]
    fn a_parked_state_held_again_rewatches_only_a_socket_that_woke() {
        let hub = Arc::new(crate::engine::hub::Hub::builder().build());
        let held = || Box::new(Held(Arc::clone(&hub)));
        let (h, _rx) = ConnectionHandle::new(ConnId(1), 4);
        let watched = std::cell::Cell::new(0);
        let watch = || {
            watched.set(watched.get() + 1);
            Ok(())
        };
        assert!(h.hold_parked(held(), watch).is_ok());
        assert_eq!(watched.get(), 1, "parked: watched");
        // Taken out to be written to; held again with no event meanwhile: not watched again.
        assert!(h.take_parked().is_some());
        assert!(h.hold_parked_again(held(), watch).is_ok());
        assert_eq!(watched.get(), 1, "no event during the write");
        // Taken out again; its socket wakes the thread, which finds nothing to take.
        assert!(h.take_parked().is_some());
        assert!(h.socket_woke().is_none());
        assert!(h.hold_parked_again(held(), watch).is_ok());
        assert_eq!(
            watched.get(),
            2,
            "an event during the write: watched afresh"
        );
        // Once: the next write without an event costs nothing.
        assert!(h.take_parked().is_some());
        assert!(h.hold_parked_again(held(), watch).is_ok());
        assert_eq!(watched.get(), 2);
        // A socket that wakes the thread while the state is held hands it over.
        assert!(h.socket_woke().is_some());
        // A failed rewatch hands the state back, to be resumed.
        assert!(h.socket_woke().is_none());
        let failed = || Err(std::io::Error::other("cannot watch"));
        assert!(h.hold_parked_again(held(), failed).is_err());
    }
}
