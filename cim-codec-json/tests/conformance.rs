//! The JSON codec passes the shared packet codec suite.
#![allow(missing_docs)]

use cim_codec_json::JsonCodec;
use cim_core::testing::codec::packet_codec;
use cim_core::testing::frame;

#[test]
fn json_packets_conform() {
    packet_codec(&JsonCodec, frame());
}
