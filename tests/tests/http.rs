//! The HTTP listener of the `cim-server` binary under hostile and careless clients, over raw
//! sockets: the body timeout, the connection limit, a JSON body on every error (including the
//! ones raised before a request reaches a handler), and the account-id rule at every entry.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use cim_codec_binary::BinaryCodec;
use common::process::*;
use common::*;

/// `line` without its terminal colour codes.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn witness(p: &ServerProcess, uid: &str) -> TcpClient {
    let mut c = StreamClient::connect(p.addr("tcp"), BinaryCodec::new()).await;
    c.bind(uid, "android", &format!("dev-{uid}")).await;
    c
}

/// A well-behaved client: sends `content` to `to` over a fresh connection; the witness bound
/// as `to` receives it.
async fn served(h: SocketAddr, to: &mut TcpClient, uid: &str, content: &str) {
    let body = format!(r#"{{"receiver":"{uid}","content":"{content}"}}"#);
    let r = http(h, "POST", "/api/v1/messages", &[JSON], &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["delivered"], 1, "{r:?}");
    assert_eq!(to.message().await.content, content);
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408_and_closed_while_others_are_served() {
    let p = ServerProcess::start(&[("CIM_HTTP__BODY_TIMEOUT_MS", "2000")]);
    let h = p.addr("http");
    let mut w = witness(&p, "w").await;

    // Complete headers announcing 1000 bytes, then one byte, then nothing.
    let mut slow = HttpConn::open(h).await;
    slow.send(
        b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
    )
    .await;
    // Meanwhile others are served.
    served(h, &mut w, "w", "while the slow body waits").await;

    let r = slow.response().await.expect("an answer to the slow body");
    let reason = r.json_error(408);
    assert!(reason.contains("http.body_timeout_ms"), "{reason}");
    assert_eq!(r.header("connection"), Some("close"));
    slow.expect_closed().await;
    served(h, &mut w, "w", "after the slow body").await;

    // A body that pauses but completes within the timeout is served.
    let mut paused = HttpConn::open(h).await;
    let body = r#"{"receiver":"w","content":"paused"}"#;
    paused
        .send(
            format!(
                "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..10]
            )
            .as_bytes(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    paused.send(&body.as_bytes()[10..]).await;
    let r = paused.response().await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.message().await.content, "paused");
    // ...and its connection stays open for the next request.
    paused.request("GET", "/health", &[], "").await;
    assert_eq!(paused.response().await.unwrap().status, 200);
}

#[tokio::test]
async fn http_connection_limit_at_the_edge() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__MAX_CONNECTIONS", "3"),
        ("CIM_HTTP__HEADER_TIMEOUT_MS", "60000"),
    ]);
    let h = p.addr("http");
    let mut w = witness(&p, "w").await;
    // Exactly the limit, each served and kept open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = HttpConn::open(h).await;
        c.request("GET", "/health", &[], "").await;
        assert_eq!(c.response().await.unwrap().status, 200);
        held.push(c);
    }
    // One more is answered 503 and closed.
    let mut extra = HttpConn::open(h).await;
    extra.request("GET", "/health", &[], "").await;
    let r = extra.response().await.expect("a 503 answer");
    let reason = r.json_error(503);
    assert!(reason.contains("http.max_connections"), "{reason}");
    assert!(reason.contains('3'), "{reason}");
    extra.expect_closed().await;
    // The held ones are still served, and the long connections too.
    let body = r#"{"receiver":"w","content":"held"}"#;
    held[0]
        .request("POST", "/api/v1/messages", &[JSON], body)
        .await;
    assert_eq!(held[0].response().await.unwrap().status, 200);
    assert_eq!(w.message().await.content, "held");

    // Once one closes, a new connection is served (as soon as the server has seen the close;
    // until then it is refused, never left hanging).
    drop(held.remove(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = HttpConn::open(h).await;
        c.request("GET", "/health", &[], "").await;
        let r = c.response().await.unwrap();
        if r.status == 200 {
            break;
        }
        r.json_error(503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after a close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refusal was logged, with its count.
    let logged = std::iter::from_fn(|| p.stderr.recv_timeout(WAIT).ok())
        .find(|l| l.contains("http.max_connections reached"))
        .expect("no log line for the refusal");
    assert!(plain(&logged).contains("refused=1"), "{logged}");
}

#[tokio::test]
async fn every_error_is_json_even_before_a_handler() {
    let p = ServerProcess::start(&[
        ("CIM_HTTP__MAX_HEAD", "1024"),
        ("CIM_HTTP__MAX_HEADERS", "10"),
    ]);
    let h = p.addr("http");
    let mut w = witness(&p, "w").await;

    // 405: a known route, a method it does not take; `Allow` is kept.
    for (method, path) in [("POST", "/health"), ("PUT", "/api/v1/messages")] {
        let r = http(h, method, path, &[], "").await;
        let reason = r.json_error(405);
        assert!(reason.contains(method), "{reason}");
        assert!(r.header("allow").is_some(), "{r:?}");
    }
    // 404, and a path segment that is not UTF-8 (axum's own refusal).
    http(h, "GET", "/nowhere", &[], "").await.json_error(404);
    http(h, "GET", "/api/v1/accounts/%FF/pending", &[], "")
        .await
        .json_error(400);
    // 413 on CIM's endpoint, as on the JSON ones.
    let big = format!(
        "sender=s&receiver=w&action=2&content={}",
        "a".repeat(1_100_000)
    );
    let r = http(h, "POST", "/api/message/send", &[], &big).await;
    assert!(r.json_error(413).contains("http.max_body"));

    // Refused heads, each on a raw socket: answered in JSON, then closed.
    let line = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let with_headers = |n: usize, fill: usize| {
        let mut r = "GET /health HTTP/1.1\r\n".to_owned();
        for i in 0..n {
            r.push_str(&format!("X-{i:02}: {}\r\n", "v".repeat(fill)));
        }
        r + "\r\n"
    };
    let exact = {
        // A head of exactly 1024 bytes.
        let base = with_headers(1, 0);
        with_headers(1, 1024 - base.len())
    };
    assert_eq!(exact.len(), 1024);
    let mut over = exact.clone();
    over.insert(30, 'v');
    for (raw, status, needle) in [
        (
            line(&format!("/{}", "a".repeat(1100))),
            414,
            "http.max_head",
        ),
        (over, 431, "http.max_head"),
        (with_headers(11, 1), 431, "http.max_headers"),
        ("HELLO\r\n\r\n".to_owned(), 400, "request line"),
        ("GET / HTTP/9.9\r\n\r\n".to_owned(), 400, "HTTP/1.1"),
        (
            "\u{16}\u{3}\u{1}\u{2}\u{0}\n\n".to_owned(),
            400,
            "bad request",
        ),
        (
            "POST /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_owned(),
            400,
            "Content-Length",
        ),
    ] {
        let mut c = HttpConn::open(h).await;
        c.send(raw.as_bytes()).await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("no answer to {raw:.60?}"));
        let reason = r.json_error(status);
        assert!(reason.contains(needle), "{raw:.60?}: {reason}");
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_closed().await;
    }
    // At the edges: a head of exactly max_head bytes, exactly max_headers fields.
    for raw in [exact, with_headers(10, 1)] {
        let mut c = HttpConn::open(h).await;
        c.send(raw.as_bytes()).await;
        assert_eq!(c.response().await.unwrap().status, 200, "{raw:.60?}");
    }

    // On a keep-alive connection, every request is checked, not only the first: good ones
    // are answered, then the bad one in JSON, then the connection closes.
    let mut c = HttpConn::open(h).await;
    c.request("GET", "/health", &[], "").await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(b"GARBAGE GARBAGE\r\n\r\n").await;
    c.response().await.unwrap().json_error(400);
    c.expect_closed().await;
    // Pipelined in one write: a send with a body, then a head too large.
    let body = r#"{"receiver":"w","content":"pipelined"}"#;
    let good = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = HttpConn::open(h).await;
    c.send(format!("{good}{}", with_headers(11, 1)).as_bytes())
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert!(
        c.response()
            .await
            .unwrap()
            .json_error(431)
            .contains("http.max_headers")
    );
    c.expect_closed().await;
    assert_eq!(w.message().await.content, "pipelined");
    // A chunked body is framed too: the request after it is served.
    let mut c = HttpConn::open(h).await;
    c.send(
        format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..5],
            body.len() - 5,
            &body[5..]
        )
        .as_bytes(),
    )
    .await;
    c.request("GET", "/health", &[], "").await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(w.message().await.content, "pipelined");
    served(h, &mut w, "w", "after the bad heads").await;
}

