//! The connection task: one per connection, owning its transport and its heartbeat (whose next
//! deadline waits in the node's shared timer, `deadlines.rs`). It reads frames (what it does
//! with them is `requests.rs`: requests to handlers, binds to `handover.rs`), writes replies and
//! whatever others queue for it, and cleans up. The rules live elsewhere; this is the loop and
//! the write path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::engine::conn::{CloseRequest, ConnectionHandle, Outbound, OutboundReceiver};
use crate::engine::handler::connection_span;
use crate::engine::handover::{self, Replay, Replayed};
use crate::engine::heartbeat::{Heartbeat, TimerAction};
use crate::engine::hub::Hub;
use crate::engine::metrics::Cause;
#[cfg(unix)]
use crate::engine::park::{Parker, Written};
use crate::engine::time_limit::within;
#[cfg(unix)]
use crate::engine::transport::ParkedSend;
use crate::engine::transport::{Closing, ConnectionConfig, End, Transport};
use crate::error::Error;
use crate::frame::Frame;
use crate::session::Session;

/// Items a connection's batch buffer may hold and still be kept between writes.
const KEPT_BATCH: usize = 4;

/// Wake-ups of a connection's task that look at its queue first (a push then wakes it without
/// its socket being polled); the one after them looks at the socket first, so that a
/// connection pushed to without pause still reads its peer.
const QUEUE_FIRST: u8 = 8;

/// Batches a connection writes from its queue at most before its task looks at what else woke
/// it (a full queue of the default settings: 1 024 items, batches of 256).
const FLUSH_BATCHES: usize = 4;

/// A connection's task's state: the loop and write path here, what it does with the frames it
/// reads in `requests.rs`. It outlives a task when the connection is parked (`park.rs`).
pub(super) struct Conn<T> {
    pub(super) hub: Arc<Hub>,
    pub(super) transport: T,
    pub(super) handle: ConnectionHandle,
    pub(super) session: Option<Arc<Session>>,
    pub(super) heartbeat: Heartbeat,
    pub(super) remote: Peer,
    /// What of the listener's [`ConnectionConfig`] is used after the start, shared by every
    /// connection with the same.
    pub(super) settings: &'static Settings,
    /// What is being written: drained from the queue, or the task's own frames.
    pub(super) out: Vec<Outbound>,
    /// Stored messages written during the bind hand-over (or a catching up): the same messages
    /// may also sit in the queue (pushed while the replay ran), and are skipped there once.
    /// (Boxed: a connection that never replays holds one pointer, not an empty set.)
    pub(super) replayed: Option<Box<Replayed>>,
    /// The deadline set in the node's shared timer, in milliseconds since the connection
    /// opened (see [`Heartbeat::instant`]).
    armed_ms: u64,
}

/// The settings of a listener's connections that a connection reads after its start: one copy
/// for all the connections with the same, rather than one in every connection's state (parked
/// or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) write_timeout_ms: u32,
    pub(super) max_batch: u32,
    /// Idle this long, the connection parks; 0: never.
    park_after_ms: u32,
    pub(super) protocol: &'static str,
}

impl Settings {
    /// The one copy of `self`. (Listeners have a few distinct settings at the most: each is
    /// kept for the process's life.)
    fn shared(self) -> &'static Settings {
        static ALL: std::sync::Mutex<Vec<&'static Settings>> = std::sync::Mutex::new(Vec::new());
        let mut all = crate::engine::locks::lock(&ALL);
        if let Some(found) = all.iter().find(|s| ***s == self) {
            return found;
        }
        let made: &'static Settings = Box::leak(Box::new(self));
        all.push(made);
        made
    }
}

/// A peer's address, compact: most are IPv4, and every connection keeps one.
pub(super) enum Peer {
    V4(std::net::Ipv4Addr, u16),
    V6(Box<std::net::SocketAddrV6>),
}

