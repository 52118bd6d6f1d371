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

/// Decodes a protobuf `SentBody` body whose map has at most `max_entries` entries.
pub(crate) fn decode_sent(body: impl Buf, max_entries: usize) -> Result<SentBody, CodecError> {
    let p = <ProtoSentBody as prost::Message>::decode(body)
        .map_err(|e| CodecError::malformed("request body", e))?;
    Ok(SentBody {
        key: p.key,
        timestamp: p.timestamp,
        data: entries_to_map(p.data, max_entries)?,
    })
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
