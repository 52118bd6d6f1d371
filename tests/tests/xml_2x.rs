//! CIM 2.x clients on the XML listener of the real `cim-server` binary: requests exactly as the
//! 2.x Java SDK (values in CDATA) and Android SDK (values as plain text) write them, and
//! everything the server writes read back by a decoder that knows only what a 2.x client knows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::WAIT;
use common::process::*;
use quick_xml::Reader;
use quick_xml::events::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The element names a CIM 2.x client reads from a message: nothing else.
const MESSAGE_NAMES: [&str; 10] = [
    "mid",
    "type",
    "title",
    "content",
    "file",
    "fileType",
    "sender",
    "receiver",
    "format",
    "timestamp",
];

/// What a 2.x client makes of one document.
#[derive(Debug, PartialEq)]
enum Doc2x {
    /// `<message>`: the values of those of the ten 2.x elements that are present.
    Message(HashMap<String, String>),
    /// `<reply>`: its key and code, and the entries of its data.
    Reply {
        key: String,
        code: String,
        data: HashMap<String, String>,
    },
}

/// A 2.x client's decoder: the document element names the kind; a message's children are
/// looked up by the ten 2.x names (anything else is skipped), a reply's by `key`, `code` and
/// `data`. Text and CDATA both count, with the predefined entities and character references.
fn decode_2x(doc: &str) -> Doc2x {
    let mut reader = Reader::from_str(doc);
    let mut path: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut data: HashMap<String, String> = HashMap::new();
    let mut root = String::new();
    let mut text = String::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                let qname = e.name();
                let name: &str = qname.as_ref();
                let name = name.to_owned();
                if path.is_empty() {
                    root = name.clone();
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(_) => {}
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(c) => text.push_str(&c.xml10_content()),
            Event::GeneralRef(r) => text.push(match &*r {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => r.resolve_char_ref().unwrap().unwrap(),
            }),
            Event::End(_) => {
                let name = path.pop().unwrap();
                let value = std::mem::take(&mut text);
                match (root.as_str(), path.len()) {
                    ("message", 1) if MESSAGE_NAMES.contains(&name.as_str()) => {
                        values.insert(name, value);
                    }
                    ("reply", 1) if name == "key" || name == "code" => {
                        values.insert(name, value);
                    }
                    ("reply", 2) if path[1] == "data" => {
                        data.insert(name, value);
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match root.as_str() {
        "message" => Doc2x::Message(values),
        "reply" => Doc2x::Reply {
            key: values.remove("key").expect("a reply without <key>"),
            code: values.remove("code").expect("a reply without <code>"),
            data,
        },
        other => panic!("a 2.x client cannot read <{other}>: {doc}"),
    }
}

/// A 2.x client's connection: documents out and in, each followed by `0x08`.
struct Client2x {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client2x {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Small writes leave at once, so a document sent in pieces arrives in pieces.
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, doc: &str) {
        self.stream.write_all(doc.as_bytes()).await.unwrap();
        self.stream.write_all(b"\x08").await.unwrap();
    }

    /// The next document as text, without its terminator; `None` when the server closed.
    async fn next_raw(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buf.iter().position(|&b| b == 0x08) {
                    let doc: Vec<u8> = self.buf.drain(..=end).collect();
                    return Some(String::from_utf8(doc[..end].to_vec()).unwrap());
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("timed out waiting for a document")
    }

    /// The next document that is not a heartbeat, answering each heartbeat with `C_H_RS` as
    /// 2.x clients do.
    async fn next_doc(&mut self) -> Option<(String, Doc2x)> {
        loop {
            let raw = self.next_raw().await?;
            if raw == "S_H_RQ" {
                self.send("C_H_RS").await;
                continue;
            }
            let doc = decode_2x(&raw);
            return Some((raw, doc));
        }
    }

    async fn message(&mut self) -> (String, HashMap<String, String>) {
        match self.next_doc().await {
            Some((raw, Doc2x::Message(m))) => (raw, m),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn reply(&mut self) -> (String, String, HashMap<String, String>) {
        match self.next_doc().await {
            Some((_, Doc2x::Reply { key, code, data })) => (key, code, data),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Binds with the 2.x Android SDK's document; returns once the bind is answered 200.
    async fn bind_android(&mut self, account: &str, device_id: &str, model: &str) {
        self.send(&android_bind(account, device_id, model)).await;
        let (key, code, _) = self.reply().await;
        assert_eq!((key.as_str(), code.as_str()), ("client_bind", "200"));
    }
}

/// A bind as the 2.x Android SDK writes it: its keys, values as plain text.
fn android_bind(account: &str, device_id: &str, model: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_bind</key>\
         <timestamp>1487900000000</timestamp><data><account>{account}</account>\
         <deviceId>{device_id}</deviceId><channel>android</channel><device>{model}</device>\
         <version>2.2.1</version><osVersion>6.0.1</osVersion>\
         <packageName>com.farsunset.cim</packageName></data></sent>"
    )
}

/// A bind as the 2.x Java SDK writes it: the same keys, every value in CDATA.
fn java_bind(account: &str, device_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_bind</key>\
         <timestamp>1487900000000</timestamp><data><account><![CDATA[{account}]]></account>\
         <deviceId><![CDATA[{device_id}]]></deviceId><channel><![CDATA[windows]]></channel>\
         <device><![CDATA[Windows 10]]></device><version><![CDATA[2.2.0]]></version>\
         <osVersion><![CDATA[10.0]]></osVersion></data></sent>"
    )
}

/// A server with the XML listener on, heartbeats every 300 ms (so every test also answers
/// some), and the Flash policy answer on.
fn server() -> ServerProcess {
    ServerProcess::start(&[
        ("CIM_XML__ENABLED", "true"),
        ("CIM_XML__FLASH_POLICY", "true"),
        ("CIM_CONNECTION__WRITE_IDLE_MS", "300"),
    ])
}

async fn post(p: &ServerProcess, path: &str, body: &str) -> serde_json::Value {
    let r = http(p.addr("http"), "POST", path, &[JSON], body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[tokio::test]
async fn sdk_binds_show_their_2x_keys_under_the_4x_names() {
    let p = server();
    let mut android = Client2x::connect(p.addr("xml")).await;
    android
        .bind_android("a1", "4F1E2D3C4B5A69788796A5B4C3D2E1F0", "Nexus 5")
        .await;
    let mut java = Client2x::connect(p.addr("xml")).await;
    java.send(&java_bind("j1", "java-device")).await;
    let (key, code, _) = java.reply().await;
    assert_eq!((key.as_str(), code.as_str()), ("client_bind", "200"));

    let r = http(p.addr("http"), "GET", "/api/v1/sessions", &[], "").await;
    let sessions = r.json()["sessions"].as_array().unwrap().clone();
    let find = |uid: &str| {
        sessions
            .iter()
            .find(|s| s["uid"] == uid)
            .unwrap_or_else(|| panic!("no session of {uid}: {sessions:?}"))
            .clone()
    };
    let a = find("a1");
    assert_eq!(a["appVersion"], "2.2.1");
    assert_eq!(a["deviceName"], "Nexus 5");
    assert_eq!(a["deviceId"], "4F1E2D3C4B5A69788796A5B4C3D2E1F0");
    assert_eq!(a["osVersion"], "6.0.1");
    assert_eq!(a["channel"], "android");
    let j = find("j1");
    assert_eq!(j["appVersion"], "2.2.0");
    assert_eq!(j["deviceName"], "Windows 10");
    assert_eq!(j["channel"], "windows");

    // Both keep answering heartbeats with C_H_RS and still receive: a heartbeat answer the
    // server did not understand would have closed them.
    for c in [&mut android, &mut java] {
        for _ in 0..3 {
            assert_eq!(c.next_raw().await.as_deref(), Some("S_H_RQ"));
            c.send("C_H_RS").await;
        }
    }
    post(
        &p,
        "/api/v1/messages",
        r#"{"receiver":"j1","content":"still here"}"#,
    )
    .await;
    assert_eq!(java.message().await.1["content"], "still here");
}

#[tokio::test]
async fn a_pushed_message_reads_with_mid_and_type() {
    let p = server();
    let mut c = Client2x::connect(p.addr("xml")).await;
    c.bind_android("m1", "dev-m1", "Pixel").await;
    let sent = post(
        &p,
        "/api/v1/messages",
        r#"{"receiver":"m1","action":"2","title":"t <1>","content":"<b>中文</b> & ]]> end"}"#,
    )
    .await;
    let (raw, m) = c.message().await;
    assert_eq!(m["mid"], sent["id"].as_str().unwrap(), "{raw}");
    assert_eq!(m["type"], "2", "{raw}");
    assert_eq!(m["title"], "t <1>");
    assert_eq!(m["content"], "<b>中文</b> & ]]> end");
    assert_eq!(m["sender"], "system");
    assert_eq!(m["receiver"], "m1");
    assert!(m["timestamp"].parse::<i64>().unwrap() > 0);
    // No format was given: the element is left out, so a 2.x client keeps its `txt` default
    // (an empty element would overwrite it), and no other element is written empty.
    assert!(!m.contains_key("format"), "{raw}");
    assert!(!m.contains_key("file"), "{raw}");
    for name in MESSAGE_NAMES.iter().chain(&["extra"]) {
        assert!(
            !raw.contains(&format!("<{name}></{name}>")),
            "an empty element: {raw}"
        );
    }
    // The 2.x type, as the stock demo reads it (`getType().startsWith("9")` on every message).
    assert!(!m["type"].starts_with('9'));
}

#[tokio::test]
async fn a_kick_arrives_as_type_999() {
    let p = server();
    let mut old = Client2x::connect(p.addr("xml")).await;
    old.bind_android("k1", "phone-1", "Old Phone").await;
    let mut new = Client2x::connect(p.addr("xml")).await;
    new.bind_android("k1", "phone-2", "New Phone").await;
    let (raw, kick) = old.message().await;
    assert_eq!(kick["type"], "999", "{raw}");
    assert_eq!(kick["sender"], "0");
    assert_eq!(kick["receiver"], "k1");
    assert_eq!(kick["content"], "New Phone");
    assert!(kick.contains_key("mid"));
    // Then the old connection is closed; the new one stays.
    assert_eq!(old.next_doc().await, None);
    post(
        &p,
        "/api/v1/messages",
        r#"{"receiver":"k1","content":"to the new"}"#,
    )
    .await;
    assert_eq!(new.message().await.1["content"], "to the new");
}

#[tokio::test]
async fn attachments_by_http_and_client_message_reach_2x_clients_also_after_the_store() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_str().unwrap().to_owned();
    let env = [
        ("CIM_XML__ENABLED", "true"),
        ("CIM_STORE__PATH", path.as_str()),
    ];
    let mut p = ServerProcess::start(&env);
    // Sent while the account is offline: stored, by the JSON API and by CIM's form endpoint.
    let sent = post(
        &p,
        "/api/v1/messages",
        r#"{"receiver":"f1","action":"2","content":"a photo","file":"http://files.example/a.png","fileType":"image"}"#,
    )
    .await;
    assert_eq!(sent["stored"], true, "{sent}");
    let r = http(
        p.addr("http"),
        "POST",
        "/api/message/send",
        &[("content-type", "application/x-www-form-urlencoded")],
        "sender=s&receiver=f1&action=2&file=http%3A%2F%2Ffiles.example%2Fv.amr&fileType=voice",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The store is on disk: a restart in between loses nothing.
    assert!(p.terminate().success());
    drop(p);
    let p = ServerProcess::start(&env);

    let mut c = Client2x::connect(p.addr("xml")).await;
    c.bind_android("f1", "dev-f1", "Pixel").await;
    let (raw, photo) = c.message().await;
    assert_eq!(photo["mid"], sent["id"].as_str().unwrap(), "{raw}");
    assert_eq!(photo["file"], "http://files.example/a.png", "{raw}");
    assert_eq!(photo["fileType"], "image");
    assert_eq!(photo["content"], "a photo");
    let (raw, voice) = c.message().await;
    assert_eq!(voice["file"], "http://files.example/v.amr", "{raw}");
    assert_eq!(voice["fileType"], "voice");
    assert_eq!(voice["sender"], "s");

    // Live, by the batch, tag and broadcast endpoints.
    post(
        &p,
        "/api/v1/messages/batch",
        r#"{"messages":[{"receiver":"f1","file":"b.png","fileType":"image"}]}"#,
    )
    .await;
    assert_eq!(c.message().await.1["file"], "b.png");
    c.send(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_set_tag</key>\
         <timestamp>0</timestamp><data><tag>friends</tag></data></sent>",
    )
    .await;
    assert_eq!(c.reply().await.1, "200");
    post(
        &p,
        "/api/v1/tags/friends/messages",
        r#"{"file":"t.png","fileType":"image"}"#,
    )
    .await;
    assert_eq!(c.message().await.1["file"], "t.png");
    post(
        &p,
        "/api/v1/broadcast",
        r#"{"file":"all.png","fileType":"image"}"#,
    )
    .await;
    let (_, all) = c.message().await;
    assert_eq!(
        (all["file"].as_str(), all["fileType"].as_str()),
        ("all.png", "image")
    );

    // From a 2.x client to another, over client_message.
    let mut d = Client2x::connect(p.addr("xml")).await;
    d.bind_android("f2", "dev-f2", "Moto").await;
    c.send(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_message</key>\
         <timestamp>0</timestamp><data><receiver>f2</receiver><action>2</action>\
         <file><![CDATA[http://files.example/c.png]]></file><fileType>image</fileType>\
         <requestId>r1</requestId></data></sent>",
    )
    .await;
    let (key, code, data) = c.reply().await;
    assert_eq!((key.as_str(), code.as_str()), ("client_message", "200"));
    assert_eq!(data["requestId"], "r1");
    let (raw, m) = d.message().await;
    assert_eq!(m["file"], "http://files.example/c.png", "{raw}");
    assert_eq!(m["fileType"], "image");
    assert_eq!(m["sender"], "f1");
    assert_eq!(m["mid"], data["messageId"]);
}

/// Reads until the server closes; everything it wrote.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    out
}

#[tokio::test]
async fn flash_policy_request_is_answered_and_the_connection_closed() {
    let p = server();
    let mut s = TcpStream::connect(p.addr("xml")).await.unwrap();
    s.write_all(cim_codec_xml::FLASH_POLICY_REQUEST)
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut s).await,
        cim_codec_xml::FLASH_POLICY_ANSWER
    );
    let answer = String::from_utf8(cim_codec_xml::FLASH_POLICY_ANSWER.to_vec()).unwrap();
    assert!(answer.contains("<cross-domain-policy>") && answer.ends_with('\0'));

    // In two pieces, as a slow network may deliver it.
    let mut s = TcpStream::connect(p.addr("xml")).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"<policy-file").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.write_all(b"-request/>\0").await.unwrap();
    assert_eq!(
        read_to_close(&mut s).await,
        cim_codec_xml::FLASH_POLICY_ANSWER
    );

    // A 2.x client whose first document trickles in a byte at a time is not mistaken for one.
    let mut c = Client2x::connect(p.addr("xml")).await;
    for b in android_bind("fp1", "dev", "Nexus").bytes().take(4) {
        c.stream.write_all(&[b]).await.unwrap();
        c.stream.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rest = android_bind("fp1", "dev", "Nexus");
    c.stream.write_all(&rest.as_bytes()[4..]).await.unwrap();
    c.stream.write_all(b"\x08").await.unwrap();
    let (key, code, _) = c.reply().await;
    assert_eq!((key.as_str(), code.as_str()), ("client_bind", "200"));
    post(
        &p,
        "/api/v1/messages",
        r#"{"receiver":"fp1","content":"ok"}"#,
    )
    .await;
    assert_eq!(c.message().await.1["content"], "ok");
}

#[tokio::test]
async fn without_flash_policy_the_request_is_a_protocol_error() {
    let p = ServerProcess::start(&[("CIM_XML__ENABLED", "true")]);
    let mut s = TcpStream::connect(p.addr("xml")).await.unwrap();
    s.write_all(cim_codec_xml::FLASH_POLICY_REQUEST)
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut s).await, b"");
}

/// Waiting for the first bytes is bounded by the bind timeout: a connection that stops halfway
/// through what could be a policy request, or says nothing, is closed.
#[tokio::test]
async fn an_undecided_first_read_ends_at_the_bind_timeout() {
    let p = ServerProcess::start(&[
        ("CIM_XML__ENABLED", "true"),
        ("CIM_XML__FLASH_POLICY", "true"),
        ("CIM_CONNECTION__BIND_TIMEOUT_MS", "300"),
    ]);
    let mut half = TcpStream::connect(p.addr("xml")).await.unwrap();
    half.write_all(b"<policy-file").await.unwrap();
    let mut silent = TcpStream::connect(p.addr("xml")).await.unwrap();
    assert_eq!(read_to_close(&mut half).await, b"");
    assert_eq!(read_to_close(&mut silent).await, b"");
}
