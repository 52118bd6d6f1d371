//! The conformance suite of [`SessionManager`]: every implementation (in memory, on Redis)
//! runs [`conformance`] and so behaves the same.

use std::sync::Arc;

use crate::engine::{
    CloseRequest, ConnId, ConnectionHandle, Outbound, OutboundReceiver, Page, SessionManager,
    SharedMessage,
};
use crate::{Message, Session};

fn session(nid: u64, uid: &str, channel: &str, device: &str) -> Arc<Session> {
    Arc::new(Session {
        nid,
        uid: uid.into(),
        channel: channel.into(),
        device_id: device.into(),
        device_name: format!("{device}-name"),
        ..Session::default()
    })
}

fn conn(nid: u64, capacity: usize) -> (ConnectionHandle, OutboundReceiver) {
    ConnectionHandle::new(ConnId(nid), capacity)
}

fn msg(to: &str, content: &str) -> Arc<SharedMessage> {
    Arc::new(SharedMessage::new(Message {
        receiver: to.into(),
        content: content.into(),
        ..Message::default()
    }))
}

/// Contents of the messages queued on `rx`, and its close request.
fn drained(rx: &OutboundReceiver) -> (Vec<String>, Option<CloseRequest>) {
    let mut out = Vec::new();
    let close = rx.drain(&mut out, usize::MAX);
    let contents = out
        .iter()
        .map(|o| match o {
            Outbound::Message(m) => m.message().content.clone(),
            Outbound::Frame(f) => format!("{:?}", f.frame_type()),
        })
        .collect();
    (contents, close)
}

/// Runs every check on fresh managers from `make`. Panics on the first failure.
pub async fn conformance<M, F>(make: F)
where
    M: SessionManager,
    F: Fn() -> M,
{
    push_reaches_every_connection_of_the_account(&make()).await;
    unbind_forgets(&make()).await;
    kick_rule(&make()).await;
    rebind_replaces(&make()).await;
    tags(&make()).await;
    broadcast_and_count(&make()).await;
    online_pages(&make()).await;
    kick_account(&make()).await;
    full_queue_counts_as_failed(&make()).await;
    receipts_hold_back_a_push(&make()).await;
}

async fn push_reaches_every_connection_of_the_account(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 8);
    let (h2, r2) = conn(2, 8);
    let (h3, r3) = conn(3, 8);
    m.bind(session(1, "a", "android", "p"), h1).await.unwrap();
    m.bind(session(2, "a", "web", "b"), h2).await.unwrap();
    m.bind(session(3, "b", "android", "p"), h3).await.unwrap();
    let d = m.push(msg("a", "for a")).await.unwrap();
    assert_eq!((d.delivered, d.failed), (2, 0));
    assert_eq!(drained(&r1).0, ["for a"]);
    assert_eq!(drained(&r2).0, ["for a"]);
    assert!(drained(&r3).0.is_empty());
    assert_eq!(m.push(msg("nobody", "x")).await.unwrap().delivered, 0);
    let mut nids: Vec<u64> = m
        .sessions("a")
        .await
        .unwrap()
        .iter()
        .map(|s| s.nid)
        .collect();
    nids.sort_unstable();
    assert_eq!(nids, [1, 2]);
}

async fn unbind_forgets(m: &impl SessionManager) {
    let (h1, _r1) = conn(1, 8);
    let s = session(1, "a", "android", "p");
    m.bind(s.clone(), h1).await.unwrap();
    m.unbind(&s).await.unwrap();
    m.unbind(&s).await.unwrap();
    assert!(m.sessions("a").await.unwrap().is_empty());
    assert_eq!(m.push(msg("a", "x")).await.unwrap().delivered, 0);
    assert_eq!(m.count().await.unwrap(), 0);
}

async fn kick_rule(m: &impl SessionManager) {
    // Another device on a conflicting channel: kicked, with the notice, then closed.
    let (h1, r1) = conn(1, 8);
    m.bind(session(1, "k", "android", "one"), h1).await.unwrap();
    let (h2, r2) = conn(2, 8);
    let out = m.bind(session(2, "k", "ios", "two"), h2).await.unwrap();
    assert_eq!(out.kicked.iter().map(|s| s.nid).collect::<Vec<_>>(), [1]);
    assert!(out.closed.is_empty());
    let (queued, close) = drained(&r1);
    assert_eq!(queued, ["two-name"]);
    assert_eq!(close, Some(CloseRequest::Kicked));
    // The same device again: closed silently.
    let (h3, _r3) = conn(3, 8);
    let out = m.bind(session(3, "k", "ios", "two"), h3).await.unwrap();
    assert_eq!(out.closed.iter().map(|s| s.nid).collect::<Vec<_>>(), [2]);
    let (queued, close) = drained(&r2);
    assert!(queued.is_empty());
    assert_eq!(close, Some(CloseRequest::Kicked));
    // A non-conflicting channel stays.
    let (h4, r4) = conn(4, 8);
    let out = m.bind(session(4, "k", "web", "pc"), h4).await.unwrap();
    assert!(out.kicked.is_empty() && out.closed.is_empty());
    assert_eq!(m.push(msg("k", "both")).await.unwrap().delivered, 2);
    assert_eq!(drained(&r4).0, ["both"]);
}

async fn rebind_replaces(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 8);
    m.bind(session(1, "r", "android", "p"), h1.clone())
        .await
        .unwrap();
    let out = m.bind(session(1, "r", "android", "p"), h1).await.unwrap();
    assert!(out.kicked.is_empty() && out.closed.is_empty());
    assert_eq!(m.sessions("r").await.unwrap().len(), 1);
    assert_eq!(m.push(msg("r", "once")).await.unwrap().delivered, 1);
    assert_eq!(drained(&r1), (vec!["once".to_owned()], None));
}