impl Peer {
    fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Peer::V4(*a.ip(), a.port()),
            SocketAddr::V6(a) => Peer::V6(Box::new(a)),
        }
    }

    pub(super) fn get(&self) -> SocketAddr {
        match self {
            Peer::V4(ip, port) => SocketAddr::from((*ip, *port)),
            Peer::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// Runs one connection to its end. Spawn it; it returns when the connection is closed and
/// everything about it is cleaned up (unbound, `client_closed` handled, listeners told). A
/// connection served this way is never parked: [`spawn_connection`] parks idle ones.
///
/// Logs carry the connection's id and account through a span made for the work at hand (a
/// bind, a handler's run of requests when the handler asks for it) and, with the peer's
/// address, for the end; an idle connection holds no log state.
///
/// (A plain function returning the future, rather than an `async fn`: the arguments are then
/// not kept a second time beside the future, which keeps every connection's task smaller.)
pub fn serve_connection<T: Transport>(
    hub: Arc<Hub>,
    transport: T,
    config: ConnectionConfig,
    remote: SocketAddr,
) -> impl Future<Output = ()> {
    let (conn, rx) = Conn::open(hub, transport, &config, remote, false);
    run(conn, rx, (), Start::Fresh)
}

/// Spawns the task of one connection, as [`serve_connection`] runs it, except that the
/// connection is parked when it idles for the listener's
/// [`park_after`](ConnectionConfig::park_after) and its transport [parks](Transport::parks):
/// its task ends and its state waits, much smaller, until it is resumed in a new one (what is
/// pushed to it once it has idled for `park_after` is written without resuming it, when the
/// socket takes it at once; see [`Transport::send_parked`]). `guard`
/// is dropped when the connection has ended (a connection-limit permit, say). Must be called
/// inside the runtime.
pub fn spawn_connection<T: Transport, G: Send + 'static>(
    hub: Arc<Hub>,
    transport: T,
    config: ConnectionConfig,
    remote: SocketAddr,
    guard: G,
) {
    let (conn, rx) = Conn::open(hub, transport, &config, remote, true);
    tokio::spawn(run(conn, rx, guard, Start::Fresh));
}

/// How a connection's task starts.
#[cfg_attr(not(unix), allow(dead_code))]
enum Start {
    /// A new connection.
    Fresh,
    /// A parked one, its transport registered again; with the rest of a write begun while it
    /// was parked, to be written first.
    Resumed(Option<Box<Rest>>),
    /// A parked one whose transport could not be registered again: it ends.
    Failed(std::io::Error),
}

/// The task of a connection, new or resumed: until it ends (then cleaned up, `guard` dropped)
/// or parks.
fn run<T: Transport, G: Send + 'static>(
    conn: Conn<T>,
    rx: OutboundReceiver,
    guard: G,
    start: Start,
) -> impl Future<Output = ()> + Send {
    // Built by the caller and captured as they are, so the future holds one copy of each part.
    // (Parking moves them out and, when it cannot park, back.)
    #[cfg_attr(not(unix), allow(unused_mut))]
    let (mut conn, mut rx, mut guard) = (conn, rx, guard);
    async move {
        let end = 'run: {
            match start {
                Start::Fresh => conn.start(),
                // Boxed, as the other rare work: one pointer in the task while it runs.
                Start::Resumed(rest) => {
                    if let Err(end) = Box::pin(conn.resumed(rest, &rx)).await {
                        break 'run end;
                    }
                }
                Start::Failed(e) => {
                    break 'run End::normal(Cause::ReadError, format!("resuming failed: {e}"));
                }
            }
            // Wake-ups since the socket was last looked at first.
            let mut queue_wakes: u8 = 0;
            loop {
                let socket_first = queue_wakes >= QUEUE_FIRST;
                queue_wakes = if socket_first { 0 } else { queue_wakes + 1 };
                // (In a block of its own, so that the task holds no `Woke` across the awaits
                // below: the frame is boxed, an idle connection's task stays small.)
                let read = {
                    let woke = {
                        let (rx, mut recv) = (&rx, std::pin::pin!(conn.transport.recv()));
                        std::future::poll_fn(move |cx| {
                            poll_woken(rx, recv.as_mut(), socket_first, cx)
                        })
                        .await
                    };
                    match woke {
                        Woke::Queue => None,
                        Woke::Socket(Ok(Some(frame))) => Some(frame),
                        Woke::Socket(Ok(None)) => break End::normal(Cause::Peer, "closed by peer"),
                        Woke::Socket(Err(Error::Io(e))) => {
                            break End::normal(Cause::ReadError, format!("read failed: {e}"));
                        }
                        Woke::Socket(Err(e)) => break End::protocol(e),
                    }
                };
                // Whether to park: at once when the connection has just bound (so that in a
                // storm of binds, a reconnecting fleet's, tasks do not pile up), else once it has
                // idled for `park_after`.
                let mut park = None;
                if let Some(frame) = read {
                    conn.heartbeat.on_read(Instant::now());
                    let was_bound = conn.heartbeat.is_bound();
                    // Boxed: requests (binds, handlers) are rare next to pushes, and their
                    // futures would otherwise make every idle connection's task larger.
                    if let Err(end) = Box::pin(conn.on_frames(*frame)).await {
                        break end;
                    }
                    if was_bound || !conn.heartbeat.is_bound() || conn.settings.park_after_ms == 0 {
                        continue;
                    }
                    park = Some(Idle::JustBound);
                }
                // Reads and writes only move deadlines later, and a deadline reached early finds
                // nothing due and is set again; so the shared timer is set only here.
                if rx.take_due() {
                    let now = Instant::now();
                    let action = conn.heartbeat.poll(now);
                    conn.arm(now, true);
                    if action == TimerAction::Nothing && conn.idle_enough(now) {
                        park = Some(Idle::Long);
                    }
                    match action {
                        TimerAction::Nothing => {}
                        TimerAction::Ping => {
                            conn.out.push(Outbound::Frame(Box::new(Frame::Ping)));
                            if let Err(end) = Box::pin(conn.write_out()).await {
                                break end;
                            }
                        }
                        TimerAction::Close(why) => break End::idle(why),
                    }
                    // A deadline releases the batch buffer kept between writes: a connection
                    // that does not park (a WebSocket, say) keeps none while it idles. (It
                    // holds nothing here: the replies to what it read are written by now.)
                    if conn.out.is_empty() {
                        conn.out = Vec::new();
                    }
                }
                // What is queued is mostly written at once, here; else by the write path, boxed
                // so that an idle connection's task does not carry it.
                // (`None`: nothing left; else what the socket left of a write begun at once.)
                #[cfg(unix)]
                let left = match conn.write_queued_now(&rx) {
                    AtOnce::Done => None,
                    AtOnce::Left { batches } => Some((None, batches)),
                    AtOnce::Rest { rest, batches } => Some((Some(rest), batches)),
                };
                #[cfg(not(unix))]
                let left = Some((None, FLUSH_BATCHES));
                if let Some((rest, batches)) = left
                    && let Err(end) = Box::pin(conn.flush_after(rest, &rx, batches)).await
                {
                    break end;
                }
                #[cfg(unix)]
                if let Some(idle) = park {
                    let parked = Parked {
                        conn,
                        rx,
                        guard,
                        fd: -1,
                    };
                    match parked.park(idle) {
                        Ok(()) => return,
                        Err((back, end)) => {
                            (conn, rx, guard) = (back.conn, back.rx, back.guard);
                            if let Some(end) = end {
                                break end;
                            }
                            conn.arm(Instant::now(), true);
                        }
                    }
                }
                #[cfg(not(unix))]
                let _ = park;
            }
        };
        let armed = conn.heartbeat.instant(conn.armed_ms);
        conn.hub.deadlines.clear(armed, conn.handle.id());
        conn.hub.live.remove(conn.handle.id());
        let span = conn.end_span();
        let cause = end.cause;
        Box::pin(conn.finish(end, &rx).instrument(span)).await;
        let metrics = conn.hub.services().metrics();
        metrics.closed(cause);
        metrics.connections(conn.settings.protocol).decrement(1.0);
        drop(guard);
    }
}

