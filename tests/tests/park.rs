//! Parked connections (`connection.park_after_ms`): an idle plain TCP connection gives up its
//! task; a push to one that has idled for `park_after` is written from its parked state, and
//! whatever else would have woken the task resumes it — input, a hang-up, its heartbeat, a kick,
//! a shutdown, a push sooner, a write its socket cannot take at once — with nothing lost on the
//! way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use cim_core::engine::{ConnectionConfig, Timers};
use cim_core::{Frame, SentBody};
use cim_server::{RunningServer, WsSettings};
use common::cluster::client;
use common::process::ServerProcess;
use common::scrape::{KEY, post, scrape_with};
use common::*;
use serde_json::json;

/// A server whose connections park after `after` of idleness (and at once after a bind).
async fn start_parking(after: Duration) -> RunningServer {
    let conn = ConnectionConfig {
        park_after: after,
        ..ConnectionConfig::default()
    };
    start_with(conn, WsSettings::default(), |b| b).await.0
}

async fn parked(server: &RunningServer, n: usize) {
    let hub = server.hub().clone();
    eventually(&format!("{n} parked"), WAIT, move || {
        let hub = hub.clone();
        async move { hub.parked_connections() == n }
    })
    .await;
}

/// A bound connection parks at once; a push reaches it (resuming it: it has just bound), it
/// parks again, and so on; many at once arrive whole and in order.
#[tokio::test]
async fn a_push_reaches_a_parked_connection() {
    let server = start_parking(Duration::from_millis(100)).await;
    let mut c = bound_tcp(&server, "p1").await;
    parked(&server, 1).await;
    for i in 0..3 {
        assert_receives(&server, &mut c, "p1", &format!("hello {i}")).await;
        parked(&server, 1).await;
    }
    // Many at once to a parked connection: all of them, in order.
    for i in 0..50 {
        server
            .hub()
            .send(message_to("p1", &format!("m{i}")))
            .await
            .unwrap();
    }
    for i in 0..50 {
        assert_eq!(c.message().await.content, format!("m{i}"));
    }
}

/// Counts the deliveries the engine reports (`on_delivered`).
#[derive(Default)]
struct Delivered(std::sync::atomic::AtomicUsize);

impl cim_core::engine::EventListener for Delivered {
    fn on_delivered(
        &self,
        _: &cim_core::engine::EventContext<'_>,
        _: &cim_core::Session,
        _: &cim_core::Message,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn wants_delivered(&self) -> bool {
        true
    }
}

/// How long the next tests' connections idle before they park (and before a push is written
/// to them parked), and how long they wait for that.
const PARK_AFTER: Duration = Duration::from_millis(500);
const IDLE: Duration = Duration::from_millis(700);

/// `n` clients bound as `{prefix}0`, `{prefix}1`, …, once they have all parked.
async fn bound_and_parked(server: &RunningServer, prefix: &str, n: usize) -> Vec<TcpClient> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(bound_tcp(server, &format!("{prefix}{i}")).await);
    }
    parked(server, n).await;
    clients
}

/// A push to a connection that has idled for `park_after` is written from its parked state: a
/// connection resumed to write would stay unparked for `park_after`, and these stay parked. The
/// deliveries are reported as from a task. A second push soon after finds the connection busy,
/// and resumes it.
#[tokio::test]
async fn a_push_to_an_idle_parked_connection_does_not_resume_it() {
    let conn = ConnectionConfig {
        park_after: PARK_AFTER,
        ..ConnectionConfig::default()
    };
    let delivered = Arc::new(Delivered::default());
    let listener = Arc::clone(&delivered);
    let (server, _) = start_with(conn, WsSettings::default(), |b| b.event_listener(listener)).await;
    let mut clients = bound_and_parked(&server, "w", 10).await;
    for round in 0..3 {
        tokio::time::sleep(IDLE).await;
        for (i, c) in clients.iter_mut().enumerate() {
            assert_receives(&server, c, &format!("w{i}"), &format!("r{round}")).await;
        }
        assert_eq!(server.hub().parked_connections(), 10, "round {round}");
    }
    eventually("30 deliveries reported", WAIT, || {
        let n = delivered.0.load(std::sync::atomic::Ordering::Relaxed);
        async move { n == 30 }
    })
    .await;
    // Busy: pushed to again well within `park_after` (but after the first write is done: a
    // push that comes while one is written is written with it), it is resumed.
    tokio::time::sleep(IDLE).await;
    assert_receives(&server, &mut clients[0], "w0", "once").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_receives(&server, &mut clients[0], "w0", "again").await;
    parked(&server, 9).await;
    parked(&server, 10).await;
    // Still a connection like any other: input resumes it.
    clients[1]
        .send(Frame::Sent(SentBody::new("no_such_key")))
        .await;
    assert_eq!(clients[1].reply().await.code, "404");
    parked(&server, 9).await;
}

