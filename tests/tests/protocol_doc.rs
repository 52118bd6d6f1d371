//! The worked examples of docs/protocol.md are what the codecs write and read: every block the
//! document marks with `<!-- verified: NAME -->` is checked here, byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;

use bytes::BytesMut;
use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::{DataMap, Frame, Message, ReplyBody, SentBody, StreamCodec};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The fenced block after each `<!-- verified: NAME -->` line, by name.
fn marked_blocks() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- verified: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "{name}: no block follows");
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        assert!(
            out.insert(name.to_owned(), body.join("\n")).is_none(),
            "{name} is marked twice"
        );
    }
    out
}

/// The bytes of an annotated dump: on every line, the two-digit hex numbers before any `#`.
fn dump_bytes(block: &str) -> Vec<u8> {
    block
        .lines()
        .flat_map(|l| l.split('#').next().unwrap_or_default().split_whitespace())
        .map(|b| {
            assert_eq!(b.len(), 2, "{b:?} is not a byte");
            u8::from_str_radix(b, 16).unwrap()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn bind() -> Frame {
    Frame::Sent(SentBody {
        key: "client_bind".into(),
        timestamp: 1_700_000_000_000,
        data: DataMap::from([("uid", "10000"), ("channel", "android")]),
    })
}

fn bind_reply() -> Frame {
    Frame::Reply(ReplyBody {
        timestamp: 1_700_000_000_123,
        ..ReplyBody::ok("client_bind")
    })
}

fn message() -> Message {
    Message {
        id: 7_530_824_933_966_872_576,
        action: "2".into(),
        content: "hello".into(),
        sender: "system".into(),
        receiver: "10000".into(),
        format: "txt".into(),
        timestamp: 1_700_000_000_456,
        ..Message::default()
    }
}

fn attachment() -> Message {
    Message {
        content: "a photo".into(),
        file: "http://files.example/a.png".into(),
        file_type: "image".into(),
        format: String::new(),
        ..message()
    }
}

fn kick() -> Message {
    Message {
        id: 7_530_824_933_966_872_577,
        action: "999".into(),
        sender: "0".into(),
        receiver: "10000".into(),
        content: "Pixel 8".into(),
        timestamp: 1_700_000_000_789,
        ..Message::default()
    }
}

fn tcp(frame: &Frame) -> Vec<u8> {
    BinaryCodec::new().encode_to_bytes(frame).unwrap().to_vec()
}

fn json(frame: &Frame) -> String {
    JsonCodec.encode_text(frame).unwrap()
}

/// The document the XML codec writes, without its terminator.
fn xml(frame: &Frame) -> String {
    let mut out = BytesMut::new();
    XmlCodec::new().encode(frame, &mut out).unwrap();
    assert_eq!(out.last(), Some(&0x08));
    String::from_utf8(out[..out.len() - 1].to_vec()).unwrap()
}

/// What the XML codec reads from a document a client wrote (terminator added).
fn xml_decode(doc: &str) -> Frame {
    let mut src = BytesMut::from(format!("{doc}\x08").as_bytes());
    XmlCodec::new().decode(&mut src).unwrap().unwrap()
}

#[test]
fn every_marked_example_is_what_the_codecs_write() {
    let blocks = marked_blocks();
    let bytes: Vec<(&str, Vec<u8>)> = vec![
        ("tcp-bind", tcp(&bind())),
        ("tcp-bind-reply", tcp(&bind_reply())),
        ("tcp-ping", tcp(&Frame::Ping)),
        ("tcp-pong", tcp(&Frame::Pong)),
        ("tcp-message", tcp(&Frame::Message(message()))),
        ("tcp-attachment", tcp(&Frame::Message(attachment()))),
        ("ws-bind", WsBinaryCodec.encode_payload(&bind()).to_vec()),
        (
            "ws-ping",
            WsBinaryCodec.encode_payload(&Frame::Ping).to_vec(),
        ),
    ];
    let texts: Vec<(&str, String)> = vec![
        ("json-bind", json(&bind())),
        ("json-bind-reply", json(&bind_reply())),
        ("json-ping", json(&Frame::Ping)),
        ("json-pong", json(&Frame::Pong)),
        ("json-message", json(&Frame::Message(message()))),
        ("json-attachment", json(&Frame::Message(attachment()))),
        ("xml-bind-reply", xml(&bind_reply())),
        ("xml-message", xml(&Frame::Message(message()))),
        ("xml-attachment", xml(&Frame::Message(attachment()))),
        ("xml-kick", xml(&Frame::Message(kick()))),
        (
            "xml-flash-answer",
            String::from_utf8(
                cim_codec_xml::FLASH_POLICY_ANSWER[..cim_codec_xml::FLASH_POLICY_ANSWER.len() - 1]
                    .to_vec(),
            )
            .unwrap(),
        ),
    ];
    let mut checked = vec!["xml-bind-android", "xml-bind-java"];
    for (name, expected) in &bytes {
        let block = blocks
            .get(*name)
            .unwrap_or_else(|| panic!("docs/protocol.md has no {name}; it is:\n{}", hex(expected)));
        assert_eq!(
            hex(&dump_bytes(block)),
            hex(expected),
            "{name} differs from the codec"
        );
        checked.push(name);
    }
    for (name, expected) in &texts {
        let block = blocks
            .get(*name)
            .unwrap_or_else(|| panic!("docs/protocol.md has no {name}; it is:\n{expected}"));
        assert_eq!(block, expected, "{name} differs from the codec");
        checked.push(name);
    }

    // What 2.x clients write: read as the documented 4.x request.
    for name in ["xml-bind-android", "xml-bind-java"] {
        let Frame::Sent(b) = xml_decode(&blocks[name]) else {
            panic!("{name} is not a request")
        };
        assert_eq!(b.key, "client_bind");
        assert_eq!(b.get("uid"), "10000", "{name}");
        assert_eq!(b.get("deviceName"), "Nexus 5", "{name}");
        assert_eq!(b.get("appVersion"), "2.2.1", "{name}");
        assert_eq!(b.get("channel"), "android", "{name}");
    }

    // Nothing is marked that this test does not check.
    let mut marked: Vec<&str> = blocks.keys().map(String::as_str).collect();
    marked.sort_unstable();
    checked.sort_unstable();
    assert_eq!(marked, checked);
}

/// The documented dumps decode to the documented frames (the other direction).
#[test]
fn the_dumps_decode() {
    let blocks = marked_blocks();
    let mut src = BytesMut::from(&dump_bytes(&blocks["tcp-bind"])[..]);
    assert_eq!(BinaryCodec::new().decode(&mut src).unwrap(), Some(bind()));
    let ws = dump_bytes(&blocks["ws-bind"]);
    assert_eq!(WsBinaryCodec.decode_payload(&ws).unwrap(), bind());
    assert_eq!(JsonCodec.decode_text(&blocks["json-bind"]).unwrap(), bind());
    assert_eq!(
        xml_decode(&blocks["xml-attachment"]),
        Frame::Message(attachment())
    );
}