/// What woke a connection's task.
enum Woke {
    /// Its queue: something to write, a close request or a heartbeat deadline.
    Queue,
    /// Its socket: a frame (boxed at once: held in place across the await that handles it, it
    /// would make every idle connection's task larger by the size of a frame), the end of the
    /// stream or an error.
    Socket(crate::error::Result<Option<Box<Frame>>>),
}

/// Whether the connection's queue or its socket (`recv`, a read in progress) woke its task.
/// The queue is looked at first unless `socket_first`: a push then wakes the task without the
/// socket being polled (which would register the task with it again), and the socket is
/// looked at first once in a while, so that input is read however busy the queue. (A poll
/// function rather than a future of its own: the task holds the read in progress alone.)
fn poll_woken<F>(
    rx: &OutboundReceiver,
    recv: std::pin::Pin<&mut F>,
    socket_first: bool,
    cx: &mut std::task::Context<'_>,
) -> Poll<Woke>
where
    F: Future<Output = crate::error::Result<Option<Frame>>>,
{
    if !socket_first && rx.poll_ready(cx).is_ready() {
        return Poll::Ready(Woke::Queue);
    }
    if let Poll::Ready(frame) = recv.poll(cx) {
        return Poll::Ready(Woke::Socket(frame.map(|f| f.map(Box::new))));
    }
    if socket_first && rx.poll_ready(cx).is_ready() {
        return Poll::Ready(Woke::Queue);
    }
    Poll::Pending
}

/// What [`Conn::write_queued_now`] left for the write path.
#[cfg(unix)]
enum AtOnce {
    /// Nothing for now: the queue is written out, or [`FLUSH_BATCHES`] batches were (what is
    /// left wakes the task again, as after a turn of [`Conn::flush`]).
    Done,
    /// What is queued (and what `out` holds): for [`Conn::flush`], `batches` at most.
    Left { batches: usize },
    /// The rest of a write the socket took part of, to be written first; then as `Left`.
    Rest { rest: Box<Rest>, batches: usize },
}

/// Why a connection's task would park.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Idle {
    /// It has just bound: nothing is expected of it but what others send.
    JustBound,
    /// It has idled for its `park_after`.
    Long,
}

/// The bytes of a write begun while the connection was parked that its socket did not take at
/// once, and the items they carry (accounted for once the bytes are written): the task that
/// resumes it writes them before anything else.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) struct Rest {
    bytes: bytes::Bytes,
    items: Vec<Outbound>,
}

/// A parked connection: its task's state, held in its queue while the node's
/// [`Parker`](super::park::Parker) watches its socket.
#[cfg(unix)]
struct Parked<T, G> {
    conn: Conn<T>,
    rx: OutboundReceiver,
    guard: G,
    fd: std::os::fd::RawFd,
}

