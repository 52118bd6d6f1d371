//! Property tests of the binary codecs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use bytes::BytesMut;
use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_core::testing::{assert_split_invariant, decode_chunks, frame};
use cim_core::{Packet, PacketCodec, StreamCodec};
use proptest::prelude::*;

fn encode_all(frames: &[cim_core::Frame]) -> Vec<u8> {
    let mut codec = BinaryCodec::new();
    let mut out = BytesMut::new();
    for f in frames {
        codec.encode(f, &mut out).unwrap();
    }
    out.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stream_round_trip(frames in prop::collection::vec(frame(), 0..6)) {
        let wire = encode_all(&frames);
        let got = decode_chunks(BinaryCodec::new(), &[&wire]);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.pending, 0);
        prop_assert_eq!(got.frames, frames);
    }

    #[test]
    fn stream_split_anywhere(
        frames in prop::collection::vec(frame(), 1..6),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        assert_split_invariant(BinaryCodec::new, &encode_all(&frames), &points);
    }

    #[test]
    fn stream_arbitrary_bytes_never_panic(
        prefix in prop::collection::vec(frame(), 0..3),
        junk in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = encode_all(&prefix);
        wire.extend_from_slice(&junk);
        let got = decode_chunks(BinaryCodec::new(), &[&wire]);
        // The valid prefix always decodes.
        prop_assert!(got.frames.len() >= prefix.len());
        prop_assert_eq!(&got.frames[..prefix.len()], &prefix[..]);
        assert_split_invariant(BinaryCodec::new, &wire, &points);
        assert_split_invariant(|| BinaryCodec::with_max_body(64), &wire, &points);
    }

    #[test]
    fn packet_round_trip(f in frame()) {
        let packet = WsBinaryCodec.encode(&f).unwrap();
        prop_assert_eq!(WsBinaryCodec.decode(packet.as_packet()).unwrap(), f);
    }

    #[test]
    fn packet_arbitrary_bytes_never_panic(junk in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = WsBinaryCodec.decode(Packet::Binary(&junk));
    }
}
