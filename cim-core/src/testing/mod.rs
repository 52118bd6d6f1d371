//! Test support shared by the implementations of the seams (feature `testing`): proptest
//! strategies for the data model and stream checks used by every codec's property tests, and
//! the conformance suite every [`SessionManager`](crate::SessionManager) passes
//! ([`sessions::conformance`]).
//!
//! Strings mix arbitrary Unicode with the characters that break naive encoders (XML and JSON
//! specials, control characters, the XML terminators `\x08` and `\0`, `]]>`), and now and then
//! a long one; integers favour the extremes; maps are empty, small or large.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test support: a failed check panics

pub mod codec;
#[cfg(feature = "engine")]
pub mod sessions;
#[cfg(feature = "engine")]
pub mod store;

use proptest::prelude::*;

use crate::{DataMap, Frame, Message, ReplyBody, SentBody};

/// Key comparisons made by the [`DataMap`]s of this thread so far: a measure of the work of
/// building and searching maps that does not depend on the machine or its load.
pub fn key_comparisons() -> u64 {
    crate::data::comparisons::get()
}

/// Characters that encoders must escape or split.
const NASTY: &[&str] = &[
    "<",
    ">",
    "&",
    "\"",
    "'",
    "\\",
    "/",
    "]]>",
    "]]",
    "<![CDATA[",
    "\u{0}",
    "\u{8}",
    "\r",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\u{1f}",
    "\u{7f}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{10ffff}",
    "&amp;",
    "&#8;",
    "{\"a\":1}",
    "S_H_RQ",
    "💬",
    "é",
    "中文",
];

/// Any string, biased toward the characters encoders get wrong.
pub fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => any::<String>(),
        3 => prop::collection::vec(
            prop_oneof![
                prop::sample::select(NASTY).prop_map(str::to_owned),
                any::<char>().prop_map(String::from),
                "[a-z0-9 ]{1,8}",
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
        1 => Just(String::new()),
    ]
}

/// A string of up to about 16 KB.
pub fn long_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..4000).prop_map(|cs| cs.into_iter().collect())
}

/// Any `i64`, biased toward 0, ±1 and the extremes.
pub fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1i64),
        any::<i64>(),
        0i64..2_000_000_000_000,
    ]
}

/// An XML name: what the XML codec can carry as a `data` key.
pub fn xml_name() -> impl Strategy<Value = String> + Clone {
    "[A-Za-z_\u{c0}-\u{d6}\u{4e00}-\u{4e20}][A-Za-z0-9_.\u{b7}\u{4e00}-\u{4e20}-]{0,12}"
}

/// A `data` map whose keys come from `keys`: empty, small or large.
pub fn data_map<K>(keys: K) -> impl Strategy<Value = DataMap>
where
    K: Strategy<Value = String> + Clone,
{
    prop_oneof![
        Just(DataMap::new()),
        prop::collection::vec((keys.clone(), text()), 1..8).prop_map(|kv| kv.into_iter().collect()),
        prop::collection::vec((keys, "[a-z0-9]{0,8}"), 50..120)
            .prop_map(|kv| kv.into_iter().collect()),
    ]
}

/// Any [`Message`]; the content is sometimes long, and about half carry an attachment.
pub fn message() -> impl Strategy<Value = Message> {
    (
        (int(), text(), text(), text(), text()),
        (
            text(),
            text(),
            prop_oneof![4 => text(), 1 => long_text()],
            int(),
        ),
        prop_oneof![
            1 => Just((String::new(), String::new())),
            1 => (text(), text()),
        ],
    )
        .prop_map(
            |(
                (id, action, title, sender, receiver),
                (format, extra, content, timestamp),
                (file, file_type),
            )| Message {
                id,
                action,
                title,
                content,
                sender,
                receiver,
                format,
                extra,
                timestamp,
                file,
                file_type,
            },
        )
}

/// Any [`SentBody`] with data keys from `keys`.
pub fn sent_body<K>(keys: K) -> impl Strategy<Value = SentBody>
where
    K: Strategy<Value = String> + Clone,
{
    (text(), int(), data_map(keys)).prop_map(|(key, timestamp, data)| SentBody {
        key,
        timestamp,
        data,
    })
}