#[cfg(unix)]
impl<T: Transport, G: Send + 'static> Parked<T, G> {
    /// Parks the connection if it is still idle and its transport can: `Ok` when its task is
    /// then to end. Otherwise hands it back, with the end of the connection if parking broke
    /// its transport.
    // The connection's state comes back by value, as it went in: it is moved either way.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    fn park(mut self, idle: Idle) -> Result<(), (Self, Option<End>)> {
        let now = Instant::now();
        // A write of what was queued meanwhile counts as work: not idle yet.
        if !self.conn.out.is_empty()
            || self.conn.replayed.is_some()
            || (idle == Idle::Long && !self.conn.idle_enough(now))
        {
            return Err((self, None));
        }
        // Parked, it keeps no batch buffer.
        self.conn.out = Vec::new();
        let Some(parker) = self.conn.hub.parker().cloned() else {
            // The node cannot park: this connection stops trying.
            self.conn.settings = Settings {
                park_after_ms: 0,
                ..*self.conn.settings
            }
            .shared();
            return Err((self, None));
        };
        self.fd = match self.conn.transport.park() {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err((self, None)),
            Err(e) => {
                let end = End::normal(Cause::ReadError, format!("parking failed: {e}"));
                return Err((self, Some(end)));
            }
        };
        // Parked, it is woken by its heartbeat alone (the caller sets the park deadline again
        // if this fails).
        self.conn.arm(now, false);
        let handle = self.conn.handle.clone();
        parker.park(&handle, Box::new(self)).map_err(|mut back| {
            let end = back
                .conn
                .transport
                .unpark()
                .err()
                .map(|e| End::normal(Cause::ReadError, format!("resuming failed: {e}")));
            (*back, end)
        })
    }
}

#[cfg(unix)]
impl<T: Transport, G: Send + 'static> super::park::Resume for Parked<T, G> {
    fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.conn.hub
    }

    fn wake(self: Box<Self>) {
        match self.conn.hub.parker().cloned() {
            Some(parker) => parker.woke(self),
            // Not parked by a parker, then: resumed where it was woken.
            None => self.resume(None),
        }
    }

    fn resume(self: Box<Self>, rest: Option<Box<Rest>>) {
        let Parked {
            mut conn,
            rx,
            guard,
            ..
        } = *self;
        let start = match conn.transport.unpark() {
            Ok(()) => Start::Resumed(rest),
            Err(e) => {
                // Kept for the account as unwritten, though part may have gone.
                if let Some(rest) = rest {
                    conn.out.splice(0..0, rest.items);
                }
                Start::Failed(e)
            }
        };
        tokio::spawn(run(conn, rx, guard, start));
    }

    fn write_queued(mut self: Box<Self>, parker: &Parker) -> Written {
        let now = Instant::now();
        // Its heartbeat's deadline, polled as its task would poll it: a PING is written from
        // here like a push, a close is the task's (the deadline left for it to find). Writes
        // from here move the heartbeat's deadlines later without setting the shared timer
        // again, so a deadline may find nothing due: it is set again here.
        if self.rx.is_due() {
            match self.conn.heartbeat.poll(now) {
                TimerAction::Close(_) => return Written::Resume(self, None),
                TimerAction::Ping => self.conn.out.push(Outbound::Frame(Box::new(Frame::Ping))),
                TimerAction::Nothing => {}
            }
            self.rx.take_due();
            self.conn.arm(now, false);
        }
        // Busy (it read or wrote within `park_after`): its task would write again soon, and
        // writes it better (from the runtime's workers, a batch at a time).
        if !self.conn.idle_enough(now) && self.rx.has_items() {
            return Written::Resume(self, None);
        }
        // A few batches, for pushes that came while one was written; more resume it.
        for _ in 0..PARKED_BATCHES {
            // A close, a deadline, an overflow: the task's to handle.
            if !self.rx.holds_only_items() {
                return Written::Resume(self, None);
            }
            let conn = &mut self.conn;
            // A close requested meanwhile stays in the queue, for the task.
            let _ = self
                .rx
                .drain(&mut conn.out, conn.settings.max_batch as usize);
            if conn.out.is_empty() {
                break;
            }
            if conn.holds_uncarried() {
                // Kept for the account by the task's write path.
                return Written::Resume(self, None);
            }
            let sent = conn.transport.send_parked(&conn.out);
            // (Parked, it keeps no batch buffer: the written one is dropped.)
            if let Err(rest) = conn.sent_at_once(sent) {
                return Written::Resume(self, rest);
            }
        }
        let handle = self.conn.handle.clone();
        let fd = self.fd;
        match handle.hold_parked_again(self, || parker.rewatch(fd, handle.id())) {
            Ok(()) => Written::Parked(handle.id()),
            Err(back) => Written::Resume(back, None),
        }
    }
}

/// Batches a parked connection writes when its queue wakes it, before it is resumed to write
/// more: pushes that come while one is written are written too.
#[cfg(unix)]
const PARKED_BATCHES: usize = 4;

