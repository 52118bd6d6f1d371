//! [`Cluster`]: one node's share of the cluster — its Redis connection, its identity, its own
//! connections ([`LocalSessionManager`]) — and the parts it hands to a hub.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cim_core::Session;
use cim_core::engine::{
    Dispatch, EventListener, LocalSessionManager, MessageStore, NodeAddrs, Router, SessionManager,
    SharedMessage,
};
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::inbox::{DeliveryListener, Tracker};
use crate::lua::Scripts;
use crate::metrics::ClusterMetrics;
use crate::store::{RedisStore, encode_message};
use crate::value::{array, count};

/// Messages routed by one script call at most.
pub(crate) const ROUTE_BATCH: usize = 256;
/// Route calls in flight at once from the send batcher.
const ROUTES_IN_FLIGHT: usize = 4;

/// What became of one routed message.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Routed {
    pub(crate) delivered: usize,
    pub(crate) stored: bool,
}

/// Routing that stopped at a failed script call: the messages of the calls before it were
/// routed (`routed`, in order); those of the failed call and of every later one were not.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) routed: Vec<Routed>,
    pub(crate) error: ClusterError,
}

impl From<Stopped> for ClusterError {
    fn from(s: Stopped) -> Self {
        s.error
    }
}

impl Stopped {
    /// What a routing routed, and why it stopped if it did.
    pub(crate) fn split(r: Result<Vec<Routed>, Stopped>) -> (Vec<Routed>, Option<ClusterError>) {
        match r {
            Ok(routed) => (routed, None),
            Err(s) => (s.routed, Some(s.error)),
        }
    }
}

type Pending = (Arc<SharedMessage>, oneshot::Sender<Result<Routed, String>>);

pub(crate) struct Inner {
    pub(crate) redis: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) scripts: Scripts,
    pub(crate) config: ClusterConfig,
    /// This incarnation: `<name>#<boot id>`.
    pub(crate) nid: String,
    /// This node's connections.
    pub(crate) local: LocalSessionManager,
    pub(crate) epoch: Mutex<String>,
    /// Where clients reach this node.
    pub(crate) advertised: Mutex<NodeAddrs>,
    pub(crate) tracker: Mutex<Tracker>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) epoch_losses: AtomicU64,
    /// Set when Redis lost its data: the inbox reader starts again from the beginning.
    pub(crate) reset_inbox: AtomicBool,
    pub(crate) started: AtomicBool,
    /// Out of dispatch (set by [`Dispatch::set_draining`]); kept when the node registers again.
    pub(crate) draining: AtomicBool,
    /// A sweep for dead nodes is running.
    pub(crate) sweeping: AtomicBool,
    /// The id of the last inbox entry the reader handled, as (milliseconds, sequence).
    pub(crate) handled: watch::Sender<(u64, u64)>,
    pub(crate) metrics: ClusterMetrics,
    sends: mpsc::UnboundedSender<Pending>,
}

impl Inner {
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.prefix)
    }

    pub(crate) fn inbox_key(&self, nid: &str) -> String {
        format!("{}n:{nid}:in", self.config.prefix)
    }

    /// The session id of connection `conn` of this node.
    pub(crate) fn sid(&self, conn: u64) -> String {
        format!("{}/{conn}", self.nid)
    }

    pub(crate) fn invocation<'a>(&self, s: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = s.prepare_invoke();
        inv.arg(&self.config.prefix);
        inv
    }

    pub(crate) async fn call(&self, inv: &ScriptInvocation<'_>) -> Result<Value, ClusterError> {
        let mut r = self.redis.clone();
        let v = match inv.invoke_async(&mut r).await {
            Err(e) if reconnected(&e) => inv.invoke_async(&mut r).await,
            other => other,
        };
        counted(v, &self.metrics.node_errors)
    }

    pub(crate) async fn cmd(&self, c: &redis::Cmd) -> Result<Value, ClusterError> {
        let mut r = self.redis.clone();
        let v = match c.query_async(&mut r).await {
            Err(e) if reconnected(&e) => c.query_async(&mut r).await,
            other => other,
        };
        counted(v, &self.metrics.node_errors)
    }

    /// Routes each message (with the node or session ids it must skip) in one script call per
    /// [`ROUTE_BATCH`], in order; stops at the first call that fails, saying what the calls
    /// before it routed.
    pub(crate) async fn route(
        &self,
        msgs: &[(Arc<SharedMessage>, String)],
    ) -> Result<Vec<Routed>, Stopped> {
        let mut routed = Vec::with_capacity(msgs.len());
        for chunk in msgs.chunks(ROUTE_BATCH) {
            match self.route_call(chunk).await {
                Ok(r) => routed.extend(r),
                Err(error) => return Err(Stopped { routed, error }),
            }
        }
        Ok(routed)
    }

    /// One script call routing `chunk` (at most [`ROUTE_BATCH`] messages), atomically.
    async fn route_call(
        &self,
        chunk: &[(Arc<SharedMessage>, String)],
    ) -> Result<Vec<Routed>, ClusterError> {
        let mut inv = self.invocation(&self.scripts.route);
        inv.arg(self.config.max_per_account).arg(chunk.len());
        for (m, skip) in chunk {
            inv.arg(m.message().receiver.as_str())
                .arg(encode_message(m.message()))
                .arg(skip.as_str());
        }
        let mut it = array(self.call(&inv).await?)?.into_iter();
        let mut out = Vec::with_capacity(chunk.len());
        for _ in chunk {
            let (Some(d), Some(s), Some(_dropped)) = (it.next(), it.next(), it.next()) else {
                return Err(ClusterError::Reply("route: too few results".into()));
            };
            out.push(Routed {
                delivered: count(d)?,
                stored: count(s)? > 0,
            });
        }
        Ok(out)
    }

    /// Routes one message through the batcher, which gathers concurrent sends into one script
    /// call.
    pub(crate) async fn route_one(&self, msg: Arc<SharedMessage>) -> Result<Routed, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.sends
            .send((msg, tx))
            .map_err(|_| ClusterError::Config("the cluster is shut down".into()))?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ClusterError::Reply(e)),
            Err(_) => Err(ClusterError::Config("the cluster is shut down".into())),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Starts background work, kept to be stopped at shutdown.
    pub(crate) fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(f);
        crate::inbox::lock(&self.tasks).push(handle);
    }

    /// This node's sessions, each with its tags.
    pub(crate) async fn local_sessions(&self) -> Vec<Session> {
        let page = cim_core::engine::Page {
            offset: 0,
            limit: usize::MAX,
            ..Default::default()
        };
        self.local
            .online(&page)
            .await
            .map(|p| p.sessions)
            .unwrap_or_default()
    }
}

