//! The conformance suites of the codec seams: every [`StreamCodec`] runs [`stream_codec`],
//! every [`PacketCodec`] runs [`packet_codec`], so each behaves the same at the edges (frames
//! split anywhere, junk after valid frames, a stream cut short, heartbeats) whatever its format.
//! Panics on the first failure, with proptest's minimal failing case.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{assert_split_invariant, decode_chunks};
use crate::{CodecError, Frame, Packet, PacketCodec, StreamCodec};

/// Cases per property.
const CASES: u32 = 256;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

fn encode_all<C: StreamCodec>(codec: &mut C, frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        codec
            .encode(f, &mut out)
            .expect("the strategy's frames encode");
    }
    out.to_vec()
}

/// Checks a stream codec made by `make` on frames from the strategy `frames()` makes (frames the
/// codec can carry and gives back equal), and on `tight()`, the same codec with a small size
/// limit.
pub fn stream_codec<C, M, T, F, S>(make: M, tight: T, frames: F)
where
    C: StreamCodec,
    M: Fn() -> C,
    T: Fn() -> C,
    F: Fn() -> S,
    S: Strategy<Value = Frame>,
{
    let mut run = runner();
    // Frames survive a round trip, whole.
    run.run(&prop::collection::vec(frames(), 0..6), |fs| {
        let wire = encode_all(&mut make(), &fs);
        let got = decode_chunks(make(), &[&wire]);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.pending, 0);
        prop_assert_eq!(got.frames, fs);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("round trip: {e}"));
    // Split anywhere, the same frames come out.
    let split = (
        prop::collection::vec(frames(), 1..6),
        prop::collection::vec(any::<usize>(), 0..12),
    );
    run.run(&split, |(fs, points)| {
        assert_split_invariant(&make, &encode_all(&mut make(), &fs), &points);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("split: {e}"));
    // Junk after valid frames: the frames still decode, nothing panics, at any size limit.
    let junk = (
        prop::collection::vec(frames(), 0..3),
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(any::<usize>(), 0..8),
    );
    run.run(&junk, |(prefix, junk, points)| {
        let mut wire = encode_all(&mut make(), &prefix);
        wire.extend_from_slice(&junk);
        let got = decode_chunks(make(), &[&wire]);
        prop_assert!(got.frames.len() >= prefix.len());
        prop_assert_eq!(got.frames.get(..prefix.len()), Some(&prefix[..]));
        assert_split_invariant(&make, &wire, &points);
        assert_split_invariant(&tight, &wire, &points);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("junk: {e}"));
    stream_edges(&make);
}

/// Fixed cases every stream codec meets: nothing in, nothing out; heartbeats both ways; a
/// frame cut short is `Truncated` at the end of the stream.
fn stream_edges<C: StreamCodec>(make: impl Fn() -> C) {
    let mut empty = BytesMut::new();
    assert_eq!(make().decode(&mut empty), Ok(None), "empty input");
    assert_eq!(
        make().decode_eof(&mut empty),
        Ok(None),
        "empty input at the end"
    );
    let wire = encode_all(&mut make(), &[Frame::Ping, Frame::Pong]);
    let got = decode_chunks(make(), &[&wire]);
    assert_eq!(got.frames, [Frame::Ping, Frame::Pong], "heartbeats");
    let bind = Frame::Sent(crate::SentBody::new("client_bind").with("uid", "u1"));
    let wire = encode_all(&mut make(), &[bind]);
    let mut cut = BytesMut::from(wire.get(..wire.len() - 1).unwrap_or_default());
    assert!(
        matches!(
            make().decode_eof(&mut cut),
            Err(CodecError::Truncated { .. })
        ),
        "a frame cut short"
    );
}

/// Checks a packet codec on frames from `frames` (frames it can carry and gives back equal).
pub fn packet_codec<C, S>(codec: &C, frames: S)
where
    C: PacketCodec,
    S: Strategy<Value = Frame>,
{
    let mut run = runner();
    run.run(&frames, |f| {
        let packet = codec
            .encode(&f)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec.decode(packet.as_packet()), Ok(f));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("round trip: {e}"));
    run.run(&prop::collection::vec(any::<u8>(), 0..2048), |junk| {
        let _ = codec.decode(Packet::Binary(&junk));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("binary junk: {e}"));
    run.run(&any::<String>(), |junk| {
        let _ = codec.decode(Packet::Text(&junk));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("text junk: {e}"));
    for beat in [Frame::Ping, Frame::Pong] {
        let packet = codec.encode(&beat).expect("heartbeats encode");
        assert_eq!(codec.decode(packet.as_packet()), Ok(beat), "heartbeat");
    }
    assert!(
        codec.decode(Packet::Binary(&[])).is_err() || codec.decode(Packet::Text("")).is_err(),
        "an empty packet is refused"
    );
}