impl<T: Transport> Conn<T> {
    /// The connection's span (`conn{id uid}`), for the frames it handles: a bind, a handler's
    /// run of requests (when the handler asks for it, see
    /// [`RequestHandler::in_connection_span`](crate::engine::RequestHandler::in_connection_span)).
    /// Made for the work at hand, so an idle connection holds no log state; it holds what is
    /// cheap to record: the peer's address, which costs more to format than the rest of the
    /// span together, is in the connection's first and last lines ("connected", "closed").
    pub(super) fn span(&self) -> Span {
        connection_span(self.handle.id(), self.session.as_deref())
    }

    /// [`span`](Self::span) with the peer's address, for the connection's end.
    fn end_span(&self) -> Span {
        let uid = self.session.as_deref().map_or("", |s| s.uid.as_str());
        info_span!("conn", id = self.handle.id().0, peer = %self.remote.get(), uid)
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.settings.write_timeout_ms))
    }

    /// The state of a new connection, and its queue's receiving end.
    fn open(
        hub: Arc<Hub>,
        transport: T,
        config: &ConnectionConfig,
        remote: SocketAddr,
        parking: bool,
    ) -> (Self, OutboundReceiver) {
        let id = hub.conn_ids.next();
        let (handle, rx) =
            ConnectionHandle::with_policy(id, config.queue_capacity, config.slow_consumer);
        #[cfg(unix)]
        let parks = parking && transport.parks();
        #[cfg(not(unix))]
        let parks = {
            let _ = parking;
            false
        };
        let park_after_ms = if parks {
            u32::try_from(config.park_after.as_millis()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let now = Instant::now();
        let conn = Conn {
            hub,
            transport,
            handle,
            session: None,
            heartbeat: Heartbeat::new(config.timers, now),
            remote: Peer::new(remote),
            settings: Settings {
                write_timeout_ms: u32::try_from(config.write_timeout.as_millis())
                    .unwrap_or(u32::MAX),
                max_batch: u32::try_from(config.max_batch.max(1)).unwrap_or(u32::MAX),
                park_after_ms,
                protocol: config.protocol,
            }
            .shared(),
            out: Vec::new(),
            replayed: None,
            armed_ms: 0,
        };
        (conn, rx)
    }

    /// What a new connection's task does first: counted, registered for the shutdown, its
    /// timer set.
    fn start(&mut self) {
        debug!(conn = self.handle.id().0, peer = %self.remote.get(), "connected");
        // Looked up now and at the end rather than held: every connection's task would carry it.
        self.hub
            .services()
            .metrics()
            .connections(self.settings.protocol)
            .increment(1.0);
        // A shutdown reaches the connection through its queue, as a close request.
        self.hub.live.insert(&self.handle);
        self.arm(Instant::now(), true);
    }

    /// Whether the connection has idled long enough to park.
    fn idle_enough(&self, now: Instant) -> bool {
        let after = self.settings.park_after_ms;
        after > 0 && self.heartbeat.idle_for(now) >= Duration::from_millis(u64::from(after))
    }

    /// Sets the connection's next deadline in the node's shared timer (replacing the one set
    /// before, if it has not fired): the heartbeat's, or, `with_park`, the time it will have
    /// idled long enough to park, if that is sooner.
    fn arm(&mut self, now: Instant, with_park: bool) {
        let mut at = self.heartbeat.next_deadline();
        if with_park && self.settings.park_after_ms > 0 {
            let after = Duration::from_millis(u64::from(self.settings.park_after_ms));
            let idle = self.heartbeat.idle_for(now);
            // Busy when last asked (a frame half read): asked again a whole period on.
            let wait = after
                .checked_sub(idle)
                .filter(|w| !w.is_zero())
                .unwrap_or(after);
            at = at.min(now + wait);
        }
        // Kept in whole milliseconds, rounded up: never before it is due.
        let mut ms = self.heartbeat.millis_at(at);
        if self.heartbeat.instant(ms) < at {
            ms += 1;
        }
        let before = self.heartbeat.instant(self.armed_ms);
        self.hub.deadlines.clear(before, self.handle.id());
        self.hub
            .deadlines
            .set(self.heartbeat.instant(ms), &self.handle);
        self.armed_ms = ms;
    }

    /// Writes `self.out` (with the write timeout) and clears it.
    pub(super) async fn write_out(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Most writes complete at once: only one that has to wait gets a deadline.
        let stall = self.write_timeout();
        let res = within(stall, self.transport.send(&self.out)).await;
        let items = std::mem::take(&mut self.out);
        let done = self.written(res, stall, &items);
        self.keep_batch(items);
        done
    }

    /// What a resumed connection does first: writes the rest of a write begun while it was
    /// parked, and what it was resumed to write. Parked, its only deadline was its heartbeat's:
    /// now it may park again, so that is set here (or in the loop's timer branch, if it was the
    /// heartbeat that woke it).
    async fn resumed(&mut self, rest: Option<Box<Rest>>, rx: &OutboundReceiver) -> Result<(), End> {
        if let Some(rest) = rest {
            self.write_rest(*rest).await?;
        }
        #[cfg(unix)]
        if !rx.is_due() {
            self.arm(Instant::now(), true);
        }
        // (A parked write may have emptied a queue that had overflowed: its catching up is
        // the task's to see.)
        if !self.out.is_empty() || rx.overflowed() {
            self.flush(rx, FLUSH_BATCHES).await?;
        }
        Ok(())
    }

    /// Writes the rest of a write begun while the connection was parked.
    async fn write_rest(&mut self, rest: Rest) -> Result<(), End> {
        let stall = self.write_timeout();
        let res = within(stall, self.transport.send_rest(rest.bytes)).await;
        self.written(res, stall, &rest.items)
    }

    /// The outcome of a write of `items` that was given `stall`.
    fn written(
        &mut self,
        res: Result<crate::error::Result<()>, tokio::time::error::Elapsed>,
        stall: Duration,
        items: &[Outbound],
    ) -> Result<(), End> {
        match res {
            Ok(Ok(())) => {
                self.wrote(items);
                Ok(())
            }
            Ok(Err(e)) => Err(End::normal(Cause::WriteError, format!("write failed: {e}"))),
            Err(_) => Err(End::normal(
                Cause::WriteStalled,
                format!("write stalled for {stall:?} (slow reader)"),
            )),
        }
    }

    /// `items` were written: the heartbeat, the count of deliveries, the listeners told.
    fn wrote(&mut self, items: &[Outbound]) {
        self.heartbeat.on_write(Instant::now());
        // One count per write, not per message.
        let messages = items
            .iter()
            .filter(|o| matches!(o, Outbound::Message(_)))
            .count();
        if messages > 0 {
            self.hub
                .services()
                .metrics()
                .delivered
                .increment(messages as u64);
        }
        if let Some(session) = &self.session {
            self.hub.delivered(session, items);
        }
    }

    /// Writes what others queued without waiting, as [`flush`](Self::flush) would, when that
    /// is all there is to do (no close request, no replay's copies to skip, nothing the
    /// transport cannot carry, no overflow to catch up from) and the socket takes it at once:
    /// what most wake-ups of a busy connection find. The write path's future, made and boxed
    /// for each write, is then not needed; what this leaves is the write path's.
    #[cfg(unix)]
    fn write_queued_now(&mut self, rx: &OutboundReceiver) -> AtOnce {
        if self.replayed.is_some() || !self.out.is_empty() {
            return AtOnce::Left {
                batches: FLUSH_BATCHES,
            };
        }
        for done in 0..FLUSH_BATCHES {
            // Batches the write path may still write this turn, this one included.
            let batches = FLUSH_BATCHES - done;
            let drained = rx.drain_batch(&mut self.out, self.settings.max_batch as usize);
            if drained.close.is_some() || self.holds_uncarried() {
                // (Still in `out`, the write path's first batch.)
                return AtOnce::Left { batches };
            }
            if !self.out.is_empty() {
                let sent = self.transport.send_now(&self.out);
                match self.sent_at_once(sent) {
                    Ok(items) => self.keep_batch(items),
                    Err(Some(rest)) => {
                        return AtOnce::Rest {
                            rest,
                            // (At least one: a queue this emptied after an overflow is
                            // caught up from there.)
                            batches: (batches - 1).max(1),
                        };
                    }
                    Err(None) => return AtOnce::Left { batches },
                }
            }
            if drained.emptied {
                return if drained.overflowed {
                    // Caught up after an overflow: the write path's to see.
                    AtOnce::Left { batches: 1 }
                } else {
                    AtOnce::Done
                };
            }
        }
        AtOnce::Done
    }

    /// What a write of `out` at once (`sent`: the transport's `send_now` or `send_parked`)
    /// leaves: all of it written, `out`'s items (accounted for, `out` emptied); else the rest
    /// of a write the socket took part of (the items with it), or `None` when nothing was
    /// written (the items still in `out`).
    #[cfg(unix)]
    fn sent_at_once(&mut self, sent: ParkedSend) -> Result<Vec<Outbound>, Option<Box<Rest>>> {
        match sent {
            ParkedSend::Written => {
                let items = std::mem::take(&mut self.out);
                self.wrote(&items);
                Ok(items)
            }
            ParkedSend::Rest(bytes) => {
                let items = std::mem::take(&mut self.out);
                Err(Some(Box::new(Rest { bytes, items })))
            }
            ParkedSend::Unwritten => Err(None),
        }
    }

    /// Whether `out` holds a message the transport cannot carry (left for the write path,
    /// which keeps it for the account).
    #[cfg(unix)]
    fn holds_uncarried(&mut self) -> bool {
        let transport = &mut self.transport;
        self.out.iter().any(|o| match o {
            Outbound::Message(m) => !transport.can_carry(m),
            Outbound::Frame(_) => false,
        })
    }

    /// Keeps `items`' buffer, emptied, for the next write if it is small (a busy connection
    /// would allocate one per write); a larger one, left by a burst, is released, and so is any
    /// at the connection's next deadline or when it parks (`Parked::park`).
    fn keep_batch(&mut self, mut items: Vec<Outbound>) {
        items.clear();
        if items.capacity() <= KEPT_BATCH {
            self.out = items;
        }
    }

    /// Writes `rest` (what the socket left of a write begun at once), then [`flush`]es
    /// `batches` at most.
    ///
    /// [`flush`]: Self::flush
    async fn flush_after(
        &mut self,
        rest: Option<Box<Rest>>,
        rx: &OutboundReceiver,
        batches: usize,
    ) -> Result<(), End> {
        #[cfg(unix)]
        if let Some(rest) = rest {
            self.write_rest(*rest).await?;
        }
        #[cfg(not(unix))]
        let _ = rest;
        self.flush(rx, batches).await
    }

    /// Writes what others queued, a batch at a time (`max_batch` items, with what `out`
    /// already holds) and `batches` batches at most ([`FLUSH_BATCHES`] a turn of the task's
    /// loop: what is left wakes the task again at once, and its loop looks at the socket in
    /// between, so a queue that never empties does not keep the connection from reading its
    /// peer); ends the connection on a close request.
    async fn flush(&mut self, rx: &OutboundReceiver, batches: usize) -> Result<(), End> {
        for _ in 0..batches {
            let before = self.out.len();
            let room = (self.settings.max_batch as usize).saturating_sub(before);
            let drained = rx.drain_batch(&mut self.out, room);
            let taken = self.out.len() - before;
            let uncarried = handover::sort_out(
                &mut self.out,
                self.replayed.as_deref().map(|r| &r.ids),
                |m| self.transport.can_carry(m),
            );
            // Past the items queued when the replay ended, there are no copies of what it wrote.
            if let Some(r) = self.replayed.as_deref_mut() {
                r.left = r.left.saturating_sub(taken);
                if r.left == 0 || drained.emptied {
                    self.replayed = None;
                }
            }
            self.write_out().await?;
            if !uncarried.is_empty() {
                // Boxed: rare, and its future would make every write's larger.
                Box::pin(handover::keep_undelivered(
                    &self.hub,
                    self.session.as_deref(),
                    uncarried,
                ))
                .await;
            }
            if let Some(req) = drained.close {
                return Err(End::requested(&req));
            }
            if drained.emptied {
                // Caught up after an overflow: what was refused meanwhile is in the store.
                if drained.overflowed && rx.recover_overflow() {
                    Box::pin(self.replay_stored()).await?;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes the account's stored messages up to the router's boundary, oldest first, before
    /// anything pushed since (which waits in the queue until this returns): after a bind, and
    /// after catching up from an overflow. (`out` may also hold the bind's reply, written ahead
    /// of them.)
    pub(super) async fn replay_stored(&mut self) -> Result<(), End> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let Some(mut replay) = Replay::begin(self.hub.services(), &session).await else {
            return Ok(());
        };
        while let Some(batch) = replay
            .next_batch(&mut self.replayed, |m| self.transport.can_carry(m))
            .await
        {
            let written = batch.len() as u64;
            self.out.extend(batch);
            self.write_out().await?;
            replay.batch_written();
            self.hub.services().metrics().replayed.increment(written);
        }
        replay.end().await;
        if let Some(r) = self.replayed.as_deref_mut() {
            r.left = self.handle.queued();
        }
        Ok(())
    }

    /// Cleans up after the connection ended, and says why it did.
    async fn finish(&mut self, end: End, rx: &OutboundReceiver) {
        // What was taken out of the queue and not written (a connection that could not be
        // resumed to write it), ahead of what is still queued.
        let mut undelivered = std::mem::take(&mut self.out);
        undelivered.extend(rx.shut(CloseRequest::Closed(end.reason.clone())));
        handover::release(
            &self.hub,
            &self.handle,
            self.remote.get(),
            self.session.as_deref(),
            &end.reason,
            undelivered,
        )
        .await;
        let _ = timeout(Duration::from_secs(1), self.transport.close(end.closing)).await;
        match end.closing {
            Closing::ProtocolError => warn!(reason = %end.reason, "closed"),
            _ => info!(reason = %end.reason, "closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every connection keeps, parked or not: with a transport of 80 bytes (a TCP one),
    /// 232 bytes; parked, with its queue's receiver, a one-pointer guard and its socket's
    /// descriptor, 256 — an allocator class of its own, not the next one up (320).
    #[test]
    fn a_connection_is_232_bytes_and_parked_256() {
        assert_eq!(std::mem::size_of::<Conn<[u64; 10]>>(), 232);
        #[cfg(unix)]
        assert_eq!(std::mem::size_of::<Parked<[u64; 10], Arc<()>>>(), 256);
        assert_eq!(std::mem::size_of::<Peer>(), 16);
    }

    /// A transport whose peer always has a frame ready, counting how often it is read.
    #[derive(Default)]
    struct AlwaysReadable {
        reads: usize,
    }

    impl Transport for AlwaysReadable {
        async fn recv(&mut self) -> crate::error::Result<Option<Frame>> {
            self.reads += 1;
            Ok(Some(Frame::Pong))
        }

        async fn send(&mut self, _items: &[Outbound]) -> crate::error::Result<()> {
            Ok(())
        }

        async fn close(&mut self, _why: Closing) {}
    }

    async fn woken(
        rx: &OutboundReceiver,
        transport: &mut AlwaysReadable,
        socket_first: bool,
    ) -> Woke {
        let mut recv = std::pin::pin!(transport.recv());
        std::future::poll_fn(|cx| poll_woken(rx, recv.as_mut(), socket_first, cx)).await
    }

    #[tokio::test]
    async fn a_ready_queue_wakes_the_task_without_reading_unless_the_socket_is_due() {
        let (handle, rx) = ConnectionHandle::new(crate::engine::ConnId(1), 8);
        let mut transport = AlwaysReadable::default();
        // Nothing queued: the socket's frame wakes the task.
        let woke = woken(&rx, &mut transport, false).await;
        assert!(matches!(woke, Woke::Socket(Ok(Some(f))) if *f == Frame::Pong));
        assert_eq!(transport.reads, 1);
        // Something queued: the queue answers, and the socket is not read ...
        handle.push_frame(Frame::Ping).unwrap();
        assert!(matches!(
            woken(&rx, &mut transport, false).await,
            Woke::Queue
        ));
        assert_eq!(transport.reads, 1);
        // ... unless it is the socket's turn: then its frame comes first, queue or not.
        let woke = woken(&rx, &mut transport, true).await;
        assert!(matches!(woke, Woke::Socket(Ok(Some(f))) if *f == Frame::Pong));
        assert_eq!(transport.reads, 2);
        assert!(matches!(
            woken(&rx, &mut transport, false).await,
            Woke::Queue
        ));
    }

    /// A transport that records how many items each write carried, written at once
    /// (`send_now`) or by the write path (`send`); `at_once` says whether it writes at once.
    struct Recording {
        at_once: bool,
        now: Vec<usize>,
        sent: Vec<usize>,
    }

    impl Transport for Recording {
        async fn recv(&mut self) -> crate::error::Result<Option<Frame>> {
            std::future::pending().await
        }

        async fn send(&mut self, items: &[Outbound]) -> crate::error::Result<()> {
            self.sent.push(items.len());
            Ok(())
        }

        async fn close(&mut self, _why: Closing) {}

        #[cfg(unix)]
        fn send_now(&mut self, items: &[Outbound]) -> ParkedSend {
            if !self.at_once {
                return ParkedSend::Unwritten;
            }
            self.now.push(items.len());
            ParkedSend::Written
        }
    }

    /// One turn of the task's loop writes at most [`FLUSH_BATCHES`] batches of `max_batch`
    /// items, whether the transport writes at once or only by the write path (which then
    /// finds the first batch drained already and adds nothing to it).
    #[tokio::test]
    async fn a_turn_writes_at_most_its_batches_at_once_or_not() {
        for at_once in [true, false] {
            let hub = Arc::new(Hub::builder().build());
            let config = ConnectionConfig {
                max_batch: 2,
                ..ConnectionConfig::default()
            };
            let transport = Recording {
                at_once,
                now: Vec::new(),
                sent: Vec::new(),
            };
            let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let (mut conn, rx) = Conn::open(hub, transport, &config, remote, false);
            for _ in 0..20 {
                conn.handle.push_frame(Frame::Ping).unwrap();
            }
            #[cfg(unix)]
            let left = match conn.write_queued_now(&rx) {
                AtOnce::Done => None,
                AtOnce::Left { batches } => Some(batches),
                AtOnce::Rest { .. } => panic!("nothing is written in part here"),
            };
            #[cfg(not(unix))]
            let left = Some(FLUSH_BATCHES);
            if let Some(batches) = left {
                assert!(conn.flush_after(None, &rx, batches).await.is_ok());
            }
            let t = &conn.transport;
            let writes: Vec<usize> = t.now.iter().chain(&t.sent).copied().collect();
            assert_eq!(writes, vec![2; FLUSH_BATCHES], "at once: {at_once}");
            assert_eq!(
                conn.handle.queued(),
                20 - 2 * FLUSH_BATCHES,
                "the rest waits"
            );
        }
    }

    #[test]
    fn a_peer_gives_back_its_address() {
        for addr in ["127.0.0.1:23456", "[::1]:9", "[fe80::1%2]:80", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(Peer::new(addr).get(), addr);
        }
    }

    #[test]
    fn settings_are_shared() {
        let a = Settings {
            write_timeout_ms: 1,
            max_batch: 2,
            park_after_ms: 3,
            protocol: "tcp",
        };
        assert!(std::ptr::eq(a.shared(), a.shared()));
        let b = Settings {
            park_after_ms: 0,
            ..a
        };
        assert!(!std::ptr::eq(a.shared(), b.shared()));
        assert_eq!(*b.shared(), b);
    }
}