const UID_MAX: usize = 16;

/// A server whose account ids are at most 16 bytes, with tokens on.
fn uid_server() -> ServerProcess {
    ServerProcess::start(&[
        ("CIM_AUTH__MAX_UID_BYTES", "16"),
        ("CIM_AUTH__TOKEN_SECRET", "a-secret-of-32-characters-000000"),
    ])
}

/// Account ids at the edge, as JSON strings: (id, why refused — `None` if accepted).
fn json_ids() -> Vec<(String, Option<&'static str>)> {
    vec![
        ("é".repeat(UID_MAX / 2), None),
        (
            "u".repeat(UID_MAX + 1),
            Some("is 17 bytes, more than the limit of 16"),
        ),
        (
            "a\\u0001b".to_owned(),
            Some("contains the control character U+0001 at byte 1"),
        ),
    ]
}

#[tokio::test]
async fn account_ids_in_paths_and_queries_at_the_edge() {
    let p = uid_server();
    let h = p.addr("http");
    for path in [
        "/api/v1/accounts/{}/sessions",
        "/api/v1/accounts/{}/pending",
    ] {
        for method in ["GET", "DELETE"] {
            for (uid, refusal) in [
                ("u".repeat(UID_MAX), None),
                (
                    "u".repeat(UID_MAX + 1),
                    Some("uid is 17 bytes, more than the limit of 16"),
                ),
                (String::new(), Some("uid is empty")),
                (
                    "a%0Ab".to_owned(),
                    Some("uid contains the control character U+000A at byte 1"),
                ),
            ] {
                let r = http(h, method, &path.replace("{}", &uid), &[], "").await;
                match refusal {
                    None => assert_eq!(r.status, 200, "{method} {path} {uid}: {r:?}"),
                    Some(why) => assert_eq!(r.json_error(400), why, "{method} {path} {uid:?}"),
                }
            }
        }
    }
    for (query, refusal) in [
        ("uid=".to_owned() + &"u".repeat(UID_MAX), None),
        (
            "uid=".to_owned() + &"u".repeat(UID_MAX + 1),
            Some("uid is 17 bytes, more than the limit of 16"),
        ),
        ("uid=".to_owned(), Some("uid is empty")),
        (
            "uid=a%7Fb".to_owned(),
            Some("uid contains the control character U+007F at byte 1"),
        ),
    ] {
        let r = http(h, "GET", &format!("/api/v1/sessions?{query}"), &[], "").await;
        match refusal {
            None => assert_eq!(r.json()["total"], 0, "{query}: {r:?}"),
            Some(why) => assert_eq!(r.json_error(400), why, "{query}"),
        }
    }
}

