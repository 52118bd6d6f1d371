//! The client SDK against the real server: every protocol, reconnects, stop/resume/destroy,
//! kicks, replies under concurrency, back-off, receipts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_client::{
    Backoff, BindInfo, Client, ClientConfig, ClientError, Endpoint, Event, Events, text,
};
use cim_core::engine::MessageStore;
use cim_core::{ReplyBody, RequestContext, RequestHandler, SentBody};
use cim_server::{Listener, RunningServer, Server};
use cim_store::{Durability, RedbStore, StoreOptions};
use common::*;

/// `echo`: replies with the request's data.
struct Echo;

#[async_trait]
impl RequestHandler for Echo {
    async fn handle(
        &self,
        _: &RequestContext<'_>,
        body: SentBody,
    ) -> cim_core::Result<Option<ReplyBody>> {
        let mut r = ReplyBody::ok(&body.key);
        r.data = body.data;
        Ok(Some(r))
    }
}

fn config(endpoint: &str, uid: &str) -> ClientConfig {
    let mut bind = BindInfo::new(uid);
    bind.channel = "android".into();
    bind.device_id = format!("dev-{uid}");
    let mut c = ClientConfig::new(endpoint.parse().unwrap(), bind);
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c
}

/// The next event, skipping nothing.
async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("the events ended")
}

/// The next event that matches `pred`, skipping connection noise.
async fn next_where(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("the events ended before {what}"));
        if pred(&e) {
            return e;
        }
    }
}

async fn next_message(events: &mut Events) -> cim_client::Message {
    match next_where(events, "a message", |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => m,
        _ => unreachable!(),
    }
}

/// Asserts that nothing but `allowed` events come within `d`.
async fn quiet_for(events: &mut Events, d: Duration, allowed: impl Fn(&Event) -> bool) {
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(e) = tokio::time::timeout_at(deadline, events.recv()).await {
        let e = e.expect("the events ended");
        assert!(allowed(&e), "unexpected {e:?}");
    }
}

async fn serve(addr: SocketAddr, store: Option<Arc<dyn MessageStore>>) -> RunningServer {
    let mut b = Server::builder()
        .listener(Listener::binary(addr))
        .handler("echo", Echo);
    if let Some(s) = store {
        b = b.store(s);
    }
    b.start().await.unwrap()
}

#[tokio::test]
async fn every_protocol_binds_sends_and_receives() {
    let (server, _) = start_with(
        cim_core::engine::ConnectionConfig::default(),
        cim_server::WsSettings::default(),
        |b| b,
    )
    .await;
    let endpoints = [
        format!("tcp://{}", server.addr("tcp").unwrap()),
        format!("ws://{}/", server.addr("websocket").unwrap()),
        format!("ws+json://{}/any/path", server.addr("websocket").unwrap()),
        format!("xml://{}", server.addr("xml").unwrap()),
    ];
    for (i, endpoint) in endpoints.iter().enumerate() {
        let uid = format!("proto-{i}");
        let (client, mut events) = Client::connect(config(endpoint, &uid)).await.unwrap();
        assert!(client.is_connected());
        // To itself, over the socket: the reply carries the id the message arrives with.
        let id = client
            .send_message(&uid, text(format!("over {endpoint}")))
            .await
            .unwrap();
        let m = next_message(&mut events).await;
        assert_eq!(
            (m.id, m.sender.as_str(), m.content),
            (id, uid.as_str(), format!("over {endpoint}"))
        );
        // And from the server.
        let sent = server.hub().send(message_to(&uid, "pushed")).await.unwrap();
        assert_eq!(next_message(&mut events).await.id, sent.id, "{endpoint}");
        client.destroy().await;
    }
}

