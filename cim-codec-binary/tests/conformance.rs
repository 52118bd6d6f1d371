//! The binary codecs pass the shared codec suites.
#![allow(missing_docs)]

use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_core::testing::codec::{packet_codec, stream_codec};
use cim_core::testing::frame;

#[test]
fn tcp_frames_conform() {
    stream_codec(BinaryCodec::new, || BinaryCodec::with_max_body(64), frame);
}

#[test]
fn websocket_packets_conform() {
    packet_codec(&WsBinaryCodec, frame());
}
