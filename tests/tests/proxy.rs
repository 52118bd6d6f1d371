//! Behind a load balancer: a real HAProxy (`send-proxy`, `send-proxy-v2`, `option forwardfor`)
//! in front of the real `cim-server`, clients on loopback addresses of their own (127.0.0.2 and
//! up) so that a client's address and the proxy's (127.0.0.1) differ. Sessions show the client's
//! address, not the proxy's; PROXY headers from untrusted addresses, and trusted connections
//! without one, are refused; denied networks are refused at accept while others are served;
//! forwarding headers count only from trusted proxies. Then the refusal counter, in process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_codec_xml::XmlCodec;
use cim_core::Frame;
use common::haproxy::{Haproxy, Mode, Route, connect_from};
use common::process::{Resp, ServerProcess, http_on};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A call of the HTTP API straight from 127.0.0.8 (not a proxy, so sending no PROXY header).
async fn api(server: &ServerProcess, method: &str, path: &str, body: &str) -> Resp {
    let addr = server.addr("http");
    let s = connect_from("127.0.0.8", addr).await;
    http_on(s, addr, method, path, &[common::process::JSON], body).await
}

/// The session list's `remoteAddr` of `uid`'s one session.
async fn remote_addr(server: &ServerProcess, uid: &str) -> String {
    let r = api(server, "GET", &format!("/api/v1/sessions?uid={uid}"), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["total"], 1, "{v}");
    v["sessions"][0]["remoteAddr"].as_str().unwrap().to_owned()
}

/// A binary-protocol client from `from` to `to` that binds `uid`; returns it and its address.
async fn bind_tcp_from(from: &str, to: SocketAddr, uid: &str) -> (TcpClient, SocketAddr) {
    let stream = connect_from(from, to).await;
    let local = stream.local_addr().unwrap();
    let mut c = StreamClient::on(stream, BinaryCodec::new());
    c.bind(uid, "android", &format!("dev-{uid}")).await;
    (c, local)
}