/// A broadcast to many idle parked connections (more than the parking thread writes to itself,
/// when they wake at once: the writes are then spread over the runtime's tasks) reaches every
/// one, and none is resumed.
#[tokio::test]
async fn a_broadcast_to_idle_parked_connections_does_not_resume_them() {
    let server = start_parking(PARK_AFTER).await;
    let mut clients = bound_and_parked(&server, "b", 300).await;
    for round in 0..2 {
        tokio::time::sleep(IDLE).await;
        let sent = server
            .hub()
            .broadcast(message_to("", &format!("all {round}")))
            .await
            .unwrap();
        assert_eq!(sent.delivered, 300);
        for c in &mut clients {
            assert_eq!(c.message().await.content, format!("all {round}"));
        }
        assert_eq!(server.hub().parked_connections(), 300, "round {round}");
    }
}

/// Sends a request on a client's socket from inside the write of a delivery to `uid` (when it
/// is reported) by a task of the runtime, and holds the write there while the parking thread
/// sees the socket wake. (A write by the parking thread itself is left alone: that thread sees
/// the wake-up only after it.)
#[derive(Default)]
struct InputDuringWrite {
    uid: String,
    socket: std::sync::Mutex<Option<std::net::TcpStream>>,
    request: Vec<u8>,
}