async fn tags(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 8);
    let (h2, r2) = conn(2, 8);
    let s1 = session(1, "t1", "android", "p");
    let s2 = session(2, "t2", "android", "p");
    m.bind(s1.clone(), h1).await.unwrap();
    m.bind(s2.clone(), h2).await.unwrap();
    m.set_tag(&s1, "g").await.unwrap();
    m.set_tag(&s1, "g").await.unwrap();
    m.set_tag(&s2, "g").await.unwrap();
    assert_eq!(m.push_tag("g", msg("", "g1")).await.unwrap().delivered, 2);
    m.remove_tag(&s2, "g").await.unwrap();
    assert_eq!(m.push_tag("g", msg("", "g2")).await.unwrap().delivered, 1);
    m.unbind(&s1).await.unwrap();
    assert_eq!(m.push_tag("g", msg("", "g3")).await.unwrap().delivered, 0);
    assert_eq!(drained(&r1).0, ["g1", "g2"]);
    assert_eq!(drained(&r2).0, ["g1"]);
}

async fn broadcast_and_count(m: &impl SessionManager) {
    let mut rxs = Vec::new();
    for i in 1..=5u64 {
        let (h, r) = conn(i, 8);
        m.bind(session(i, &format!("u{i}"), "android", "p"), h)
            .await
            .unwrap();
        rxs.push(r);
    }
    assert_eq!(m.count().await.unwrap(), 5);
    assert_eq!(m.broadcast(msg("", "all")).await.unwrap().delivered, 5);
    for r in &rxs {
        assert_eq!(drained(r).0, ["all"]);
    }
}

async fn online_pages(m: &impl SessionManager) {
    let mut keep = Vec::new();
    for i in 1..=7u64 {
        let (h, r) = conn(i, 8);
        let ch = if i % 2 == 0 { "web" } else { "android" };
        m.bind(session(i, &format!("o{i}"), ch, "p"), h)
            .await
            .unwrap();
        keep.push(r);
    }
    let page = |offset, limit| Page {
        offset,
        limit,
        ..Page::default()
    };
    let p = m.online(&page(0, 3)).await.unwrap();
    assert_eq!(p.total, 7);
    assert_eq!(
        p.sessions.iter().map(|s| s.nid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let p = m.online(&page(6, 3)).await.unwrap();
    assert_eq!(p.sessions.iter().map(|s| s.nid).collect::<Vec<_>>(), [7]);
    let p = m
        .online(&Page {
            channel: Some("web".into()),
            limit: 10,
            ..Page::default()
        })
        .await
        .unwrap();
    assert_eq!((p.total, p.sessions.len()), (3, 3));
    let p = m
        .online(&Page {
            uid: Some("o5".into()),
            limit: 10,
            ..Page::default()
        })
        .await
        .unwrap();
    assert_eq!(p.sessions.iter().map(|s| s.nid).collect::<Vec<_>>(), [5]);
}

async fn kick_account(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 8);
    let (h2, r2) = conn(2, 8);
    m.bind(session(1, "x", "android", "p"), h1).await.unwrap();
    m.bind(session(2, "x", "web", "b"), h2).await.unwrap();
    assert_eq!(m.kick("x").await.unwrap(), 2);
    assert_eq!(m.kick("x").await.unwrap(), 0);
    assert!(m.sessions("x").await.unwrap().is_empty());
    for r in [&r1, &r2] {
        let (queued, close) = drained(r);
        assert_eq!(queued.len(), 1);
        assert_eq!(close, Some(CloseRequest::Kicked));
    }
}

async fn full_queue_counts_as_failed(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 2);
    m.bind(session(1, "f", "android", "p"), h1).await.unwrap();
    for _ in 0..2 {
        assert_eq!(m.push(msg("f", "fits")).await.unwrap().delivered, 1);
    }
    let d = m.push(msg("f", "overflows")).await.unwrap();
    assert_eq!((d.delivered, d.failed), (0, 1));
    assert_eq!(
        drained(&r1),
        (vec!["fits".to_owned(); 2], Some(CloseRequest::Overflow))
    );
}

async fn receipts_hold_back_a_push(m: &impl SessionManager) {
    let (h1, r1) = conn(1, 8);
    m.bind(session(1, "plain", "android", "p"), h1)
        .await
        .unwrap();
    assert!(!m.wants_receipts("plain").await.unwrap());
    let d = m.push_unless_receipts(msg("plain", "now")).await.unwrap();
    assert_eq!(d.map(|d| d.delivered), Some(1));
    assert_eq!(drained(&r1).0, ["now"]);

    // One connection of the account acknowledges messages: nothing is pushed to any.
    let (h2, r2) = conn(2, 8);
    let (h3, r3) = conn(3, 8);
    m.bind(session(2, "acks", "android", "p"), h2)
        .await
        .unwrap();
    let mut acking = Session::clone(&session(3, "acks", "web", "b"));
    acking.client_ack = true;
    m.bind(Arc::new(acking), h3).await.unwrap();
    assert!(m.wants_receipts("acks").await.unwrap());
    assert_eq!(
        m.push_unless_receipts(msg("acks", "held")).await.unwrap(),
        None
    );
    assert!(drained(&r2).0.is_empty() && drained(&r3).0.is_empty());
    // Nobody online: an empty delivery, not a refusal.
    let d = m.push_unless_receipts(msg("nobody", "x")).await.unwrap();
    assert_eq!(d.map(|d| d.delivered), Some(0));
}