#[tokio::test]
async fn reconnects_and_binds_again_after_the_server_restarts() {
    let server = serve(loopback(), None).await;
    let addr = server.addr("tcp").unwrap();
    let (client, mut events) = Client::start(config(&format!("tcp://{addr}"), "back"));
    assert_eq!(next(&mut events).await, Event::Connected { rebound: false });

    assert!(server.shutdown(Duration::from_secs(5)).await);
    assert!(matches!(next(&mut events).await, Event::Closed { .. }));
    assert!(!client.is_connected());
    // Down for a while: attempts fail and are retried.
    next_where(&mut events, "a failed attempt", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    assert!(matches!(
        client.request(SentBody::new("echo")).await,
        Err(ClientError::NotConnected)
    ));

    let server = serve(addr, None).await;
    next_where(&mut events, "the reconnect", |e| {
        *e == Event::Connected { rebound: true }
    })
    .await;
    let sessions = server.hub().sessions().sessions("back").await.unwrap();
    assert_eq!(sessions.len(), 1, "bound again on the new server");
    assert_receives_sdk(&server, &mut events, "back").await;
    client.destroy().await;
}

async fn assert_receives_sdk(server: &RunningServer, events: &mut Events, uid: &str) {
    let sent = server.hub().send(message_to(uid, "hello")).await.unwrap();
    assert_eq!(sent.delivered, 1);
    assert_eq!(next_message(events).await.id, sent.id);
}

#[tokio::test]
async fn stop_resume_and_destroy() {
    let server = serve(loopback(), None).await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let (client, mut events) = Client::connect(config(&endpoint, "srd")).await.unwrap();

    client.stop().await.unwrap();
    assert_eq!(
        next(&mut events).await,
        Event::Closed {
            reason: "stopped".into(),
            retry_in: None,
        }
    );
    assert!(!client.is_connected());
    assert!(matches!(
        client.request(SentBody::new("echo")).await,
        Err(ClientError::NotConnected)
    ));
    eventually_unbound(&server, "srd").await;
    // Stopped means stopped: no reconnect by itself.
    quiet_for(&mut events, Duration::from_millis(500), |_| false).await;
    assert!(
        server
            .hub()
            .sessions()
            .sessions("srd")
            .await
            .unwrap()
            .is_empty()
    );

    client.resume().unwrap();
    assert_eq!(next(&mut events).await, Event::Connected { rebound: true });
    let r = client
        .request(SentBody::new("echo").with("k", "v"))
        .await
        .unwrap();
    assert_eq!(r.data.get("k"), Some("v"));

    let other = client.clone();
    client.destroy().await;
    assert_eq!(
        next(&mut events).await,
        Event::Closed {
            reason: "destroyed".into(),
            retry_in: None,
        }
    );
    assert_eq!(events.recv().await, None, "the events end");
    assert!(matches!(
        other.request(SentBody::new("echo")).await,
        Err(ClientError::Destroyed)
    ));
    assert!(matches!(other.resume(), Err(ClientError::Destroyed)));
    eventually_unbound(&server, "srd").await;
}

async fn eventually_unbound(server: &RunningServer, uid: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !no_session(server, uid).await {
        assert!(tokio::time::Instant::now() < deadline, "{uid} still bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn no_reconnect_after_a_kick() {
    let server = serve(loopback(), None).await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let (first, mut first_events) = Client::connect(config(&endpoint, "kicked")).await.unwrap();
    let mut second_cfg = config(&endpoint, "kicked");
    second_cfg.bind.device_id = "another-device".into();
    second_cfg.bind.device_name = "the other phone".into();
    let (second, _second_events) = Client::connect(second_cfg).await.unwrap();

    match next(&mut first_events).await {
        Event::Kicked(m) => assert_eq!(m.content, "the other phone"),
        other => panic!("expected a kick, got {other:?}"),
    }
    assert!(matches!(
        next(&mut first_events).await,
        Event::Closed { .. }
    ));
    // The kicked client stays down (a reconnect would kick the other device in turn).
    quiet_for(&mut first_events, Duration::from_millis(500), |_| false).await;
    assert!(!first.is_connected());
    assert!(second.is_connected());
    let sessions = server.hub().sessions().sessions("kicked").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].device_id, "another-device");
    first.destroy().await;
    second.destroy().await;
}

#[tokio::test]
async fn replies_are_matched_to_requests_under_concurrency() {
    let server = serve(loopback(), None).await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let (client, _events) = Client::connect(config(&endpoint, "busy")).await.unwrap();
    let (_sink, mut sink_events) = Client::connect(config(&endpoint, "sink")).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = client
                    .request(SentBody::new("echo").with("n", i.to_string()))
                    .await
                    .unwrap();
                assert_eq!(r.data.get("n"), Some(i.to_string().as_str()));
                (i, None)
            } else {
                let id = client
                    .send_message("sink", text(i.to_string()))
                    .await
                    .unwrap();
                (i, Some(id))
            }
        }));
    }
    let mut ids = HashMap::new();
    for t in tasks {
        if let (i, Some(id)) = t.await.unwrap() {
            ids.insert(i.to_string(), id);
        }
    }
    assert_eq!(ids.len(), 100);
    // Each returned id is the id of the message with that content: no reply went to the wrong
    // request.
    for _ in 0..100 {
        let m = next_message(&mut sink_events).await;
        assert_eq!(ids.get(&m.content), Some(&m.id), "content {}", m.content);
    }
}