impl cim_core::engine::EventListener for InputDuringWrite {
    fn on_delivered(
        &self,
        _: &cim_core::engine::EventContext<'_>,
        session: &cim_core::Session,
        _: &cim_core::Message,
    ) {
        if session.uid != self.uid.as_str() || std::thread::current().name() == Some("cim-park") {
            return;
        }
        if let Some(mut socket) = self.socket.lock().unwrap().take() {
            use std::io::Write;
            socket.write_all(&self.request).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wants_delivered(&self) -> bool {
        true
    }
}

/// Input that comes while a parked connection is written to (by a task of the runtime, for a
/// fan-out: its state is out of its queue, and its socket's wake-up finds nothing to resume) is
/// not lost: the connection looks at its socket again as it parks, is resumed, and answers.
#[tokio::test]
async fn input_during_a_write_from_the_parked_state_is_answered() {
    let conn = ConnectionConfig {
        park_after: PARK_AFTER,
        ..ConnectionConfig::default()
    };
    let mut request = bytes::BytesMut::new();
    cim_core::StreamCodec::encode(
        &mut cim_codec_binary::BinaryCodec::new(),
        &Frame::Sent(SentBody::new("no_such_key")),
        &mut request,
    )
    .unwrap();
    let listener = Arc::new(InputDuringWrite {
        uid: "target".into(),
        request: request.to_vec(),
        ..InputDuringWrite::default()
    });
    let events = Arc::clone(&listener);
    let (server, _) = start_with(conn, WsSettings::default(), |b| b.event_listener(events)).await;
    // More than the parking thread writes to itself: the broadcast's writes are tasks'.
    let mut others = Vec::new();
    for i in 0..100 {
        others.push(bound_tcp(&server, &format!("o{i}")).await);
    }
    let std_socket = std::net::TcpStream::connect(server.addr("tcp").unwrap()).unwrap();
    *listener.socket.lock().unwrap() = Some(std_socket.try_clone().unwrap());
    std_socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(std_socket).unwrap();
    let mut target = StreamClient::on(stream, cim_codec_binary::BinaryCodec::new());
    target.bind("target", "android", "dev-target").await;
    parked(&server, 101).await;
    // The parking thread writes a share of a fan-out itself when it wakes before the rest is
    // pushed: rounds until a task has written to the target.
    for round in 0..20 {
        tokio::time::sleep(IDLE).await;
        let content = format!("all {round}");
        let sent = server
            .hub()
            .broadcast(message_to("", &content))
            .await
            .unwrap();
        assert_eq!(sent.delivered, 101);
        assert_eq!(target.message().await.content, content);
        for c in &mut others {
            assert_eq!(c.message().await.content, content);
        }
        if listener.socket.lock().unwrap().is_none() {
            assert_eq!(target.reply().await.code, "404", "round {round}");
            return;
        }
    }
    panic!("no round's write to the target was a task's");
}

/// A burst pushed to an idle parked connection whose peer reads nothing: the first message is
/// written from the parked state, the next finds the connection busy and resumes it, and its
/// task writes the rest of the burst (more than the sockets hold) as the peer, reading at last,
/// takes it: every message whole and in order. (A write from the parked state that the socket
/// takes only in part is finished by the resumed connection: transport/tcp.rs tests it.)
#[tokio::test]
async fn a_burst_to_a_parked_connection_arrives_whole_and_in_order() {
    let server = start_parking(PARK_AFTER).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr("tcp").unwrap()).await.unwrap();
    let mut c = StreamClient::on(stream, cim_codec_binary::BinaryCodec::new());
    c.bind("full", "android", "dev-full").await;
    parked(&server, 1).await;
    tokio::time::sleep(IDLE).await;
    let body = "x".repeat(60_000);
    let n = 100;
    let mut parked_after = Vec::new();
    for i in 0..n {
        let sent = server
            .hub()
            .send(message_to("full", &format!("{i} {body}")))
            .await
            .unwrap();
        assert_eq!(sent.delivered, 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        parked_after.push(server.hub().parked_connections());
    }
    assert_eq!(parked_after[0], 1, "the first was written parked");
    assert_eq!(parked_after[n - 1], 0, "the burst resumed the connection");
    for i in 0..n {
        let m = c.message().await;
        assert_eq!(m.content, format!("{i} {body}"), "message {i}");
    }
}

/// Input resumes a parked connection: a request is answered, a message sent from it arrives.
#[tokio::test]
async fn input_resumes_a_parked_connection() {
    let (server, _) = start().await;
    let mut a = bound_tcp(&server, "pa").await;
    let mut b = bound_tcp(&server, "pb").await;
    parked(&server, 2).await;
    a.send(Frame::Sent(SentBody::new("no_such_key"))).await;
    assert_eq!(a.reply().await.code, "404");
    // From a (resumed) to b (parked): written to b from its parked state.
    a.send(Frame::Sent(
        SentBody::new("client_message")
            .with("receiver", "pb")
            .with("content", "from a")
            .with("action", "2"),
    ))
    .await;
    let got = b.message().await;
    assert_eq!(
        (got.sender.as_str(), got.content.as_str()),
        ("pa", "from a")
    );
}

/// A frame that arrives in two parts with a pause between them: the connection does not park
/// with half a frame read, and answers once the rest arrives.
#[tokio::test]
async fn a_half_read_frame_keeps_its_connection_unparked() {
    let server = start_parking(Duration::from_millis(50)).await;
    let mut c = bound_tcp(&server, "half").await;
    parked(&server, 1).await;
    let mut bytes = bytes::BytesMut::new();
    cim_core::StreamCodec::encode(
        &mut cim_codec_binary::BinaryCodec::new(),
        &Frame::Sent(SentBody::new("no_such_key").with("k", "v")),
        &mut bytes,
    )
    .unwrap();
    let (head, rest) = bytes.split_at(5);
    c.send_raw(head).await;
    parked(&server, 0).await;
    // Several periods of `park_after` go by with the half frame held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.hub().parked_connections(), 0);
    c.send_raw(rest).await;
    assert_eq!(c.reply().await.code, "404");
    parked(&server, 1).await;
}

/// The heartbeat reaches a parked connection: its PING is written from the parked state (the
/// connection stays parked: resumed to write it, it would stay unparked for `park_after`), the
/// PONG resumes it like any input, it parks again, and it is closed when the PINGs go
/// unanswered.
#[tokio::test]
async fn the_heartbeat_reaches_a_parked_connection() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(600),
            read_idle: Duration::from_millis(600),
            max_pong_timeout: 3,
            ..Timers::default()
        },
        park_after: Duration::from_millis(200),
        ..ConnectionConfig::default()
    };
    let (server, closes) = start_with(conn, WsSettings::default(), |b| b).await;
    let mut c = bound_tcp(&server, "hb").await;
    parked(&server, 1).await;
    assert_eq!(c.next().await, Some(Frame::Ping));
    assert_eq!(
        server.hub().parked_connections(),
        1,
        "the PING written parked"
    );
    c.send(Frame::Pong).await;
    parked(&server, 1).await;
    assert_eq!(c.next().await, Some(Frame::Ping));
    assert_eq!(
        server.hub().parked_connections(),
        1,
        "the next PING written parked"
    );
    // No answers now: closed for the missed PINGs, and cleaned up.
    let seen = c.expect_closed().await;
    assert!(seen.iter().all(|f| *f == Frame::Ping), "{seen:?}");
    let reason = closes.wait_for("heartbeat").await;
    assert!(reason.contains("no answer"), "{reason}");
    assert_eq!(server.hub().parked_connections(), 0);
    assert!(no_session(&server, "hb").await);
}