/// Whether `e` is the connection found broken (Redis restarted, the connection killed): the
/// manager connects again, and the command is tried once more. A command whose answer was lost
/// may so run twice — for a send, a duplicate, never a loss.
pub(crate) fn reconnected(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
}

/// `v`, its error counted in `errors`.
pub(crate) fn counted(
    v: redis::RedisResult<Value>,
    errors: &metrics::Counter,
) -> Result<Value, ClusterError> {
    v.map_err(|e| {
        errors.increment(1);
        ClusterError::from(e)
    })
}

/// Gathers concurrent sends into batches, each one script call; a few batches in flight.
async fn batcher(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ROUTES_IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < ROUTE_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let (msgs, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|(m, reply)| ((m, String::new()), reply))
                .unzip();
            let (routed, failed) = Stopped::split(inner.route(&msgs).await);
            let mut replies = replies.into_iter();
            // The routed first: a zip that ran out of them takes no reply with it.
            for (r, reply) in routed.into_iter().zip(replies.by_ref()) {
                let _ = reply.send(Ok(r));
            }
            if let Some(e) = failed.map(|e| e.to_string()) {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            drop(slot);
        });
    }
}

/// One node of a cluster on Redis. Hand its parts to a hub ([`sessions`](Self::sessions),
/// [`router`](Self::router), [`store`](Self::store), [`delivery_listener`](Self::delivery_listener));
/// the hub's start registers the node and its stop deregisters it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    store: RedisStore,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nid", &self.inner.nid)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to Redis (failing when it cannot be reached) and prepares this node; it joins
    /// the cluster when the hub starts.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let (client, redis) = crate::connect(&config.redis, config.response_timeout).await?;
        let boot: String = crate::hex_id(8);
        let nid = format!("{}#{boot}", config.node);
        let store =
            RedisStore::with_connection(redis.clone(), &config.prefix, config.max_per_account);
        let (sends, rx) = mpsc::unbounded_channel();
        let advertised = config.advertised.clone();
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            redis,
            client,
            scripts: Scripts::new(),
            config,
            nid,
            local: LocalSessionManager::new(),
            epoch: Mutex::new(String::new()),
            advertised: Mutex::new(advertised),
            tracker: Mutex::new(Tracker::default()),
            tasks: Mutex::new(Vec::new()),
            stop,
            epoch_losses: AtomicU64::new(0),
            reset_inbox: AtomicBool::new(false),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
            handled: watch::channel((0, 0)).0,
            metrics: ClusterMetrics::register(),
            sends,
        });
        tokio::spawn(batcher(Arc::downgrade(&inner), rx));
        Ok(Cluster { inner, store })
    }

    /// Sets where clients reach this node (named by dispatch), before the hub starts; after, it
    /// is taken up when the node registers again.
    pub fn advertise(&self, addrs: NodeAddrs) {
        *crate::inbox::lock(&self.inner.advertised) = addrs;
    }

    /// This incarnation's id, `<name>#<boot id>`.
    pub fn nid(&self) -> &str {
        &self.inner.nid
    }

    /// The session manager: a cluster-wide registry over this node's connections.
    pub fn sessions(&self) -> Arc<dyn SessionManager> {
        Arc::new(crate::sessions::ClusterSessions::new(Arc::clone(
            &self.inner,
        )))
    }

    /// The router: one script routes to the nodes that hold the receiver, or stores.
    pub fn router(&self) -> Arc<dyn Router> {
        Arc::new(crate::router::ClusterRouter::new(Arc::clone(&self.inner)))
    }

    /// The message store every node shares.
    pub fn store(&self) -> Arc<dyn MessageStore> {
        Arc::new(self.store.clone())
    }

    /// Least-loaded dispatch among the live nodes.
    pub fn dispatch(&self) -> Arc<dyn Dispatch> {
        Arc::new(crate::dispatch::ClusterDispatch::new(Arc::clone(
            &self.inner,
        )))
    }

    /// The event listener that tells the inbox reader which routed messages reached their
    /// connections (their inbox entries are deleted then). Register it with the hub.
    pub fn delivery_listener(&self) -> Arc<dyn EventListener> {
        Arc::new(DeliveryListener::new(Arc::clone(&self.inner)))
    }

    /// How often this node found that Redis had lost its data (the epoch changed).
    pub fn epoch_losses(&self) -> u64 {
        self.inner.epoch_losses.load(Ordering::Relaxed)
    }
}
