//! Protobuf bodies: decoding through prost-derived structs (whose strings are moved, not
//! copied, into the data model) and encoding straight from borrowed data-model values with
//! prost's field encoders, so encoding never clones a string.
//!
//! Maps are declared as repeated entries, which is exactly their wire form, so the decoder keeps
//! the sender's order.
//!
//! A message's attachment (`file`, `fileType`), which CIM 4.x's `Message` does not have, goes in
//! fields 10 and 11, written only when set: a message without one is byte for byte what CIM
//! writes, and stock clients skip the two fields as unknown (proto3).

use bytes::{Buf, BufMut};
use cim_core::{CodecError, DataMap, Message, ReplyBody, SentBody};
use prost::encoding::{self, WireType};

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoMessage {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(string, tag = "2")]
    action: String,
    #[prost(string, tag = "3")]
    content: String,
    #[prost(string, tag = "4")]
    sender: String,
    #[prost(string, tag = "5")]
    receiver: String,
    #[prost(string, tag = "6")]
    extra: String,
    #[prost(string, tag = "7")]
    title: String,
    #[prost(string, tag = "8")]
    format: String,
    #[prost(int64, tag = "9")]
    timestamp: i64,
    #[prost(string, tag = "10")]
    file: String,
    #[prost(string, tag = "11")]
    file_type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// prost's reading of a `SentBody`, which the field reader (`reader.rs`) is held to in tests.
#[cfg(test)]
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoSentBody {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
    #[prost(message, repeated, tag = "3")]
    data: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoReplyBody {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    code: String,
    #[prost(string, tag = "3")]
    message: String,
    #[prost(int64, tag = "4")]
    timestamp: i64,
    #[prost(message, repeated, tag = "5")]
    data: Vec<Entry>,
}

/// The map of decoded entries, refused as soon as it would have more than `max` entries.
fn entries_to_map(entries: Vec<Entry>, max: usize) -> Result<DataMap, CodecError> {
    DataMap::from_entries_within(entries.into_iter().map(|e| (e.key, e.value)), max)
}

/// Decodes a protobuf `Message` body.
pub(crate) fn decode_message(body: impl Buf) -> Result<Message, CodecError> {
    let p = <ProtoMessage as prost::Message>::decode(body)
        .map_err(|e| CodecError::malformed("message body", e))?;
    Ok(Message {
        id: p.id,
        action: p.action,
        title: p.title,
        content: p.content,
        sender: p.sender,
        receiver: p.receiver,
        format: p.format,
        extra: p.extra,
        timestamp: p.timestamp,
        file: p.file,
        file_type: p.file_type,
    })
}

/// Decodes a protobuf `SentBody` body whose map has at most `max_entries` entries (with the
/// field reader: every request takes this path).
pub(crate) fn decode_sent(body: &[u8], max_entries: usize) -> Result<SentBody, CodecError> {
    crate::reader::sent_body(body, max_entries)
}

/// Decodes a protobuf `ReplyBody` body whose map has at most `max_entries` entries.
pub(crate) fn decode_reply(body: impl Buf, max_entries: usize) -> Result<ReplyBody, CodecError> {
    let p = <ProtoReplyBody as prost::Message>::decode(body)
        .map_err(|e| CodecError::malformed("reply body", e))?;
    Ok(ReplyBody {
        key: p.key,
        code: p.code,
        message: p.message,
        data: entries_to_map(p.data, max_entries)?,
        timestamp: p.timestamp,
    })
}

// ---- encoding from borrowed values -------------------------------------------------------

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn int_len(tag: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(v as u64)
    }
}

fn put_int(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::encode_key(tag, WireType::Varint, buf);
        encoding::encode_varint(v as u64, buf);
    }
}

/// Length of one map entry's body. Key and value are always written, as Java's protobuf does.
fn entry_body_len(k: &str, v: &str) -> usize {
    2 + encoding::encoded_len_varint(k.len() as u64)
        + k.len()
        + encoding::encoded_len_varint(v.len() as u64)
        + v.len()
}

fn map_len(tag: u32, map: &DataMap) -> usize {
    map.iter()
        .map(|(k, v)| {
            let n = entry_body_len(k, v);
            encoding::key_len(tag) + encoding::encoded_len_varint(n as u64) + n
        })
        .sum()
}

fn put_map(tag: u32, map: &DataMap, buf: &mut impl BufMut) {
    for (k, v) in map.iter() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(entry_body_len(k, v) as u64, buf);
        for (t, s) in [(1, k), (2, v)] {
            encoding::encode_key(t, WireType::LengthDelimited, buf);
            encoding::encode_varint(s.len() as u64, buf);
            buf.put_slice(s.as_bytes());
        }
    }
}

/// Encoded length of a `Message` body.
pub(crate) fn message_len(m: &Message) -> usize {
    int_len(1, m.id)
        + str_len(2, &m.action)
        + str_len(3, &m.content)
        + str_len(4, &m.sender)
        + str_len(5, &m.receiver)
        + str_len(6, &m.extra)
        + str_len(7, &m.title)
        + str_len(8, &m.format)
        + int_len(9, m.timestamp)
        + str_len(10, &m.file)
        + str_len(11, &m.file_type)
}

