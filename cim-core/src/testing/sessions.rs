//! The conformance suite of [`SessionManager`] and [`Router`]: every implementation — one node
//! in memory, several nodes sharing a cluster — runs [`conformance`] and so behaves the same.
//!
//! The suite is given the nodes of one system (one for the in-memory manager, two or three for a
//! cluster). It binds connections on the first node and pushes, kicks, tags and lists from the
//! last, so on a cluster every check crosses nodes. Deliveries may arrive asynchronously (a
//! cluster routes through a node's inbox): queues are polled for a bounded time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::{
    CimKickPolicy, CloseRequest, ConnId, ConnectionHandle, MessageStore, Outbound,
    OutboundReceiver, Page, Router, SessionManager, SharedMessage,
};
use crate::{EcoString, Message, Session};

/// One node of the system under test.
#[derive(Clone)]
pub struct Node {
    /// Its name: the `node` of the sessions bound on it.
    pub name: String,
    /// Its session manager.
    pub sessions: Arc<dyn SessionManager>,
    /// Its router.
    pub router: Arc<dyn Router>,
    /// The message store (shared by every node of a cluster).
    pub store: Arc<dyn MessageStore>,
}

impl Node {
    /// A single node in memory: `sessions` with a [`LocalRouter`](crate::engine::LocalRouter)
    /// over it and a [`MemoryStore`](crate::engine::MemoryStore).
    pub fn local(name: &str, sessions: Arc<dyn SessionManager>) -> Node {
        let store: Arc<dyn MessageStore> = Arc::new(crate::engine::MemoryStore::default());
        Node {
            name: name.to_owned(),
            router: Arc::new(crate::engine::LocalRouter::new(
                Arc::clone(&sessions),
                Some(Arc::clone(&store)),
            )),
            sessions,
            store,
        }
    }
}

/// How long a delivery may take to show up in a queue.
const WAIT: Duration = Duration::from_secs(5);

static IDS: AtomicI64 = AtomicI64::new(1);
static CONNS: AtomicU64 = AtomicU64::new(1);

fn session(node: &Node, nid: u64, uid: &str, channel: &str, device: &str) -> Arc<Session> {
    Arc::new(Session {
        nid,
        node: node.name.as_str().into(),
        uid: uid.into(),
        channel: channel.into(),
        device_id: device.into(),
        device_name: ecow::eco_format!("{device}-name"),
        ..Session::default()
    })
}

/// A connection on `node` bound as `uid`, with a queue of `capacity`.
async fn bind_with(
    node: &Node,
    uid: &str,
    channel: &str,
    device: &str,
    capacity: usize,
    client_ack: bool,
) -> (Arc<Session>, OutboundReceiver) {
    let nid = CONNS.fetch_add(1, Ordering::Relaxed);
    let (h, rx) = ConnectionHandle::new(ConnId(nid), capacity);
    let mut s = Session::clone(&session(node, nid, uid, channel, device));
    s.client_ack = client_ack;
    let s = Arc::new(s);
    node.sessions
        .bind(Arc::clone(&s), h, &CimKickPolicy)
        .await
        .unwrap();
    (s, rx)
}

async fn bind(
    node: &Node,
    uid: &str,
    channel: &str,
    device: &str,
) -> (Arc<Session>, OutboundReceiver) {
    bind_with(node, uid, channel, device, 64, false).await
}

fn msg(to: &str, content: &str) -> Arc<SharedMessage> {
    Arc::new(SharedMessage::new(Message {
        id: IDS.fetch_add(1, Ordering::Relaxed),
        receiver: to.into(),
        content: content.into(),
        timestamp: crate::now_ms(),
        ..Message::default()
    }))
}

fn describe(o: &Outbound) -> String {
    match o {
        Outbound::Message(m) => m.message().content.clone(),
        Outbound::Frame(f) => format!("{:?}", f.frame_type()),
    }
}

/// What is queued on `rx` now, and its close request.
fn drained(rx: &OutboundReceiver) -> (Vec<String>, Option<CloseRequest>) {
    let mut out = Vec::new();
    let close = rx.drain(&mut out, usize::MAX);
    (out.iter().map(describe).collect(), close)
}

