//! Property tests of the XML codec beyond the shared stream-codec suite (tests/conformance.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use bytes::BytesMut;
use cim_codec_xml::XmlCodec;
use cim_core::testing::{decode_chunks, frame_with_keys, xml_name};
use cim_core::{Frame, StreamCodec};
use proptest::prelude::*;

fn xml_frame() -> impl Strategy<Value = Frame> {
    frame_with_keys(xml_name())
}

fn big() -> XmlCodec {
    XmlCodec::with_max_document(1 << 20)
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut codec = big();
    let mut out = BytesMut::new();
    for f in frames {
        codec.encode(f, &mut out).unwrap();
    }
    out.to_vec()
}

/// Rewrites the messages of `wire` in the 4.x spelling a client may also send: `<id>` for
/// `<mid>` and/or `<action>` for `<type>`. Documents are split at the terminator (which no value
/// carries literally); `mid` is a message's first element and `type`, when present, the next one,
/// so only those are touched (never a `<mid>` inside a CDATA content).
fn respell(wire: &[u8], id: bool, action: bool) -> Vec<u8> {
    let text = std::str::from_utf8(wire).unwrap();
    let mut out = String::new();
    for doc in text.split_inclusive('\u{8}') {
        let Some(at) = doc.find("<message><mid>") else {
            out.push_str(doc);
            continue;
        };
        let (head, body) = doc.split_at(at + "<message>".len());
        let close = body.find("</mid>").unwrap();
        let (mid, rest) = body.split_at(close + "</mid>".len());
        let value = &mid["<mid>".len()..close];
        out.push_str(head);
        if id {
            out.push_str(&format!("<id>{value}</id>"));
        } else {
            out.push_str(mid);
        }
        match rest.strip_prefix("<type>") {
            Some(after) if action => {
                let end = after.find("</type>").unwrap();
                out.push_str(&format!("<action>{}</action>", &after[..end]));
                out.push_str(&after[end + "</type>".len()..]);
            }
            _ => out.push_str(rest),
        }
    }
    out.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Messages decode the same whichever spelling the sender used for the id and the action.
    #[test]
    fn round_trip_with_both_spellings(
        frames in prop::collection::vec(xml_frame(), 0..6),
        id in any::<bool>(),
        action in any::<bool>(),
    ) {
        let wire = respell(&encode_all(&frames), id, action);
        let got = decode_chunks(big(), &[&wire]);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.pending, 0);
        prop_assert_eq!(got.frames, frames);
    }

    /// Arbitrary text shaped like our documents: tags and references in random order.
    #[test]
    fn arbitrary_markup_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "<sent>", "</sent>", "<reply>", "</reply>", "<message>", "</message>", "<data>", "</data>",
        "<key>", "</key>", "<uid>", "</uid>", "<id>", "</id>", "<mid>", "</mid>", "<timestamp>",
        "</timestamp>", "<type>", "</type>", "<file>", "</file>", "<fileType>", "</fileType>",
        "<policy-file-request/>", "12", "x", "&amp;", "&#x8;", "&#0;", "&#xFFFFFF;", "&nope;", "<![CDATA[",
        "]]>", "<?xml version=\"1.0\"?>", "<!-- c -->", "<a/>", "\u{8}", "\u{0}", " ", "<", ">", "&",
    ]), 0..40)) {
        let text = parts.concat();
        let _ = decode_chunks(big(), &[text.as_bytes()]);
    }
}

/// The rewrite used above does change the spelling (and only of the id and the action).
#[test]
fn respell_rewrites_the_names() {
    let m = cim_core::Message {
        id: 5,
        action: "2".into(),
        content: "<mid>1</mid><type>x</type>".into(),
        ..cim_core::Message::default()
    };
    let wire = encode_all(&[Frame::Message(m.clone())]);
    let both = String::from_utf8(respell(&wire, true, true)).unwrap();
    assert!(
        both.contains(
            "<message><id>5</id><action>2</action><content><![CDATA[<mid>1</mid><type>x</type>]]>"
        ),
        "{both}"
    );
    assert_eq!(respell(&wire, false, false), wire);
    let got = decode_chunks(big(), &[both.as_bytes()]);
    assert_eq!(got.frames, [Frame::Message(m)]);
}