/// Writes a `Message` body; `buf` must have room for [`message_len`] bytes.
pub(crate) fn put_message(m: &Message, buf: &mut impl BufMut) {
    put_int(1, m.id, buf);
    put_str(2, &m.action, buf);
    put_str(3, &m.content, buf);
    put_str(4, &m.sender, buf);
    put_str(5, &m.receiver, buf);
    put_str(6, &m.extra, buf);
    put_str(7, &m.title, buf);
    put_str(8, &m.format, buf);
    put_int(9, m.timestamp, buf);
    put_str(10, &m.file, buf);
    put_str(11, &m.file_type, buf);
}

/// Encoded length of a `SentBody` body.
pub(crate) fn sent_len(s: &SentBody) -> usize {
    str_len(1, &s.key) + int_len(2, s.timestamp) + map_len(3, &s.data)
}

/// Writes a `SentBody` body.
pub(crate) fn put_sent(s: &SentBody, buf: &mut impl BufMut) {
    put_str(1, &s.key, buf);
    put_int(2, s.timestamp, buf);
    put_map(3, &s.data, buf);
}

/// Encoded length of a `ReplyBody` body.
pub(crate) fn reply_len(r: &ReplyBody) -> usize {
    str_len(1, &r.key)
        + str_len(2, &r.code)
        + str_len(3, &r.message)
        + int_len(4, r.timestamp)
        + map_len(5, &r.data)
}