/// Waits until `rx` has had `n` items (and a close request, if `closed`), then a moment more to
/// see that nothing else comes; returns them.
async fn expect(
    rx: &OutboundReceiver,
    n: usize,
    closed: bool,
) -> (Vec<String>, Option<CloseRequest>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut close = None;
    loop {
        let (items, c) = drained(rx);
        got.extend(items);
        close = close.or(c);
        if got.len() >= n && (close.is_some() || !closed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {n} items (closed: {closed}), got {got:?} {close:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (items, c) = drained(rx);
    got.extend(items);
    (got, close.or(c))
}

/// Waits until `check` holds, or fails with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs every check on fresh systems from `make`, which returns the nodes of one system (at
/// least one). Panics on the first failure.
pub async fn conformance<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<Node>>,
{
    push_reaches_every_connection_of_the_account(&make().await).await;
    unbind_forgets(&make().await).await;
    kick_rule(&make().await).await;
    rebind_replaces(&make().await).await;
    tags(&make().await).await;
    broadcast_and_count(&make().await).await;
    online_pages(&make().await).await;
    kick_account(&make().await).await;
    offline_and_full_queues_are_stored(&make().await).await;
    receipts_store_first(&make().await).await;
    boundary_and_undelivered(&make().await).await;
}

/// The node that binds, and the node that acts on what it bound.
fn ends(nodes: &[Node]) -> (&Node, &Node) {
    match (nodes.first(), nodes.last()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("a system has at least one node"),
    }
}

async fn push_reaches_every_connection_of_the_account(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let (_s1, r1) = bind(a, "a", "android", "p").await;
    let (_s2, r2) = bind(b, "a", "web", "b").await;
    let (_s3, r3) = bind(a, "b", "android", "p").await;
    let sent = b.router.send(msg("a", "for a")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (2, false));
    assert_eq!(expect(&r1, 1, false).await.0, ["for a"]);
    assert_eq!(expect(&r2, 1, false).await.0, ["for a"]);
    assert!(drained(&r3).0.is_empty());
    let mut seen: Vec<(EcoString, EcoString)> = b
        .sessions
        .sessions("a")
        .await
        .unwrap()
        .iter()
        .map(|s| (s.node.clone(), s.channel.clone()))
        .collect();
    seen.sort();
    let mut want = vec![
        (a.name.as_str().into(), "android".into()),
        (b.name.as_str().into(), "web".into()),
    ];
    want.sort();
    assert_eq!(seen, want);
}

async fn unbind_forgets(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let (s, _r) = bind(a, "a", "android", "p").await;
    a.sessions.unbind(&s).await.unwrap();
    a.sessions.unbind(&s).await.unwrap();
    assert!(b.sessions.sessions("a").await.unwrap().is_empty());
    let sent = b.router.send(msg("a", "x")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (0, true));
    assert_eq!(b.sessions.count().await.unwrap(), 0);
    // A late unbind of an older session never removes a newer one of the same connection id on
    // another node.
    if nodes.len() > 1 {
        let (s1, _r1) = bind(a, "u", "android", "p").await;
        let mut twin = Session::clone(&s1);
        twin.node = b.name.as_str().into();
        b.sessions.unbind(&twin).await.unwrap();
        assert_eq!(b.sessions.sessions("u").await.unwrap().len(), 1);
    }
}

async fn kick_rule(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    // Another device on a conflicting channel: kicked, with the notice, then closed.
    let (first, r1) = bind(a, "k", "android", "one").await;
    let nid = CONNS.fetch_add(1, Ordering::Relaxed);
    let (h2, r2) = ConnectionHandle::new(ConnId(nid), 8);
    let out = b
        .sessions
        .bind(session(b, nid, "k", "ios", "two"), h2, &CimKickPolicy)
        .await
        .unwrap();
    assert_eq!(
        out.kicked.iter().map(|s| s.nid).collect::<Vec<_>>(),
        [first.nid]
    );
    assert!(out.closed.is_empty());
    let (queued, close) = expect(&r1, 1, true).await;
    assert_eq!(queued, ["two-name"]);
    assert_eq!(close, Some(CloseRequest::Kicked));
    // The same device again, on the other node: closed silently.
    let nid3 = CONNS.fetch_add(1, Ordering::Relaxed);
    let (h3, _r3) = ConnectionHandle::new(ConnId(nid3), 8);
    let out = a
        .sessions
        .bind(session(a, nid3, "k", "ios", "two"), h3, &CimKickPolicy)
        .await
        .unwrap();
    assert_eq!(out.closed.iter().map(|s| s.nid).collect::<Vec<_>>(), [nid]);
    let (queued, close) = expect(&r2, 0, true).await;
    assert!(queued.is_empty(), "{queued:?}");
    assert_eq!(close, Some(CloseRequest::Kicked));
    // A non-conflicting channel stays; web tabs of one device stay.
    let (_s4, r4) = bind(b, "k", "web", "pc").await;
    let (_s5, r5) = bind(a, "k", "web", "pc").await;
    let sent = b.router.send(msg("k", "all")).await.unwrap();
    assert_eq!(sent.delivered, 3);
    assert_eq!(expect(&r4, 1, false).await.0, ["all"]);
    assert_eq!(expect(&r5, 1, false).await.0, ["all"]);
}

async fn rebind_replaces(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let nid = CONNS.fetch_add(1, Ordering::Relaxed);
    let (h1, r1) = ConnectionHandle::new(ConnId(nid), 8);
    let s = session(a, nid, "r", "android", "p");
    a.sessions
        .bind(Arc::clone(&s), h1.clone(), &CimKickPolicy)
        .await
        .unwrap();
    let out = a.sessions.bind(s, h1, &CimKickPolicy).await.unwrap();
    assert!(out.kicked.is_empty() && out.closed.is_empty());
    assert_eq!(b.sessions.sessions("r").await.unwrap().len(), 1);
    assert_eq!(b.router.send(msg("r", "once")).await.unwrap().delivered, 1);
    assert_eq!(expect(&r1, 1, false).await, (vec!["once".to_owned()], None));
}

async fn tags(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let (s1, r1) = bind(a, "t1", "android", "p").await;
    let (s2, r2) = bind(b, "t2", "android", "p").await;
    a.sessions.set_tag(&s1, "g").await.unwrap();
    a.sessions.set_tag(&s1, "g").await.unwrap();
    b.sessions.set_tag(&s2, "g").await.unwrap();
    assert_eq!(
        b.router
            .send_tag("g", msg("", "g1"))
            .await
            .unwrap()
            .delivered,
        2
    );
    b.sessions.remove_tag(&s2, "g").await.unwrap();
    assert_eq!(
        b.router
            .send_tag("g", msg("", "g2"))
            .await
            .unwrap()
            .delivered,
        1
    );
    a.sessions.unbind(&s1).await.unwrap();
    let sent = b.router.send_tag("g", msg("", "g3")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (0, false));
    assert_eq!(expect(&r1, 2, false).await.0, ["g1", "g2"]);
    assert_eq!(expect(&r2, 1, false).await.0, ["g1"]);
}

async fn broadcast_and_count(nodes: &[Node]) {
    let (_, b) = ends(nodes);
    let mut rxs = Vec::new();
    for i in 1..=6usize {
        let node = nodes.get(i % nodes.len()).unwrap_or(b);
        rxs.push(bind(node, &format!("u{i}"), "android", "p").await.1);
    }
    assert_eq!(b.sessions.count().await.unwrap(), 6);
    let sent = b.router.broadcast(msg("", "all")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (6, false));
    for r in &rxs {
        assert_eq!(expect(r, 1, false).await.0, ["all"]);
    }
}

async fn online_pages(nodes: &[Node]) {
    let (_, b) = ends(nodes);
    let mut keep = Vec::new();
    for i in 1..=7usize {
        let ch = if i % 2 == 0 { "web" } else { "android" };
        let node = nodes.get(i % nodes.len()).unwrap_or(b);
        keep.push(bind(node, &format!("o{i}"), ch, "p").await);
    }
    // Ordered by node, then connection id.
    let mut order: Vec<(EcoString, u64)> =
        keep.iter().map(|(s, _)| (s.node.clone(), s.nid)).collect();
    order.sort();
    let page = |offset, limit| Page {
        offset,
        limit,
        ..Page::default()
    };
    let key = |s: &Session| (s.node.clone(), s.nid);
    let p = b.sessions.online(&page(0, 3)).await.unwrap();
    assert_eq!(p.total, 7);
    assert_eq!(p.sessions.iter().map(key).collect::<Vec<_>>(), order[..3]);
    let p = b.sessions.online(&page(6, 3)).await.unwrap();
    assert_eq!(p.sessions.iter().map(key).collect::<Vec<_>>(), order[6..]);
    let p = b
        .sessions
        .online(&Page {
            channel: Some("web".into()),
            limit: 10,
            ..Page::default()
        })
        .await
        .unwrap();
    assert_eq!((p.total, p.sessions.len()), (3, 3));
    let p = b
        .sessions
        .online(&Page {
            uid: Some("o5".into()),
            limit: 10,
            ..Page::default()
        })
        .await
        .unwrap();
    assert_eq!(
        p.sessions
            .iter()
            .map(|s| s.uid.as_str())
            .collect::<Vec<_>>(),
        ["o5"]
    );
}

async fn kick_account(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let (_s1, r1) = bind(a, "x", "android", "p").await;
    let (_s2, r2) = bind(b, "x", "web", "b").await;
    assert_eq!(b.sessions.kick("x").await.unwrap(), 2);
    assert_eq!(b.sessions.kick("x").await.unwrap(), 0);
    assert!(a.sessions.sessions("x").await.unwrap().is_empty());
    for r in [&r1, &r2] {
        let (queued, close) = expect(r, 1, true).await;
        assert_eq!(queued, [crate::engine::OPERATOR]);
        assert_eq!(close, Some(CloseRequest::KickedByOperator));
    }
}

async fn offline_and_full_queues_are_stored(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    // Nobody online: stored.
    let sent = b.router.send(msg("off", "kept")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (0, true));
    assert_eq!(b.store.count("off").await.unwrap(), 1);
    // A queue that is full refuses: the message is stored, wherever the queue is.
    let (_s, r1) = bind_with(a, "f", "android", "p", 2, false).await;
    for _ in 0..2 {
        b.router.send(msg("f", "fits")).await.unwrap();
    }
    let before = b.store.count("f").await.unwrap();
    b.router.send(msg("f", "overflows")).await.unwrap();
    eventually("the refused message is stored", || async {
        b.store.count("f").await.unwrap() > before
    })
    .await;
    let stored = b.store.pending("f", 0, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|s| s.message.content.as_str())
            .collect::<Vec<_>>(),
        ["overflows"]
    );
    let (queued, close) = expect(&r1, 2, true).await;
    assert_eq!(queued, ["fits", "fits"]);
    assert_eq!(close, Some(CloseRequest::Overflow));
}

async fn receipts_store_first(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    let (_p, rp) = bind(a, "plain", "android", "p").await;
    let sent = b.router.send(msg("plain", "now")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (1, false));
    assert_eq!(expect(&rp, 1, false).await.0, ["now"]);
    assert_eq!(b.store.count("plain").await.unwrap(), 0);
    // One connection of the account acknowledges messages: stored first, and pushed to all.
    let (_s2, r2) = bind(a, "acks", "android", "p").await;
    let (_s3, r3) = bind_with(b, "acks", "web", "b", 64, true).await;
    assert!(b.sessions.wants_receipts("acks").await.unwrap());
    let sent = b.router.send(msg("acks", "held")).await.unwrap();
    assert_eq!((sent.delivered, sent.stored), (2, true));
    assert_eq!(b.store.count("acks").await.unwrap(), 1);
    assert_eq!(expect(&r2, 1, false).await.0, ["held"]);
    assert_eq!(expect(&r3, 1, false).await.0, ["held"]);
}

async fn boundary_and_undelivered(nodes: &[Node]) {
    let (a, b) = ends(nodes);
    assert_eq!(a.router.replay_boundary("nothing").await.unwrap(), 0);
    for i in 0..3 {
        b.router.send(msg("bd", &format!("m{i}"))).await.unwrap();
    }
    let last = b.store.last_seq("bd").await.unwrap();
    let (s, _r) = bind(a, "bd", "android", "p").await;
    assert_eq!(a.router.replay_boundary("bd").await.unwrap(), last);
    // Not written by a live connection (too large for its listener): kept, as no other
    // connection of the account took it.
    b.store.clear("bd").await.unwrap();
    let kept = a
        .router
        .keep_undelivered(&s, vec![msg("bd", "too large here")])
        .await
        .unwrap();
    assert_eq!(kept, 1);
    b.store.clear("bd").await.unwrap();
    // Still queued when the connection ended: kept while nobody else is live...
    a.sessions.unbind(&s).await.unwrap();
    let kept = a
        .router
        .keep_undelivered(&s, vec![msg("bd", "left")])
        .await
        .unwrap();
    assert_eq!(kept, 1);
    assert_eq!(b.store.count("bd").await.unwrap(), 1);
    // ...and not while another connection of the account is live (it got them).
    let (_other, _ro) = bind(b, "bd", "web", "w").await;
    let kept = a
        .router
        .keep_undelivered(&s, vec![msg("bd", "seen")])
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert_eq!(b.store.count("bd").await.unwrap(), 1);
}