/// A push written from the parked state counts for the heartbeat as a write, without setting
/// the shared timer again: the deadline set before it finds nothing due, is set again, and the
/// PING comes at the later one, written parked.
#[tokio::test]
async fn a_push_written_parked_postpones_the_heartbeat() {
    let conn = ConnectionConfig {
        timers: Timers {
            write_idle: Duration::from_millis(800),
            read_idle: Duration::from_millis(5_000),
            ..Timers::default()
        },
        park_after: Duration::from_millis(100),
        ..ConnectionConfig::default()
    };
    let (server, _) = start_with(conn, WsSettings::default(), |b| b).await;
    let mut c = bound_tcp(&server, "late").await;
    parked(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_receives(&server, &mut c, "late", "in between").await;
    assert_eq!(server.hub().parked_connections(), 1, "written parked");
    assert_eq!(c.next().await, Some(Frame::Ping));
    assert_eq!(
        server.hub().parked_connections(),
        1,
        "the PING written parked"
    );
}

/// A parked connection whose peer leaves is resumed by the hang-up and cleaned up: its session
/// is gone and its slot under the connection limit is back.
#[tokio::test]
async fn a_parked_connection_whose_peer_leaves_is_cleaned_up() {
    let (server, closes) = start().await;
    let c = bound_tcp(&server, "gone").await;
    parked(&server, 1).await;
    drop(c);
    closes.wait_for("closed by peer").await;
    assert_eq!(server.hub().parked_connections(), 0);
    assert!(no_session(&server, "gone").await);
    assert_eq!(server.connections(), 0);
}

/// A newer bind of the same account and channel kicks a parked connection: it is resumed,
/// written the kick notice, and closed.
#[tokio::test]
async fn a_kick_reaches_a_parked_connection() {
    let (server, closes) = start().await;
    let mut old = tcp(&server).await;
    old.bind("kick", "android", "d1").await;
    parked(&server, 1).await;
    let mut new = tcp(&server).await;
    new.bind("kick", "android", "d2").await;
    let seen = old.expect_closed().await;
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Message(m) if m.action == "999")),
        "{seen:?}"
    );
    closes.wait_for("kicked").await;
    assert_receives(&server, &mut new, "kick", "still here").await;
}

/// A shutdown closes parked connections and waits for them like any other.
#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let (server, closes) = start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(bound_tcp(&server, &format!("s{i}")).await);
    }
    parked(&server, 20).await;
    assert!(server.shutdown(WAIT).await, "not every connection closed");
    for c in &mut clients {
        c.expect_closed().await;
    }
    assert_eq!(closes.0.lock().unwrap().len(), 20);
}

/// `park_after` zero: never parked. WebSocket and XML-with-flash connections are not parked
/// either (their transports keep state a parked socket would lose), whatever `park_after`.
#[tokio::test]
async fn parking_off_or_not_for_the_transport() {
    let server = start_parking(Duration::ZERO).await;
    let mut c = bound_tcp(&server, "never").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.hub().parked_connections(), 0);
    assert_receives(&server, &mut c, "never", "hi").await;

    let server = start_parking(Duration::from_millis(20)).await;
    let (mut ws, _) = ws_connect(&server, "/", None).await;
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("ws", "web", "w1"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.hub().parked_connections(), 0);
}

/// The real binary parks by default, and its gauge `cim_connections_parked` counts them.
#[tokio::test]
async fn the_binary_parks_by_default_and_counts_them() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY)]);
    let api = p.addr("http");
    let mut a = client(&p).await;
    a.bind("g1", "android", "d1").await;
    let mut b = client(&p).await;
    b.bind("g2", "android", "d2").await;
    let mut parked_now = 0.0;
    for _ in 0..100 {
        parked_now = scrape_with(api, KEY).await.get("cim_connections_parked");
        if parked_now == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parked_now, 2.0);
    drop(a);
    let sent = post(
        api,
        "/api/v1/messages",
        json!({"receiver": "g2", "content": "x"}),
    )
    .await;
    assert_eq!(sent["delivered"], 1);
    assert_eq!(b.message().await.content, "x");
}

/// A runtime dropped without the server's shutdown drops its parked connections as it drops
/// tasks: their sockets close, and the peer sees it.
#[test]
fn a_dropped_runtime_closes_its_parked_connections() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async { start().await.0 });
    let mut client = std::net::TcpStream::connect(server.addr("tcp").unwrap()).unwrap();
    let mut bind = bytes::BytesMut::new();
    cim_core::StreamCodec::encode(
        &mut cim_codec_binary::BinaryCodec::new(),
        &Frame::Sent(bind_body("rt", "android", "d1")),
        &mut bind,
    )
    .unwrap();
    client.write_all(&bind).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 3];
    client.read_exact(&mut reply).unwrap();
    rt.block_on(parked(&server, 1));
    drop(server);
    drop(rt);
    // The rest of the bind's reply, then the end.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
}
