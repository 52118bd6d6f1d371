//! Property tests of the JSON codec beyond the shared packet-codec suite (tests/conformance.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use cim_codec_json::JsonCodec;
use cim_core::Frame;
use cim_core::testing::frame;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any frame survives the envelope being re-serialised by a generic JSON library (as a
    /// browser's `JSON.parse` / `JSON.stringify` would).
    #[test]
    fn round_trip_through_generic_json(f in frame()) {
        let text = JsonCodec.encode_text(&f).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let again = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(JsonCodec.decode_text(&again).unwrap(), f);
    }

    #[test]
    fn arbitrary_envelopes_never_panic(ty in any::<i64>(), content in any::<String>()) {
        let text = serde_json::json!({"type": ty, "content": content}).to_string();
        match JsonCodec.decode_text(&text) {
            Ok(Frame::Ping) => prop_assert_eq!(ty, 1),
            Ok(Frame::Pong) => prop_assert_eq!(ty, 0),
            Ok(_) | Err(_) => {}
        }
    }

}