#[tokio::test]
async fn account_ids_in_every_send_form_and_token_at_the_edge() {
    let p = uid_server();
    let h = p.addr("http");
    let pending = |uid: String| async move {
        http(
            h,
            "GET",
            &format!("/api/v1/accounts/{uid}/pending"),
            &[],
            "",
        )
        .await
        .json()["pending"]
            .as_u64()
            .unwrap()
    };
    let max = "é".repeat(UID_MAX / 2);
    for (id, refusal) in json_ids() {
        // (endpoint, body, field as the reason names it)
        let cases = [
            (
                "/api/v1/messages",
                format!(r#"{{"receiver":"{id}"}}"#),
                "receiver",
            ),
            (
                "/api/v1/messages",
                format!(r#"{{"receiver":"r","sender":"{id}"}}"#),
                "sender",
            ),
            (
                "/api/v1/messages/batch",
                format!(r#"{{"messages":[{{"receiver":"r"}},{{"receiver":"{id}"}}]}}"#),
                "messages[1].receiver",
            ),
            (
                "/api/v1/messages/batch",
                format!(r#"{{"messages":[{{"receiver":"r","sender":"{id}"}}]}}"#),
                "messages[0].sender",
            ),
            (
                "/api/v1/broadcast",
                format!(r#"{{"sender":"{id}"}}"#),
                "sender",
            ),
            (
                "/api/v1/broadcast",
                format!(r#"{{"receiver":"{id}"}}"#),
                "receiver",
            ),
            (
                "/api/v1/tags/t/messages",
                format!(r#"{{"sender":"{id}"}}"#),
                "sender",
            ),
            ("/api/v1/tokens", format!(r#"{{"uid":"{id}"}}"#), "uid"),
        ];
        for (path, body, field) in cases {
            let r = http(h, "POST", path, &[JSON], &body).await;
            match refusal {
                None => assert_eq!(r.status, 200, "{path} {body}: {r:?}"),
                Some(why) => {
                    assert_eq!(r.json_error(400), format!("{field} {why}"), "{path} {body}")
                }
            }
        }
    }
    // Empty: a required account is required, a given one may not be empty.
    for (path, body, why) in [
        (
            "/api/v1/messages",
            r#"{"receiver":""}"#,
            "receiver is required",
        ),
        (
            "/api/v1/messages",
            r#"{"receiver":"r","sender":""}"#,
            "sender is empty",
        ),
        (
            "/api/v1/messages/batch",
            r#"{"messages":[{"receiver":""}]}"#,
            "messages[0].receiver is required",
        ),
        ("/api/v1/broadcast", r#"{"sender":""}"#, "sender is empty"),
        (
            "/api/v1/tags/t/messages",
            r#"{"sender":""}"#,
            "sender is empty",
        ),
        ("/api/v1/tokens", r#"{"uid":""}"#, "uid is required"),
    ] {
        assert_eq!(
            http(h, "POST", path, &[JSON], body).await.json_error(400),
            why,
            "{path} {body}"
        );
    }
    // What was accepted was stored for the offline account; nothing refused was.
    assert_eq!(pending(max.clone()).await, 2);
    assert_eq!(pending("r".into()).await, 3);

    // CIM's endpoint answers in its own shape.
    let form = "application/x-www-form-urlencoded";
    for (field, value, why) in [
        ("receiver", "u".repeat(UID_MAX), None),
        (
            "receiver",
            "u".repeat(UID_MAX + 1),
            Some("receiver is 17 bytes, more than the limit of 16"),
        ),
        (
            "sender",
            "u".repeat(UID_MAX + 1),
            Some("sender is 17 bytes, more than the limit of 16"),
        ),
        ("receiver", String::new(), Some("receiver is required")),
        (
            "sender",
            "a%01b".into(),
            Some("sender contains the control character U+0001 at byte 1"),
        ),
    ] {
        let other = if field == "sender" {
            "receiver"
        } else {
            "sender"
        };
        let body = format!("{field}={value}&{other}=x&action=2");
        let r = http(
            h,
            "POST",
            "/api/message/send",
            &[("content-type", form)],
            &body,
        )
        .await;
        match why {
            None => assert_eq!(r.json()["code"], 200, "{body}: {r:?}"),
            Some(why) => {
                assert_eq!(r.status, 400, "{body}: {r:?}");
                assert_eq!(
                    (r.json()["code"].as_u64(), r.json()["message"].as_str()),
                    (Some(400), Some(why))
                );
            }
        }
    }
    assert_eq!(pending("u".repeat(UID_MAX)).await, 1);
}

/// A JSON body is taken in any spelling of its content type and refused in others; a fault in
/// it is named by its path.
#[tokio::test]
async fn json_bodies_in_their_spellings_and_faults_by_path() {
    let p = ServerProcess::start(&[]);
    let h = p.addr("http");
    // JSON in any of its spellings is taken; anything else is not.
    for (ct, status) in [
        ("application/json", 200),
        ("Application/JSON", 200),
        ("application/json; charset=utf-8", 200),
        ("application/cloudevents+json", 200),
        ("text/plain", 415),
        ("application/jsonx", 415),
    ] {
        let r = http(
            h,
            "POST",
            "/api/v1/messages",
            &[("content-type", ct)],
            r#"{"receiver":"x"}"#,
        )
        .await;
        assert_eq!(r.status, status, "{ct}: {r:?}");
    }
    // A fault deeper in the document is named by its path.
    let r = http(
        h,
        "POST",
        "/api/v1/messages/batch",
        &[JSON],
        r#"{"messages":[{"receiver":"x"},{"receiver":7}]}"#,
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("messages[1].receiver"),
        "{r:?}"
    );
}
