//! Property tests of the XML codec.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use bytes::BytesMut;
use cim_codec_xml::XmlCodec;
use cim_core::testing::{assert_split_invariant, decode_chunks, frame_with_keys, xml_name};
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stream_round_trip(frames in prop::collection::vec(xml_frame(), 0..6)) {
        let wire = encode_all(&frames);
        let got = decode_chunks(big(), &[&wire]);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.pending, 0);
        prop_assert_eq!(got.frames, frames);
    }

    #[test]
    fn stream_split_anywhere(
        frames in prop::collection::vec(xml_frame(), 1..6),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        assert_split_invariant(big, &encode_all(&frames), &points);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in prop::collection::vec(xml_frame(), 0..3),
        junk in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = encode_all(&prefix);
        wire.extend_from_slice(&junk);
        let got = decode_chunks(big(), &[&wire]);
        prop_assert!(got.frames.len() >= prefix.len());
        prop_assert_eq!(&got.frames[..prefix.len()], &prefix[..]);
        assert_split_invariant(big, &wire, &points);
        assert_split_invariant(|| XmlCodec::with_max_document(64), &wire, &points);
    }

    /// Arbitrary text shaped like our documents: tags and references in random order.
    #[test]
    fn arbitrary_markup_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "<sent>", "</sent>", "<reply>", "</reply>", "<message>", "</message>", "<data>", "</data>",
        "<key>", "</key>", "<uid>", "</uid>", "<id>", "</id>", "<mid>", "</mid>", "<timestamp>",
        "</timestamp>", "12", "x", "&amp;", "&#x8;", "&#0;", "&#xFFFFFF;", "&nope;", "<![CDATA[",
        "]]>", "<?xml version=\"1.0\"?>", "<!-- c -->", "<a/>", "\u{8}", "\u{0}", " ", "<", ">", "&",
    ]), 0..40)) {
        let text = parts.concat();
        let _ = decode_chunks(big(), &[text.as_bytes()]);
    }
}