/// Any [`ReplyBody`] with data keys from `keys`.
pub fn reply_body<K>(keys: K) -> impl Strategy<Value = ReplyBody>
where
    K: Strategy<Value = String> + Clone,
{
    (text(), text(), text(), int(), data_map(keys)).prop_map(
        |(key, code, message, timestamp, data)| ReplyBody {
            key,
            code,
            message,
            data,
            timestamp,
        },
    )
}

/// Any [`Frame`] with data keys from `keys`.
pub fn frame_with_keys<K>(keys: K) -> impl Strategy<Value = Frame>
where
    K: Strategy<Value = String> + Clone,
{
    prop_oneof![
        1 => Just(Frame::Ping),
        1 => Just(Frame::Pong),
        3 => message().prop_map(Frame::Message),
        3 => sent_body(keys.clone()).prop_map(Frame::Sent),
        3 => reply_body(keys).prop_map(Frame::Reply),
    ]
}

/// Any [`Frame`]; data keys are arbitrary strings.
pub fn frame() -> impl Strategy<Value = Frame> {
    frame_with_keys(text())
}

/// A typical pushed message, as used by the benchmarks: six short string fields and a
/// 100-byte content.
pub fn typical_message() -> Message {
    Message {
        id: 1_700_000_000_123_456,
        action: "2".into(),
        title: "news".into(),
        content: "x".repeat(100),
        sender: "system".into(),
        receiver: "user-10000".into(),
        format: "txt".into(),
        extra: "ext".into(),
        timestamp: 1_700_000_000_000,
        ..Message::default()
    }
}

// ---- checks shared by the codecs' property tests ------------------------------------------

use bytes::BytesMut;

use crate::{CodecError, StreamCodec};

/// What decoding a stream gave: the frames, then how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Every frame decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding, if any.
    pub error: Option<CodecError>,
    /// Bytes left undecoded at the end (0 after an error).
    pub pending: usize,
}

/// Feeds `chunks` one after another to a fresh codec, decoding as many frames as possible after
/// each, until the first error. Also checks that the codec takes some bytes whenever it returns
/// a frame.
pub fn decode_chunks<C: StreamCodec>(mut codec: C, chunks: &[&[u8]]) -> Decoded {
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        src.extend_from_slice(chunk);
        loop {
            let before = src.len();
            match codec.decode(&mut src) {
                Ok(Some(frame)) => {
                    assert!(src.len() < before, "a frame was decoded from no bytes");
                    frames.push(frame);
                }
                // A codec may drop bytes that carry nothing (the XML codec's stray terminators).
                Ok(None) => break,
                Err(error) => {
                    return Decoded {
                        frames,
                        error: Some(error),
                        pending: 0,
                    };
                }
            }
        }
    }
    Decoded {
        frames,
        error: None,
        pending: src.len(),
    }
}

/// Splits `bytes` at the given points (taken modulo its length, in any order).
pub fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if bytes.is_empty() {
                0
            } else {
                p % (bytes.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        out.push(bytes.get(from..cut).unwrap_or_default().to_vec());
        from = cut;
    }
    out.push(bytes.get(from..).unwrap_or_default().to_vec());
    out
}

/// Decoding `bytes` whole and split at `points` must give the same frames and the same end.
pub fn assert_split_invariant<C: StreamCodec>(
    make: impl Fn() -> C,
    bytes: &[u8],
    points: &[usize],
) {
    let whole = decode_chunks(make(), &[bytes]);
    let pieces = split_at_points(bytes, points);
    let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let split = decode_chunks(make(), &refs);
    assert_eq!(
        split.frames, whole.frames,
        "split feeding changed the frames"
    );
    assert_eq!(
        split.error.is_some(),
        whole.error.is_some(),
        "split feeding changed the outcome: {:?} vs {:?}",
        split.error,
        whole.error
    );
    if whole.error.is_none() {
        assert_eq!(split.pending, whole.pending);
    }
}