/// Writes a `ReplyBody` body.
pub(crate) fn put_reply(r: &ReplyBody, buf: &mut impl BufMut) {
    put_str(1, &r.key, buf);
    put_str(2, &r.code, buf);
    put_str(3, &r.message, buf);
    put_int(4, r.timestamp, buf);
    put_map(5, &r.data, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Our hand-written encoder writes what prost's derived encoder writes.
    #[test]
    fn encoder_matches_prost() {
        let m = Message {
            file: "http://files.example/a.png".into(),
            file_type: "image".into(),
            ..cim_core::testing::typical_message()
        };
        let mut ours = Vec::new();
        put_message(&m, &mut ours);
        assert_eq!(ours.len(), message_len(&m));
        let theirs = ProtoMessage {
            id: m.id,
            action: m.action.clone(),
            content: m.content.clone(),
            sender: m.sender.clone(),
            receiver: m.receiver.clone(),
            extra: m.extra.clone(),
            title: m.title.clone(),
            format: m.format.clone(),
            timestamp: m.timestamp,
            file: m.file.clone(),
            file_type: m.file_type.clone(),
        }
        .encode_to_vec();
        assert_eq!(ours, theirs);
        assert_eq!(decode_message(&ours[..]).unwrap(), m);

        let r = ReplyBody::ok("k").with("a", "").with("", "b");
        let mut ours = Vec::new();
        put_reply(&r, &mut ours);
        assert_eq!(ours.len(), reply_len(&r));
        assert_eq!(decode_reply(&ours[..], 16).unwrap(), r);
    }

    /// The attachment is fields 10 and 11, after everything CIM writes, and only when set.
    #[test]
    fn attachment_fields() {
        let plain = cim_core::testing::typical_message();
        let with = Message {
            file: "f".into(),
            file_type: "image".into(),
            ..plain.clone()
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        put_message(&plain, &mut a);
        put_message(&with, &mut b);
        let mut expected = a.clone();
        expected.extend_from_slice(b"\x52\x01f\x5a\x05image");
        assert_eq!(b, expected);
        // A stock client's decoder (the 4.x fields only) reads the same message from both.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Stock {
            #[prost(int64, tag = "1")]
            id: i64,
            #[prost(string, tag = "3")]
            content: String,
            #[prost(int64, tag = "9")]
            timestamp: i64,
        }
        assert_eq!(
            Stock::decode(&a[..]).unwrap(),
            Stock::decode(&b[..]).unwrap()
        );
    }

    /// prost's derived decoder, the reference the field reader is held to.
    fn prost_sent(body: &[u8], max: usize) -> Result<SentBody, CodecError> {
        let p =
            ProtoSentBody::decode(body).map_err(|e| CodecError::malformed("request body", e))?;
        Ok(SentBody {
            key: p.key,
            timestamp: p.timestamp,
            data: entries_to_map(p.data, max)?,
        })
    }

    /// Bodies that take each path of the reader: typical, repeated and missing fields, unknown
    /// fields of every wire type, wrong wire types, bad UTF-8, truncation.
    fn tricky_bodies() -> Vec<Vec<u8>> {
        let mut typical = Vec::new();
        let request = SentBody::new("client_message")
            .with("receiver", "user-10000")
            .with("action", "2")
            .with("content", "x".repeat(100))
            .with("requestId", "17");
        put_sent(&request, &mut typical);
        let mut out = vec![
            typical.clone(),
            vec![],
            b"\x0a\x03abc\x0a\x01d".to_vec(), // key twice: the last wins
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01".to_vec(), // timestamp -1
            b"\x1a\x00\x1a\x02\x0a\x00".to_vec(), // entries without key or value
            b"\x1a\x06\x0a\x01k\x12\x01v\x1a\x04\x12\x02w2".to_vec(), // one key, two values
            b"\x1a\x08\x0a\x01k\x18\x05\x12\x01v".to_vec(), // unknown varint in an entry
            b"\x25\x01\x02\x03\x04\x29\x01\x02\x03\x04\x05\x06\x07\x08\x0a\x01k".to_vec(), // fixed32, fixed64
            b"\x3a\x02hi\x40\x07\x0a\x01k".to_vec(), // unknown length-delimited, varint
            b"\x0b\x0c\x0a\x01k".to_vec(),           // an empty group
            b"\x0b\x0a\x01k".to_vec(),               // a group that never ends
            b"\x08\x01".to_vec(),                    // key as a varint
            b"\x12\x01a".to_vec(),                   // timestamp as bytes
            b"\x18\x01".to_vec(),                    // data as a varint
            b"\x1a\x03\x08\x01\x00".to_vec(),        // an entry's key as a varint
            b"\x0a\x02\xff\xfe".to_vec(),            // key not UTF-8
            b"\x1a\x04\x12\x02\xc3\x28".to_vec(),    // value not UTF-8
            b"\x0a\x05ab".to_vec(),                  // truncated string
            b"\x0a".to_vec(),                        // truncated length
            b"\x10\xff".to_vec(),                    // truncated varint
            b"\x00".to_vec(),                        // field number 0
            b"\x0e".to_vec(),                        // wire type 6
            b"\x80\x80\x80\x80\x10\x01".to_vec(),    // a key past u32 (tag 2^29, varint)
            b"\xf8\xff\xff\xff\x0f\x01".to_vec(),    // the largest field number
            b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(), // length past u64
        ];
        for cut in 0..typical.len() {
            out.push(typical.get(..cut).unwrap().to_vec());
        }
        out
    }

    /// The field reader reads every body as prost does: the same request, or an error for
    /// the same bodies.
    #[test]
    fn the_field_reader_reads_as_prost_does() {
        for body in tricky_bodies() {
            let ours = decode_sent(&body, 16);
            let theirs = prost_sent(&body, 16);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{body:x?}: {ours:?} / {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                assert_eq!((&a.key, a.timestamp), (&b.key, b.timestamp), "{body:x?}");
                assert_eq!(
                    a.data.iter().collect::<Vec<_>>(),
                    b.data.iter().collect::<Vec<_>>(),
                    "{body:x?}"
                );
            }
        }
    }

    /// At the entry limit both accept; one past it both refuse, naming the limit.
    #[test]
    fn the_field_reader_holds_the_entry_limit() {
        let mut body = Vec::new();
        let sent = (0..8).fold(SentBody::new("k"), |s, i| s.with(format!("k{i}"), "v"));
        put_sent(&sent, &mut body);
        assert_eq!(decode_sent(&body, 8).unwrap().data.len(), 8);
        assert_eq!(
            decode_sent(&body, 7).unwrap_err(),
            CodecError::TooManyEntries { max: 7 }
        );
        assert_eq!(
            prost_sent(&body, 7).unwrap_err(),
            CodecError::TooManyEntries { max: 7 }
        );
    }

    proptest::proptest! {
        /// Arbitrary bytes, and arbitrary requests encoded and then cut or changed at one
        /// byte: the reader and prost agree on every one.
        #[test]
        fn the_field_reader_agrees_with_prost(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            key in ".{0,8}",
            entries in proptest::collection::vec((".{0,6}", ".{0,6}"), 0..6),
            at in proptest::prelude::any::<usize>(),
            to in proptest::prelude::any::<u8>(),
        ) {
            let sent = entries.iter().fold(SentBody::new(key), |s, (k, v)| s.with(k.clone(), v.clone()));
            let mut body = Vec::new();
            put_sent(&sent, &mut body);
            let mut changed = body.clone();
            if !changed.is_empty() {
                let i = at % changed.len();
                if let Some(b) = changed.get_mut(i) { *b = to; }
            }
            for b in [bytes, body, changed] {
                let ours = decode_sent(&b, 4);
                let theirs = prost_sent(&b, 4);
                proptest::prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:x?}", b);
                if let (Ok(x), Ok(y)) = (ours, theirs) {
                    proptest::prop_assert_eq!(x.key, y.key);
                    proptest::prop_assert_eq!(x.timestamp, y.timestamp);
                    proptest::prop_assert_eq!(
                        x.data.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>(),
                        y.data.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    #[test]
    fn negative_ints_take_ten_bytes() {
        let m = Message {
            id: -1,
            ..Message::default()
        };
        assert_eq!(message_len(&m), 11);
        let mut out = Vec::new();
        put_message(&m, &mut out);
        assert_eq!(decode_message(&out[..]).unwrap().id, -1);
    }
}