/// A WebSocket client from `from` through `to` with `headers` on its upgrade, bound as `uid`.
async fn bind_ws_from(
    from: &str,
    to: SocketAddr,
    uid: &str,
    headers: &[(&'static str, &str)],
) -> (Ws, SocketAddr) {
    let stream = connect_from(from, to).await;
    let local = stream.local_addr().unwrap();
    let mut req = format!("ws://{to}/").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws_send_binary(
        &mut ws,
        &Frame::Sent(bind_body(uid, "web", &format!("dev-{uid}"))),
    )
    .await;
    match ws_next(&mut ws).await {
        Some(Frame::Reply(r)) => assert_eq!(r.code, "200", "{r:?}"),
        other => panic!("no bind reply: {other:?}"),
    }
    (ws, local)
}

/// Waits for a log line of `server` containing every one of `needles`; returns it.
fn log_line(server: &ServerProcess, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server
            .stderr
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {needles:?}"));
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

/// Reads until the server closes `stream` (what it sent before, as text).
async fn closed(mut stream: TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server did not close the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// An HTTP answer read from a fresh connection that sends nothing (a refusal at accept).
async fn answer_at_accept(from: &str, to: SocketAddr) -> Resp {
    let text = closed(connect_from(from, to).await).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

const DEBUG_LOG: (&str, &str) = ("RUST_LOG", "info,cim_core=debug,cim_server=debug");

#[tokio::test]
async fn clients_through_haproxy_bind_with_their_own_address() {
    let server = ServerProcess::start(&[
        DEBUG_LOG,
        ("CIM_TCP__PROXY_PROTOCOL", "true"),
        ("CIM_TCP__TRUSTED_PROXIES", "127.0.0.1"),
        ("CIM_WEBSOCKET__PROXY_PROTOCOL", "true"),
        ("CIM_WEBSOCKET__TRUSTED_PROXIES", "127.0.0.1"),
        ("CIM_HTTP__PROXY_PROTOCOL", "true"),
        ("CIM_HTTP__TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let proxy = Haproxy::start(&[
        Route {
            mode: Mode::ProxyV1,
            to: server.addr("tcp"),
        },
        Route {
            mode: Mode::ProxyV2,
            to: server.addr("tcp"),
        },
        Route {
            mode: Mode::ProxyV2,
            to: server.addr("websocket"),
        },
        Route {
            mode: Mode::ProxyV1,
            to: server.addr("http"),
        },
    ])
    .await;
    let (mut v1, v1_addr) = bind_tcp_from("127.0.0.2", proxy.fronts[0], "via-v1").await;
    let (_v2, v2_addr) = bind_tcp_from("127.0.0.5", proxy.fronts[1], "via-v2").await;
    let (_ws, ws_addr) = bind_ws_from("127.0.0.6", proxy.fronts[2], "via-ws", &[]).await;
    // A client of another address connects directly, without a header: served as it is.
    let (_direct, direct_addr) = bind_tcp_from("127.0.0.3", server.addr("tcp"), "direct").await;
    for (uid, addr) in [
        ("via-v1", v1_addr),
        ("via-v2", v2_addr),
        ("via-ws", ws_addr),
        ("direct", direct_addr),
    ] {
        assert_eq!(remote_addr(&server, uid).await, addr.to_string(), "{uid}");
    }
    // The connection goes on after the header: a push reaches the client behind the proxy.
    let body = r#"{"receiver": "via-v1", "action": "2", "content": "through haproxy"}"#;
    let sent = api(&server, "POST", "/api/v1/messages", body).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(v1.message().await.content, "through haproxy");
    // The HTTP API through the proxy's PROXY header, from 127.0.0.7, lists the sessions.
    let via = connect_from("127.0.0.7", proxy.fronts[3]).await;
    let r = http_on(via, proxy.fronts[3], "GET", "/api/v1/sessions", &[], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["total"], 4, "{r:?}");
    // The logs name the client, and the proxy it came through.
    log_line(
        &server,
        &[
            "client address from the PROXY header",
            "peer=127.0.0.1:",
            &format!("client={v1_addr}"),
        ],
    );
    // A connection from the trusted proxy's address without a header is refused, with why.
    let bare = connect_from("127.0.0.1", server.addr("tcp")).await;
    let mut bare = StreamClient::on(bare, BinaryCodec::new());
    bare.send(Frame::Sent(bind_body("bare", "android", "d")))
        .await;
    assert!(bare.expect_closed().await.is_empty());
    log_line(&server, &["no usable PROXY header", "no PROXY header"]);
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_address_is_refused() {
    // The proxies trusted are elsewhere: HAProxy on 127.0.0.1 is not one of them.
    let server = ServerProcess::start(&[
        ("CIM_TCP__PROXY_PROTOCOL", "true"),
        ("CIM_TCP__TRUSTED_PROXIES", "10.0.0.0/8"),
    ]);
    let proxy = Haproxy::start(&[Route {
        mode: Mode::ProxyV2,
        to: server.addr("tcp"),
    }])
    .await;
    let through = connect_from("127.0.0.2", proxy.fronts[0]).await;
    let mut through = StreamClient::on(through, BinaryCodec::new());
    through
        .send(Frame::Sent(bind_body("spoofed", "android", "d")))
        .await;
    assert!(through.expect_closed().await.is_empty());
    log_line(
        &server,
        &[
            "PROXY header from an address that is not a trusted proxy",
            "127.0.0.1",
        ],
    );
    // A client that writes a header itself, claiming another address, is refused the same.
    let mut forged = StreamClient::on(
        connect_from("127.0.0.3", server.addr("tcp")).await,
        BinaryCodec::new(),
    );
    forged
        .send_raw(b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 23456\r\n")
        .await;
    forged
        .send(Frame::Sent(bind_body("forged", "android", "d")))
        .await;
    assert!(forged.expect_closed().await.is_empty());
    // Neither bound; a plain client of the same address is served.
    let (_plain, addr) = bind_tcp_from("127.0.0.3", server.addr("tcp"), "plain").await;
    assert_eq!(remote_addr(&server, "plain").await, addr.to_string());
    let r = api(&server, "GET", "/api/v1/sessions", "").await;
    assert_eq!(r.json()["total"], 1, "{r:?}");
}

#[tokio::test]
async fn a_denied_network_is_refused_at_accept_while_others_are_served() {
    let server = ServerProcess::start(&[
        ("CIM_TCP__PROXY_PROTOCOL", "true"),
        ("CIM_TCP__TRUSTED_PROXIES", "127.0.0.1"),
        ("CIM_TCP__DENY", "127.0.0.4"),
        ("CIM_WEBSOCKET__ALLOW", "127.0.0.2/32,127.0.0.8/29"),
        ("CIM_XML__ENABLED", "true"),
        ("CIM_XML__DENY", "127.0.0.0/30"),
        ("CIM_HTTP__DENY", "127.0.0.4"),
    ]);
    let proxy = Haproxy::start(&[Route {
        mode: Mode::ProxyV1,
        to: server.addr("tcp"),
    }])
    .await;
    // Through the proxy: the client's own address is the one checked.
    let denied = connect_from("127.0.0.4", proxy.fronts[0]).await;
    let mut denied = StreamClient::on(denied, BinaryCodec::new());
    denied
        .send(Frame::Sent(bind_body("denied", "android", "d")))
        .await;
    assert!(denied.expect_closed().await.is_empty());
    log_line(
        &server,
        &[
            "tcp: connections refused: the client's address is denied",
            "127.0.0.4",
        ],
    );
    let (_ok, ok_addr) = bind_tcp_from("127.0.0.2", proxy.fronts[0], "served").await;
    assert_eq!(remote_addr(&server, "served").await, ok_addr.to_string());
    // WebSocket: only the allow list is served; others are told why.
    let refused = answer_at_accept("127.0.0.7", server.addr("websocket")).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.body, "address not allowed\n");
    bind_ws_from("127.0.0.9", server.addr("websocket"), "ws-allowed", &[]).await;
    // XML: a denied network is closed, an address past its edge served.
    let mut xml_denied = StreamClient::on(
        connect_from("127.0.0.3", server.addr("xml")).await,
        XmlCodec::new(),
    );
    xml_denied
        .send(Frame::Sent(bind_body("xml-denied", "android", "d")))
        .await;
    assert!(xml_denied.expect_closed().await.is_empty());
    let mut xml_ok = StreamClient::on(
        connect_from("127.0.0.5", server.addr("xml")).await,
        XmlCodec::new(),
    );
    xml_ok.bind("xml-ok", "android", "d").await;
    // The HTTP API: a JSON 403 at accept for the denied address, answers for the others.
    let r = answer_at_accept("127.0.0.4", server.addr("http")).await;
    let reason = r.json_error(403);
    assert!(reason.contains("http.deny"), "{reason}");
    let ok = http_on(
        connect_from("127.0.0.5", server.addr("http")).await,
        server.addr("http"),
        "GET",
        "/health",
        &[],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let server = ServerProcess::start(&[
        ("CIM_WEBSOCKET__TRUSTED_PROXIES", "127.0.0.1"),
        ("CIM_HTTP__TRUSTED_PROXIES", "127.0.0.1"),
        ("CIM_HTTP__DENY", "127.0.0.5,203.0.113.0/24"),
    ]);
    let proxy = Haproxy::start(&[
        Route {
            mode: Mode::HttpForwardFor,
            to: server.addr("websocket"),
        },
        Route {
            mode: Mode::HttpForwardFor,
            to: server.addr("http"),
        },
    ])
    .await;
    // Through HAProxy (trusted), the client it appended is the session's address (no port in
    // the header: port 0); an address the client wrote itself, left of it, is not.
    let spoof = [("X-Forwarded-For", "203.0.113.7")];
    let (_via, _) = bind_ws_from("127.0.0.2", proxy.fronts[0], "via-proxy", &spoof).await;
    assert_eq!(remote_addr(&server, "via-proxy").await, "127.0.0.2:0");
    // Directly from an untrusted address, the header is ignored.
    let (_direct, direct) =
        bind_ws_from("127.0.0.3", server.addr("websocket"), "direct", &spoof).await;
    assert_eq!(remote_addr(&server, "direct").await, direct.to_string());
    // The HTTP API: a denied address behind the trusted proxy is refused...
    let path = "/api/v1/sessions";
    let front = proxy.fronts[1];
    let via = |from: &'static str| async move {
        let s = connect_from(from, front).await;
        http_on(s, front, "GET", path, &[], "").await
    };
    let reason = via("127.0.0.5").await.json_error(403);
    assert!(
        reason.contains("127.0.0.5") && reason.contains("http.deny"),
        "{reason}"
    );
    assert_eq!(via("127.0.0.6").await.status, 200);
    // ...and a denied address written by an untrusted client itself is not believed.
    let direct = http_on(
        connect_from("127.0.0.6", server.addr("http")).await,
        server.addr("http"),
        "GET",
        path,
        &[
            ("X-Forwarded-For", "127.0.0.5"),
            ("X-Real-IP", "203.0.113.7"),
        ],
        "",
    )
    .await;
    assert_eq!(direct.status, 200, "{direct:?}");
}

/// A metrics recorder that keeps counters, for the refusal counter's test.
#[derive(Default)]
struct Counters(Mutex<Vec<(metrics::Key, Arc<AtomicU64>)>>);

impl Counters {
    fn get(&self, listener: &str, reason: &str) -> u64 {
        let all = self.0.lock().unwrap();
        let found = all.iter().find(|(k, _)| {
            k.name() == "cim_connections_refused_total"
                && k.labels()
                    .any(|l| l.key() == "listener" && l.value() == listener)
                && k.labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        });
        found.map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    fn registered(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Recorder(Arc<Counters>);

impl metrics::Recorder for Recorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let counter = Arc::new(AtomicU64::new(0));
        self.0
            .0
            .lock()
            .unwrap()
            .push((key.clone(), Arc::clone(&counter)));
        metrics::Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test]
async fn refusals_are_counted_by_listener_and_reason() {
    use cim_server::access::Access;
    use cim_server::{Listener, Server};
    let counters = Arc::new(Counters::default());
    metrics::set_global_recorder(Recorder(Arc::clone(&counters))).unwrap();
    let access = Access {
        proxy_protocol: true,
        trusted_proxies: "127.0.0.1".parse().unwrap(),
        deny: "127.0.0.4".parse().unwrap(),
        ..Access::default()
    };
    let server = Server::builder()
        .listener(Listener::binary(loopback()).with_access(access))
        .max_connections(2)
        .start()
        .await
        .unwrap();
    // One handle per reason, registered as the listener started.
    assert_eq!(counters.registered(), 4);
    let addr = server.addr("tcp").unwrap();
    let refused = |from: &'static str, bytes: &'static [u8]| async move {
        let mut s = connect_from(from, addr).await;
        s.write_all(bytes).await.unwrap();
        closed(s).await;
    };
    refused("127.0.0.1", b"PROXY TCP4 127.0.0.4 127.0.0.1 1000 2000\r\n").await;
    refused("127.0.0.1", b"PROXY TCP4 127.0.0.4 127.0.0.1 1001 2000\r\n").await;
    refused("127.0.0.1", b"PROXY TCP9 1.2.3.4\r\n").await;
    refused("127.0.0.1", b"\x03\x00\x00").await;
    refused("127.0.0.2", b"PROXY TCP4 127.0.0.9 127.0.0.1 1000 2000\r\n").await;
    // Two connections fill the slots; the third is refused for the limit.
    let _a = connect_from("127.0.0.2", addr).await;
    let _b = connect_from("127.0.0.3", addr).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.connections() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    closed(connect_from("127.0.0.5", addr).await).await;
    for (reason, n) in [
        ("denied", 2),
        ("proxy_header", 2),
        ("untrusted_proxy", 1),
        ("max_connections", 1),
    ] {
        assert_eq!(counters.get("tcp", reason), n, "{reason}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_proxy_header_comes_before_the_tls_handshake() {
    use cim_client::{BindInfo, Client, ClientConfig};
    use common::certs::{Ca, write};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cim test CA");
    let files = write(dir.path(), &ca, &ca.leaf(&["localhost", "127.0.0.1"]));
    let server = ServerProcess::start(&[
        DEBUG_LOG,
        ("CIM_TCP__TLS__CERT", files.cert.to_str().unwrap()),
        ("CIM_TCP__TLS__KEY", files.key.to_str().unwrap()),
        ("CIM_TCP__PROXY_PROTOCOL", "true"),
        ("CIM_TCP__TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let proxy = Haproxy::start(&[Route {
        mode: Mode::ProxyV2,
        to: server.addr("tls"),
    }])
    .await;
    // The SDK over tls:// through HAProxy: the handshake starts after the header.
    let endpoint = format!("tls://127.0.0.1:{}", proxy.fronts[0].port());
    let mut config = ClientConfig::new(endpoint.parse().unwrap(), BindInfo::new("over-tls"));
    config.ca_file = Some(files.ca.clone());
    config.connect_timeout = WAIT;
    let (sdk, _events) = Client::connect(config).await.unwrap();
    let addr = remote_addr(&server, "over-tls").await;
    // The session's address is the one HAProxy's header named, not HAProxy's own.
    let client = format!("client={addr}");
    let line = log_line(&server, &["client address from the PROXY header", &client]);
    assert!(!line.contains(&format!("peer={addr}")), "{line}");
    sdk.destroy().await;
}

#[tokio::test]
async fn a_header_that_never_ends_is_cut_off_by_the_bind_timeout() {
    use cim_core::engine::ConnectionConfig;
    use cim_server::access::Access;
    use cim_server::{Listener, Server};
    init_logs();
    let mut conf = ConnectionConfig::default();
    conf.timers.bind_timeout = Duration::from_millis(300);
    let access = Access {
        proxy_protocol: true,
        trusted_proxies: "127.0.0.1".parse().unwrap(),
        ..Access::default()
    };
    let server = Server::builder()
        .listener(
            Listener::binary(loopback())
                .with_connection(conf)
                .with_access(access),
        )
        .start()
        .await
        .unwrap();
    let addr = server.addr("tcp").unwrap();
    // Half a header, then nothing: closed once the bind timeout is over.
    let mut half = connect_from("127.0.0.1", addr).await;
    half.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
    assert_eq!(closed(half).await, "");
    // The same header whole is taken, and the bind goes on.
    let mut whole = StreamClient::on(connect_from("127.0.0.1", addr).await, BinaryCodec::new());
    whole
        .send_raw(b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 23456\r\n")
        .await;
    whole.bind("whole", "android", "d").await;
    let sessions = server.hub().sessions().sessions("whole").await.unwrap();
    assert_eq!(sessions[0].remote_addr, "203.0.113.7:4711");
    server.shutdown(Duration::from_secs(1)).await;
}