#[tokio::test]
async fn back_off_stays_within_its_bounds() {
    // A port nobody listens on.
    let addr = std::net::TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(&format!("tcp://{addr}"), "nobody");
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(80),
    };
    cfg.backoff = backoff;
    let (client, mut events) = Client::start(cfg);
    let mut last: Option<(tokio::time::Instant, Duration)> = None;
    let mut delays = Vec::new();
    for attempt in 0..10u32 {
        let Event::ConnectFailed { reason, retry_in } = next(&mut events).await else {
            panic!("expected a failed attempt");
        };
        let now = tokio::time::Instant::now();
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        assert!(
            retry_in <= backoff.ceiling(attempt),
            "attempt {attempt}: {retry_in:?} over {:?}",
            backoff.ceiling(attempt)
        );
        assert!(retry_in <= backoff.max);
        if let Some((at, delay)) = last {
            assert!(now - at >= delay, "retried before its delay");
        }
        last = Some((now, retry_in));
        delays.push(retry_in);
    }
    // Jittered: not all the same.
    assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    client.destroy().await;
}

#[tokio::test]
async fn connect_reports_refused_connections_and_binds() {
    let addr = std::net::TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    let e = Client::connect(config(&format!("tcp://{addr}"), "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    // A bind without a uid is refused (400); so is one the authenticator turns down.
    let server = serve(loopback(), None).await;
    let endpoint: Endpoint = format!("tcp://{}", server.addr("tcp").unwrap())
        .parse()
        .unwrap();
    let cfg = ClientConfig::new(endpoint, BindInfo::new(""));
    match Client::connect(cfg).await.unwrap_err() {
        ClientError::Refused(r) => assert_eq!(r.code, "400"),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn receipts_mean_no_redelivery_and_untaken_messages_come_again() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MessageStore> =
        Arc::new(RedbStore::open(dir.path(), StoreOptions::new(Durability::Os, 10_000)).unwrap());
    let server = serve(loopback(), Some(Arc::clone(&store))).await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let mut cfg = config(&endpoint, "acker");
    cfg.receipts = true;

    let (client, mut events) = Client::connect(cfg.clone()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let sent = server
            .hub()
            .send(message_to("acker", &format!("m{i}")))
            .await
            .unwrap();
        assert!(sent.stored, "stored first for a client with receipts");
        ids.push(sent.id);
    }
    for id in &ids {
        assert_eq!(next_message(&mut events).await.id, *id);
    }
    // Taking them acknowledged them.
    eventually_count(&*store, "acker", 0).await;
    client.stop().await.unwrap();
    client.resume().unwrap();
    next_where(&mut events, "the reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    let marker = server
        .hub()
        .send(message_to("acker", "marker"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events).await.id,
        marker.id,
        "nothing taken came again"
    );
    eventually_count(&*store, "acker", 0).await;

    // Three messages the application never takes: they stay stored, and a new client of the
    // account gets them again, in order.
    let mut untaken = Vec::new();
    for i in 0..3 {
        let sent = server
            .hub()
            .send(message_to("acker", &format!("u{i}")))
            .await
            .unwrap();
        untaken.push(sent.id);
    }
    client.destroy().await;
    drop(events);
    assert_eq!(store.count("acker").await.unwrap(), 3);
    let (again, mut again_events) = Client::connect(cfg).await.unwrap();
    for id in &untaken {
        assert_eq!(next_message(&mut again_events).await.id, *id);
    }
    eventually_count(&*store, "acker", 0).await;
    again.destroy().await;
}

async fn eventually_count(store: &dyn MessageStore, uid: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = store.count(uid).await.unwrap();
        if c == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{c} stored, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_refused_bind_is_not_retried_and_a_good_token_binds() {
    use cim_server::auth::{TokenAuthenticator, TokenSigner};
    let secret = "a-secret-of-32-characters-000000";
    let server = Server::builder()
        .listener(Listener::binary(loopback()))
        .authenticator(Arc::new(TokenAuthenticator(TokenSigner::new(secret))))
        .start()
        .await
        .unwrap();
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let mut cfg = config(&endpoint, "guarded");
    cfg.bind.token = Some("v1.9999999999.00".into());
    let (client, mut events) = Client::start(cfg.clone());
    match next(&mut events).await {
        Event::Refused(r) => assert_eq!(r.code, "401"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    quiet_for(&mut events, Duration::from_millis(500), |_| false).await;
    assert!(!client.is_connected());
    client.destroy().await;

    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    cfg.bind.token = Some(TokenSigner::new(secret).mint("guarded", expires));
    let (client, _events) = Client::connect(cfg).await.unwrap();
    assert!(client.is_connected());
    client.destroy().await;
}

#[tokio::test]
async fn the_client_answers_pings_and_outlives_the_idle_timeout() {
    use cim_core::engine::{ConnectionConfig, Timers};
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(50),
            read_idle: Duration::from_millis(150),
            max_pong_timeout: 1,
            bind_timeout: Duration::from_secs(5),
        },
        ..ConnectionConfig::default()
    };
    let (server, closes) = start_with(conn, cim_server::WsSettings::default(), |b| b).await;
    let endpoints = [
        format!("tcp://{}", server.addr("tcp").unwrap()),
        format!("ws+json://{}/", server.addr("websocket").unwrap()),
        format!("xml://{}", server.addr("xml").unwrap()),
    ];
    let mut clients = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        clients.push(
            Client::connect(config(endpoint, &format!("pinged-{i}")))
                .await
                .unwrap(),
        );
    }
    // Many heartbeat rounds: a client that did not answer would be closed after two.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (i, (client, events)) in clients.iter_mut().enumerate() {
        assert!(client.is_connected(), "{}", endpoints[i]);
        quiet_for(events, Duration::from_millis(1), |_| false).await;
        assert_receives_sdk(&server, events, &format!("pinged-{i}")).await;
    }
    assert!(
        closes.0.lock().unwrap().is_empty(),
        "closed: {:?}",
        closes.0.lock().unwrap()
    );
}

#[tokio::test]
async fn stop_and_destroy_work_while_nobody_takes_events() {
    let server = serve(loopback(), None).await;
    let endpoint = format!("tcp://{}", server.addr("tcp").unwrap());
    let mut cfg = config(&endpoint, "busy-app");
    cfg.event_capacity = 2;
    let (client, _events) = Client::connect(cfg).await.unwrap();
    // More messages than the events hold: the client's task waits for room.
    for i in 0..20 {
        server
            .hub()
            .send(message_to("busy-app", &i.to_string()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(WAIT, client.stop())
        .await
        .expect("stop waited for the application")
        .unwrap();
    eventually_unbound(&server, "busy-app").await;
    tokio::time::timeout(WAIT, client.destroy())
        .await
        .expect("destroy waited for the application");
}
