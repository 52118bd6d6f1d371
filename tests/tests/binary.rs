//! The `cim-server` binary as a child process: HTTP API, authentication, configuration,
//! graceful shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, SentBody};
use common::process::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: (&str, &str) = ("x-api-key", "k3y-for-tests");
const SECRET: &str = "a-secret-of-32-characters-000000";

async fn client(p: &ServerProcess, uid: &str) -> TcpClient {
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind(uid, "android", &format!("dev-{uid}")).await;
    c
}

#[tokio::test]
async fn http_send_batch_broadcast_sessions_and_kick() {
    let p = ServerProcess::start(&[]);
    let http_addr = p.addr("http");
    let mut a = client(&p, "ha").await;
    let mut b = client(&p, "hb").await;

    // CIM's own endpoint: query or form fields.
    let r = http(
        http_addr,
        "POST",
        "/api/message/send?sender=sys&receiver=ha&action=2&content=q",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.json()["data"].as_i64().unwrap();
    let m = a.message().await;
    assert_eq!(
        (m.id, m.content.as_str(), m.sender.as_str()),
        (id, "q", "sys")
    );
    let r = http(
        http_addr,
        "POST",
        "/api/message/send",
        &[("content-type", "application/x-www-form-urlencoded")],
        "sender=sys&receiver=hb&action=2&content=form+body&title=t",
    )
    .await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (200, Some(200)));
    let m = b.message().await;
    assert_eq!((m.content.as_str(), m.title.as_str()), ("form body", "t"));
    let r = http(
        http_addr,
        "POST",
        "/api/message/send?sender=sys&action=2",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"].as_str().unwrap().contains("receiver"),
        "{r:?}"
    );

    // JSON API.
    let r = http(
        http_addr,
        "POST",
        "/api/v1/messages",
        &[JSON],
        r#"{"receiver":"ha","action":"2","content":"v1"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["delivered"].as_u64()),
        (200, Some(1)),
        "{r:?}"
    );
    assert_eq!(a.message().await.content, "v1");
    let r = http(
        http_addr,
        "POST",
        "/api/v1/messages/batch",
        &[JSON],
        r#"{"messages":[{"receiver":"ha","content":"b1"},{"receiver":"hb","content":"b2"},{"receiver":"ha","content":"b3"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 3);
    assert_eq!(a.message().await.content, "b1");
    assert_eq!(a.message().await.content, "b3");
    assert_eq!(b.message().await.content, "b2");
    let r = http(
        http_addr,
        "POST",
        "/api/v1/broadcast",
        &[JSON],
        r#"{"content":"all"}"#,
    )
    .await;
    assert_eq!(r.json()["delivered"].as_u64(), Some(2), "{r:?}");
    assert_eq!(a.message().await.content, "all");
    assert_eq!(b.message().await.content, "all");

    let r = http(http_addr, "GET", "/api/v1/sessions?limit=1", &[], "").await;
    let j = r.json();
    assert_eq!(
        (j["total"].as_u64(), j["sessions"].as_array().unwrap().len()),
        (Some(2), 1),
        "{j}"
    );
    let r = http(http_addr, "GET", "/api/v1/sessions?uid=hb", &[], "").await;
    assert_eq!(r.json()["sessions"][0]["uid"], "hb");
    let r = http(http_addr, "GET", "/api/v1/accounts/ha/sessions", &[], "").await;
    let j = r.json();
    assert_eq!(
        (j[0]["uid"].as_str(), j[0]["channel"].as_str()),
        (Some("ha"), Some("android")),
        "{j}"
    );
    let r = http(http_addr, "GET", "/api/v1/sessions?limit=5000", &[], "").await;
    assert_eq!(r.status, 400);

    // Kick: the client gets the 999 notice and is closed.
    let r = http(http_addr, "DELETE", "/api/v1/accounts/ha/sessions", &[], "").await;
    assert_eq!(r.json()["kicked"].as_u64(), Some(1));
    let frames = a.expect_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Message(m) if m.action == "999")),
        "{frames:?}"
    );
    let r = http(http_addr, "GET", "/health", &[], "").await;
    assert_eq!((r.status, r.json()["sessions"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn api_key_is_enforced() {
    let p = ServerProcess::start(&[("CIM_HTTP__API_KEY", KEY.1)]);
    let h = p.addr("http");
    let body = r#"{"receiver":"nobody","content":"x"}"#;
    let r = http(h, "POST", "/api/v1/messages", &[JSON], body).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("API key"));
    let r = http(
        h,
        "POST",
        "/api/v1/messages",
        &[JSON, ("x-api-key", "wrong")],
        body,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        h,
        "POST",
        "/api/message/send?sender=a&receiver=b&action=2",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(h, "POST", "/api/v1/messages", &[JSON, KEY], body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http(
        h,
        "POST",
        "/api/v1/messages",
        &[JSON, ("authorization", &format!("Bearer {}", KEY.1))],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Every route but the open ones is behind the key, reads included.
    for (method, path) in [
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/accounts/a/pending"),
        ("DELETE", "/api/v1/accounts/a/sessions"),
        ("POST", "/api/v1/tokens"),
    ] {
        let r = http(h, method, path, &[JSON], "{}").await;
        assert_eq!(r.status, 401, "{method} {path}: {r:?}");
    }
    // Health stays open for probes, dispatch for clients.
    assert_eq!(http(h, "GET", "/health", &[], "").await.status, 200);
    assert_eq!(
        http(h, "GET", "/api/v1/dispatch", &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let p = ServerProcess::start(&[("CIM_HTTP__MAX_BODY", "1024")]);
    let h = p.addr("http");
    let r = http(h, "POST", "/api/v1/messages", &[JSON], r#"{"receiver": "#).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"].is_string());
    let r = http(
        h,
        "POST",
        "/api/v1/messages",
        &[JSON],
        r#"{"receiver":"x","bogus":1}"#,
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.json()["error"].as_str().unwrap().contains("bogus"),
        "{r:?}"
    );
    let r = http(h, "POST", "/api/v1/messages", &[], r#"{"receiver":"x"}"#).await;
    assert_eq!(r.status, 415, "{r:?}");
    let big = format!(r#"{{"receiver":"x","content":"{}"}}"#, "a".repeat(2000));
    let r = http(h, "POST", "/api/v1/messages", &[JSON], &big).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"].is_string());
    let r = http(
        h,
        "POST",
        "/api/v1/messages",
        &[JSON],
        r#"{"content":"no receiver"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(
        h,
        "POST",
        "/api/v1/messages/batch",
        &[JSON],
        r#"{"messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let p = ServerProcess::start(&[("CIM_HTTP__HEADER_TIMEOUT_MS", "500")]);
    let h = p.addr("http");
    let mut slow = tokio::net::TcpStream::connect(h).await.unwrap();
    let start = tokio::time::Instant::now();
    let trickle = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut cut = false;
    for (i, byte) in trickle.iter().chain(std::iter::repeat(&b'a')).enumerate() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        if i % 10 == 0 {
            // Others are served meanwhile.
            assert_eq!(http(h, "GET", "/health", &[], "").await.status, 200);
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                cut = true; // an error response, then the close
                break;
            }
            Err(_) => {}
        }
        assert!(start.elapsed() < WAIT, "the slow client was never cut off");
    }
    assert!(cut);
    // Cut by the 500 ms header timer, not refused on sight.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(http(h, "GET", "/health", &[], "").await.status, 200);
}

#[tokio::test]
async fn bind_tokens() {
    let p = ServerProcess::start(&[
        ("CIM_AUTH__TOKEN_SECRET", SECRET),
        ("CIM_HTTP__API_KEY", KEY.1),
    ]);
    let (code, token, err) = run_once(
        &["token", "--uid", "tok"],
        &[("CIM_AUTH__TOKEN_SECRET", SECRET)],
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();

    // Without a token, with a wrong one, with another account's: 401 and closed.
    for bad in ["", "v1.99999999999.00", token.as_str()] {
        let uid = if bad == token { "someone-else" } else { "tok" };
        let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
        let mut bind = bind_body(uid, "android", "d");
        if !bad.is_empty() {
            bind.data.insert("token", bad);
        }
        c.send(Frame::Sent(bind)).await;
        let r = c.reply().await;
        assert_eq!(
            (r.key.as_str(), r.code.as_str()),
            ("client_bind", "401"),
            "{bad}: {r:?}"
        );
        c.expect_closed().await;
    }
    // An expired token, minted through the API with a lifetime of 0.
    let r = http(
        p.addr("http"),
        "POST",
        "/api/v1/tokens",
        &[JSON, KEY],
        r#"{"uid":"tok","ttl_secs":0}"#,
    )
    .await;
    let expired = r.json()["token"].as_str().unwrap().to_owned();
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.send(Frame::Sent(
        bind_body("tok", "android", "d").tap_token(&expired),
    ))
    .await;
    let r = c.reply().await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str()),
        ("401", "token expired")
    );

    // The right token binds.
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.send(Frame::Sent(
        bind_body("tok", "android", "d").tap_token(&token),
    ))
    .await;
    assert_eq!(c.reply().await.code, "200");
}

trait TapToken {
    fn tap_token(self, token: &str) -> SentBody;
}
impl TapToken for SentBody {
    fn tap_token(self, token: &str) -> SentBody {
        self.with("token", token)
    }
}

#[tokio::test]
async fn websocket_handshake_refused_with_401_in_the_clients_mode() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let p = ServerProcess::start(&[
        ("CIM_AUTH__TOKEN_SECRET", SECRET),
        ("CIM_WEBSOCKET__REQUIRE_TOKEN", "true"),
    ]);
    let addr = p.addr("websocket");
    // A JSON-mode client without a token: the refusal comes as JSON text, then the close.
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/?uid=w1"),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(WsMessage::Text(
        cim_codec_json::JsonCodec
            .encode_text(&Frame::Sent(bind_body("w1", "web", "b")))
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WsMessage::Text(t) = msg else {
        panic!("{msg:?}")
    };
    let Frame::Reply(r) = cim_codec_json::JsonCodec.decode_text(t.as_str()).unwrap() else {
        panic!()
    };
    assert_eq!(
        (r.key.as_str(), r.code.as_str(), r.message.as_str()),
        ("client_handshake", "401", "Unauthorized")
    );
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await.unwrap(),
        None | Some(Ok(WsMessage::Close(_))) | Some(Err(_))
    ));

    // With a valid token in the query, the upgrade and the bind go through.
    let (_, token, _) = run_once(
        &["token", "--uid", "w1"],
        &[("CIM_AUTH__TOKEN_SECRET", SECRET)],
    );
    let url = format!("ws://{addr}/?uid=w1&token={}", token.trim());
    let (mut ws, _) =
        tokio_tungstenite::client_async(url, tokio::net::TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
    ws_send_binary(
        &mut ws,
        &Frame::Sent(bind_body("w1", "web", "b").with("token", token.trim())),
    )
    .await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(r)) if r.code == "200"));
}

#[test]
fn bad_configuration_stops_startup_naming_the_key() {
    let (code, _, err) = run_once(&[], &[("CIM_TCP__PORT", "seventy")]);
    assert_ne!(code, 0);
    assert!(err.contains("tcp.port") && err.contains("seventy"), "{err}");
    let (code, _, err) = run_once(&[], &[("CIM_CONNECTION__QUEUE_CAPACITY", "0")]);
    assert_ne!(code, 0);
    assert!(err.contains("connection.queue_capacity"), "{err}");
    let (code, _, err) = run_once(&[], &[("CIM_HTTP__HOST", "0.0.0.0")]);
    assert_ne!(code, 0);
    assert!(err.contains("http.api_key"), "{err}");
    let dir = std::env::temp_dir().join(format!("cim-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cim.toml");
    std::fs::write(&file, "[websocket]\nmode = \"carrier-pigeon\"\n").unwrap();
    let (code, _, err) = run_once(&["--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("websocket.mode") && err.contains("carrier-pigeon"),
        "{err}"
    );
    std::fs::write(&file, "[tcp]\nprot = 1\n").unwrap();
    let (code, _, err) = run_once(&["--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("prot"), "{err}");
    let (code, _, err) = run_once(&["--config", "/no/such/file.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/no/such/file.toml"), "{err}");
    // A store that cannot be opened names its key and the path.
    let (code, _, err) = run_once(
        &[],
        &[
            ("CIM_STORE__PATH", "/proc/no-store-here"),
            ("CIM_TCP__PORT", "0"),
            ("CIM_WEBSOCKET__PORT", "0"),
            ("CIM_HTTP__PORT", "0"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("configuration: `store.path` = \"/proc/no-store-here\": cannot open"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A port another process holds stops start-up with one line that names the keys that set
/// the address, the listener, the address and the system's reason, once.
#[test]
fn a_taken_port_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_once(
        &[],
        &[
            ("CIM_STORE__PATH", dir.path().to_str().unwrap()),
            ("CIM_TCP__PORT", &port),
            ("CIM_WEBSOCKET__PORT", "0"),
            ("CIM_XML__PORT", "0"),
            ("CIM_HTTP__PORT", "0"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "tcp.host, tcp.port: cannot listen on 127.0.0.1:{port} (tcp)"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    drop(taken);
}

/// `worker_threads` sizes the runtime: one worker per core unless set, as many as it says
/// otherwise; 1025 is refused, naming the key.
#[test]
fn worker_threads_size_the_runtime() {
    // The runtime's threads, by name (its blocking threads, none at start-up, share it).
    let workers = |p: &ServerProcess| {
        std::fs::read_dir(format!("/proc/{}/task", p.child.id()))
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "tokio-rt-worker")
            })
            .count()
    };
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers(&ServerProcess::start(&[])), cores);
    for n in [1, 3] {
        let p = ServerProcess::start(&[("CIM_WORKER_THREADS", &n.to_string())]);
        assert_eq!(workers(&p), n);
    }
    let (code, _, err) = run_once(&[], &[("CIM_WORKER_THREADS", "1025")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("worker_threads") && err.contains("1025"),
        "{err}"
    );
}

/// Every configuration error is printed once, names the key and the value (and the values
/// allowed, for a choice); the command-line client's `CIM_API_KEY` in the environment does not
/// stop the server; a public listener without bind tokens is refused unless anonymous binds are
/// allowed in so many words.
#[test]
fn config_errors_are_named_once_and_foreign_variables_left_alone() {
    let (code, _, err) = run_once(
        &["--print-config"],
        &[("CIM_STORE__DURABILITY", "sometimes")],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("store.durability") && err.contains("expected one of always, interval, os"),
        "{err}"
    );
    assert_eq!(err.matches("sometimes").count(), 1, "printed once: {err}");
    let (code, _, err) = run_once(&["--print-config"], &[("CIM_LOG__LEVEL", "not a filter[")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("`log.level`") && err.contains("not a filter["),
        "{err}"
    );
    let (code, _, err) = run_once(&["--print-config"], &[("RUST_LOG", "x[")]);
    assert_ne!(code, 0);
    assert!(err.contains("RUST_LOG"), "{err}");
    let (code, out, err) = run_once(
        &["--print-config"],
        &[("CIM_API_KEY", "the client's"), ("CIM_LOG", "debug")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[tcp]"), "{out}");
    let (code, _, err) = run_once(&[], &[("CIM_TCP__HOST", "0.0.0.0")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("`tcp.host`")
            && err.contains("auth.token_secret")
            && err.contains("auth.allow_anonymous"),
        "{err}"
    );
}

#[test]
fn print_config_shows_the_effective_values() {
    let (code, out, err) = run_once(
        &["--print-config"],
        &[
            ("CIM_TCP__PORT", "4242"),
            ("CIM_HTTP__API_KEY", "hidden-key"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("port = 4242"), "{out}");
    assert!(
        out.contains("[websocket]") && out.contains("port = 34567"),
        "{out}"
    );
    assert!(!out.contains("hidden-key"), "{out}");
}

#[tokio::test]
async fn sigterm_with_connected_clients_exits_zero_and_closes_them() {
    let mut p = ServerProcess::start(&[]);
    let mut a = client(&p, "sa").await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/", p.addr("websocket")),
        tokio::net::TcpStream::connect(p.addr("websocket"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    ws_send_binary(&mut ws, &Frame::Sent(bind_body("sw", "web", "b"))).await;
    assert!(matches!(ws_next(&mut ws).await, Some(Frame::Reply(_))));
    let status = tokio::task::spawn_blocking(move || {
        let s = p.terminate();
        (s, p)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "{status:?}");
    a.expect_closed().await;
    assert_eq!(ws_next(&mut ws).await, None);
}

#[tokio::test]
async fn json_logs_carry_the_connection_id_and_uid() {
    let p = ServerProcess::start(&[("CIM_LOG__FORMAT", "json")]);
    let c = client(&p, "logged").await;
    drop(c);
    // Every line is a JSON object; the connection's close is logged with its id and uid.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = p
            .stderr
            .recv_timeout(left)
            .expect("no JSON log line about the closed connection");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "closed" {
            let span = &v["span"];
            assert_eq!(span["name"], "conn", "{line}");
            assert_eq!(span["uid"], "logged", "{line}");
            assert!(span["id"].as_u64().is_some(), "{line}");
            assert!(v["fields"]["reason"].is_string(), "{line}");
            break;
        }
    }
}
