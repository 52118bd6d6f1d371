//! # cim-codec-binary
//!
//! CIM's binary protocol (docs/protocol.md sections 2 and 3), byte-exact with the stock clients:
//!
//! - [`BinaryCodec`], a [`StreamCodec`] for the app TCP port: every frame is
//!   `[type: u8][len: u16 little-endian][protobuf body]`;
//! - [`WsBinaryCodec`], a [`PacketCodec`] for WebSocket in protobuf mode: every binary message is
//!   `[type: u8][protobuf body]`.
//!
//! ```
//! use bytes::BytesMut;
//! use cim_codec_binary::BinaryCodec;
//! use cim_core::{Frame, StreamCodec};
//!
//! let mut codec = BinaryCodec::new();
//! let mut wire = BytesMut::new();
//! codec.encode(&Frame::Ping, &mut wire).unwrap();
//! assert_eq!(&wire[..], b"\x01\x04\x00PING");
//!
//! // A PONG arriving in two pieces: the first call asks for more bytes.
//! let mut input = BytesMut::from(&b"\x00\x04"[..]);
//! assert_eq!(codec.decode(&mut input).unwrap(), None);
//! input.extend_from_slice(b"\x00PONG");
//! assert_eq!(codec.decode(&mut input).unwrap(), Some(Frame::Pong));
//! assert!(input.is_empty());
//! ```
//!
//! Bodies are limited to 65535 bytes by the 16-bit length; [`BinaryCodec::with_max_body`] sets a
//! lower limit. A longer frame is refused with [`CodecError::TooLarge`] on both sides: the
//! decoder refuses it as soon as the header arrives, before buffering any of it, and the
//! encoder refuses rather than writing a corrupt length (which CIM's Java encoder does).
//!
//! A message's attachment ([`Message::file`](cim_core::Message::file) and `file_type`), which
//! CIM 4.x's protobuf `Message` lacks, is carried in fields 10 (`file`) and 11 (`fileType`),
//! both strings, written only when set. Stock clients skip them as unknown fields; a message
//! without an attachment is encoded exactly as CIM encodes it.
//!
//! A `data` map of more than [`DataMap::DEFAULT_MAX_ENTRIES`] entries is refused with
//! [`CodecError::TooManyEntries`]; `with_max_entries` on either codec sets another limit.

mod proto;
mod reader;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cim_core::{
    CodecError, DataMap, Frame, FrameType, OwnedPacket, Packet, PacketCodec, StreamCodec,
    WireFormat,
};

/// The largest body the 16-bit length field can carry.
pub const MAX_BODY: usize = u16::MAX as usize;

/// Length of the TCP frame header: type byte and 16-bit length.
pub const HEADER_LEN: usize = 3;

const PING_BODY: &[u8] = b"PING";
const PONG_BODY: &[u8] = b"PONG";

/// The body length of `frame`: what the TCP frame's length field says, without encoding it.
pub fn body_len(frame: &Frame) -> usize {
    match frame {
        Frame::Ping => PING_BODY.len(),
        Frame::Pong => PONG_BODY.len(),
        Frame::Message(m) => proto::message_len(m),
        Frame::Sent(s) => proto::sent_len(s),
        Frame::Reply(r) => proto::reply_len(r),
    }
}

/// Writes the body of `frame`; `dst` has room for [`body_len`] bytes.
fn put_body(frame: &Frame, dst: &mut impl BufMut) {
    match frame {
        Frame::Ping => dst.put_slice(PING_BODY),
        Frame::Pong => dst.put_slice(PONG_BODY),
        Frame::Message(m) => proto::put_message(m, dst),
        Frame::Sent(s) => proto::put_sent(s, dst),
        Frame::Reply(r) => proto::put_reply(r, dst),
    }
}

/// Decodes the body of a frame of type `ty`, taking `data` maps of up to `max_entries` entries.
/// Heartbeat bodies are ignored.
fn decode_body(ty: FrameType, body: &[u8], max_entries: usize) -> Result<Frame, CodecError> {
    Ok(match ty {
        FrameType::Pong => Frame::Pong,
        FrameType::Ping => Frame::Ping,
        FrameType::Message => Frame::Message(proto::decode_message(body)?),
        FrameType::Sent => Frame::Sent(proto::decode_sent(body, max_entries)?),
        FrameType::Reply => Frame::Reply(proto::decode_reply(body, max_entries)?),
    })
}

fn frame_type(byte: u8) -> Result<FrameType, CodecError> {
    FrameType::from_byte(byte).ok_or(CodecError::UnknownType(byte))
}

/// The TCP framing `[type: u8][len: u16 LE][body]`.
///
/// Its two limits are kept as `u32`s: every TCP connection holds a codec, and the pair then
/// takes one word.
#[derive(Clone, Debug)]
pub struct BinaryCodec {
    max_body: u32,
    max_entries: u32,
}

/// `n` as a `u32` limit, the largest when it does not fit (a limit that large is no limit).
const fn limit(n: usize) -> u32 {
    if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    }
}

impl BinaryCodec {
    /// A codec that takes bodies up to [`MAX_BODY`] bytes and maps of up to
    /// [`DataMap::DEFAULT_MAX_ENTRIES`] entries.
    pub const fn new() -> Self {
        Self {
            max_body: MAX_BODY as u32,
            max_entries: limit(DataMap::DEFAULT_MAX_ENTRIES),
        }
    }

    /// Limits bodies, in both directions, to `max` bytes (at most [`MAX_BODY`]).
    pub fn with_max_body(max: usize) -> Self {
        Self {
            max_body: limit(max.min(MAX_BODY)),
            ..Self::new()
        }
    }

    /// Refuses, on decode, `data` maps of more than `max` entries.
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = limit(max);
        self
    }

    /// The body limit in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body as usize
    }

    /// The limit of entries in a decoded `data` map.
    pub fn max_entries(&self) -> usize {
        self.max_entries as usize
    }

    /// Appends the encoding of `frame` to `dst` (header and body together, so one write carries
    /// both, as the stock Android client needs).
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = body_len(frame);
        if len > self.max_body() {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_body(),
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(frame.frame_type().byte());
        // `len <= max_body <= u16::MAX` was checked above.
        dst.put_u16_le(len as u16);
        put_body(frame, dst);
        Ok(())
    }

    /// Encodes `frame` into a buffer of its own, for sharing among many connections.
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, CodecError> {
        let mut buf = BytesMut::new();
        self.encode_frame(frame, &mut buf)?;
        Ok(buf.freeze())
    }
}

impl Default for BinaryCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamCodec for BinaryCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(&type_byte) = src.first() else {
            return Ok(None);
        };
        // Refuse an unknown type at once, without waiting for a length that may never come.
        let ty = frame_type(type_byte)?;
        let Some(&[lo, hi]) = src.get(1..HEADER_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_le_bytes([lo, hi]));
        if len > self.max_body() {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_body(),
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        // Decoded from a plain slice, then skipped: splitting the frame off would share the
        // buffer (a reference count, an allocation the first time), and prost reads a `&[u8]`
        // with far less work per field than a `BytesMut`.
        let frame = match src.get(HEADER_LEN..total) {
            Some(body) => decode_body(ty, body, self.max_entries()),
            None => return Ok(None),
        };
        src.advance(total);
        frame.map(Some)
    }

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(frame, dst)
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::BinaryStream)
    }
}

/// WebSocket protobuf mode: one binary message `[type: u8][body]` per frame.
#[derive(Clone, Copy, Debug)]
pub struct WsBinaryCodec {
    max_entries: usize,
}

/// The codec with the default limits, usable as a value as when the codec had no settings:
/// `WsBinaryCodec.decode_payload(..)`.
#[allow(non_upper_case_globals)]
pub const WsBinaryCodec: WsBinaryCodec = WsBinaryCodec::new();

impl Default for WsBinaryCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl WsBinaryCodec {
    /// A codec that takes maps of up to [`DataMap::DEFAULT_MAX_ENTRIES`] entries.
    pub const fn new() -> Self {
        Self {
            max_entries: DataMap::DEFAULT_MAX_ENTRIES,
        }
    }

    /// Refuses, on decode, `data` maps of more than `max` entries.
    pub const fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// The limit of entries in a decoded `data` map.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Encodes `frame` as the payload of one binary WebSocket message.
    pub fn encode_payload(&self, frame: &Frame) -> Bytes {
        let len = body_len(frame);
        let mut buf = BytesMut::with_capacity(1 + len);
        buf.put_u8(frame.frame_type().byte());
        put_body(frame, &mut buf);
        buf.freeze()
    }

    /// Decodes the payload of one binary WebSocket message.
    pub fn decode_payload(&self, payload: &[u8]) -> Result<Frame, CodecError> {
        let Some((&type_byte, body)) = payload.split_first() else {
            return Err(CodecError::malformed("packet", "empty binary message"));
        };
        decode_body(frame_type(type_byte)?, body, self.max_entries)
    }
}

impl PacketCodec for WsBinaryCodec {
    fn decode(&self, packet: Packet<'_>) -> Result<Frame, CodecError> {
        match packet {
            Packet::Binary(payload) => self.decode_payload(payload),
            Packet::Text(_) => Err(CodecError::WrongPacketKind { expected: "binary" }),
        }
    }

    fn encode(&self, frame: &Frame) -> Result<OwnedPacket, CodecError> {
        Ok(OwnedPacket::Binary(self.encode_payload(frame)))
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::BinaryPacket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::{DataMap, ReplyBody, SentBody};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    const BIND: &str = "03 36 00 0a 0b 63 6c 69 65 6e 74 5f 62 69 6e 64 10 80 d0 95 ff bc 31
        1a 0c 0a 03 75 69 64 12 05 31 30 30 30 30 1a 12 0a 07 63 68 61 6e 6e 65 6c 12 07 61 6e 64 72 6f 69 64";
    const BIND_REPLY: &str =
        "04 19 00 0a 0b 63 6c 69 65 6e 74 5f 62 69 6e 64 12 03 32 30 30 20 fb d0 95 ff bc 31";

    fn bind_request() -> Frame {
        Frame::Sent(SentBody {
            key: "client_bind".into(),
            timestamp: 1_700_000_000_000,
            data: DataMap::from([("uid", "10000"), ("channel", "android")]),
        })
    }

    fn bind_reply() -> Frame {
        Frame::Reply(ReplyBody {
            key: "client_bind".into(),
            code: "200".into(),
            timestamp: 1_700_000_000_123,
            ..ReplyBody::default()
        })
    }

    #[test]
    fn worked_example_bind_both_ways() {
        let wire = hex(BIND);
        let mut src = BytesMut::from(&wire[..]);
        assert_eq!(
            BinaryCodec::new().decode(&mut src).unwrap(),
            Some(bind_request())
        );
        assert!(src.is_empty());
        let mut out = BytesMut::new();
        BinaryCodec::new()
            .encode(&bind_request(), &mut out)
            .unwrap();
        assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn worked_example_reply_both_ways() {
        let wire = hex(BIND_REPLY);
        let mut out = BytesMut::new();
        BinaryCodec::new().encode(&bind_reply(), &mut out).unwrap();
        assert_eq!(&out[..], &wire[..]);
        let mut src = BytesMut::from(&wire[..]);
        assert_eq!(
            BinaryCodec::new().decode(&mut src).unwrap(),
            Some(bind_reply())
        );
    }

    #[test]
    fn exact_heartbeats() {
        let mut out = BytesMut::new();
        let mut c = BinaryCodec::new();
        c.encode(&Frame::Ping, &mut out).unwrap();
        c.encode(&Frame::Pong, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &hex("01 04 00 50 49 4E 47 00 04 00 50 4F 4E 47")[..]
        );
        assert_eq!(c.decode(&mut out).unwrap(), Some(Frame::Ping));
        assert_eq!(c.decode(&mut out).unwrap(), Some(Frame::Pong));
        assert_eq!(c.decode(&mut out).unwrap(), None);
        // A PONG whose body is not "PONG" is still a PONG.
        let mut odd = BytesMut::from(&b"\x00\x00\x00"[..]);
        assert_eq!(c.decode(&mut odd).unwrap(), Some(Frame::Pong));
    }

    #[test]
    fn ws_packets() {
        let codec = WsBinaryCodec;
        assert_eq!(&codec.encode_payload(&Frame::Ping)[..], b"\x01PING");
        assert_eq!(&codec.encode_payload(&Frame::Pong)[..], b"\x00PONG");
        let wire = hex(BIND);
        // Same body, without the length field.
        let mut packet = vec![3u8];
        packet.extend_from_slice(&wire[3..]);
        assert_eq!(
            codec.decode(Packet::Binary(&packet)).unwrap(),
            bind_request()
        );
        assert_eq!(&codec.encode_payload(&bind_request())[..], &packet[..]);
        assert!(matches!(
            codec.decode(Packet::Text("x")),
            Err(CodecError::WrongPacketKind { .. })
        ));
        assert!(codec.decode(Packet::Binary(&[])).is_err());
        assert_eq!(
            codec.decode(Packet::Binary(&[9, 1])),
            Err(CodecError::UnknownType(9))
        );
    }

    #[test]
    fn unknown_type_is_refused_at_the_first_byte() {
        let mut src = BytesMut::from(&b"\x07"[..]);
        assert_eq!(
            BinaryCodec::new().decode(&mut src),
            Err(CodecError::UnknownType(7))
        );
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut c = BinaryCodec::with_max_body(100);
        let mut src = BytesMut::from(&[3u8, 101, 0][..]);
        assert_eq!(
            c.decode(&mut src),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        // At the edge: exactly the limit is accepted (and waits for the body).
        let mut src = BytesMut::from(&[0u8, 100, 0][..]);
        assert_eq!(c.decode(&mut src), Ok(None));
    }

    #[test]
    fn encode_refuses_bodies_over_the_limit() {
        let frame = |n: usize| {
            Frame::Message(cim_core::Message {
                content: "a".repeat(n),
                ..Default::default()
            })
        };
        // Tag (1) + 3-byte length varint + content.
        let mut out = BytesMut::new();
        BinaryCodec::new()
            .encode(&frame(MAX_BODY - 4), &mut out)
            .unwrap();
        assert_eq!(out.len(), HEADER_LEN + MAX_BODY);
        assert_eq!(&out[1..3], &[0xff, 0xff]);
        let mut out = BytesMut::new();
        assert_eq!(
            BinaryCodec::new().encode(&frame(MAX_BODY - 3), &mut out),
            Err(CodecError::TooLarge {
                len: MAX_BODY + 1,
                max: MAX_BODY
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn bad_body_is_an_error() {
        // A SENT frame whose body claims a 10-byte string but has 1 byte.
        let mut src = BytesMut::from(&[3u8, 3, 0, 0x0a, 10, b'x'][..]);
        assert!(matches!(
            BinaryCodec::new().decode(&mut src),
            Err(CodecError::Malformed { .. })
        ));
        // Invalid UTF-8 in a string field.
        let mut src = BytesMut::from(&[3u8, 3, 0, 0x0a, 1, 0xff][..]);
        assert!(BinaryCodec::new().decode(&mut src).is_err());
    }

    /// A request whose map has `n` distinct entries.
    fn wide_request(n: usize) -> Frame {
        Frame::Sent(SentBody {
            key: "k".into(),
            timestamp: 0,
            data: (0..n).map(|i| (format!("{i:x}"), "v")).collect(),
        })
    }

    fn tcp_wire(frame: &Frame) -> BytesMut {
        let mut wire = BytesMut::new();
        BinaryCodec::new().encode(frame, &mut wire).unwrap();
        wire
    }

    fn ws_wire(frame: &Frame) -> Bytes {
        WsBinaryCodec.encode_payload(frame)
    }

    #[test]
    fn map_limit_at_the_edge_tcp() {
        let mut codec = BinaryCodec::new().with_max_entries(40);
        assert_eq!(codec.max_entries(), 40);
        let mut src = tcp_wire(&wide_request(40));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(wide_request(40)));
        let mut src = tcp_wire(&wide_request(41));
        assert_eq!(
            codec.decode(&mut src),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        assert_eq!(
            CodecError::TooManyEntries { max: 40 }.to_string(),
            "data map exceeds the limit of 40 entries"
        );
        // The default: 256.
        let mut src = tcp_wire(&wide_request(256));
        assert!(BinaryCodec::new().decode(&mut src).unwrap().is_some());
        let mut src = tcp_wire(&wide_request(257));
        assert_eq!(
            BinaryCodec::new().decode(&mut src),
            Err(CodecError::TooManyEntries { max: 256 })
        );
        // Replies too, and a repeated key counts once.
        let reply = |n: usize| {
            let mut r = ReplyBody::ok("k");
            r.data = (0..n).map(|i| (i.to_string(), "v")).collect();
            Frame::Reply(r)
        };
        let mut src = tcp_wire(&reply(41));
        assert_eq!(
            codec.decode(&mut src),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        // Entry 41 repeats key "0" (field 5, length 6: key "0", value "w"): the last one wins.
        let mut packet = ws_wire(&reply(40)).to_vec();
        packet.extend_from_slice(&[0x2a, 6, 0x0a, 1, b'0', 0x12, 1, b'w']);
        let limited = WsBinaryCodec::new().with_max_entries(40);
        let Ok(Frame::Reply(r)) = limited.decode(Packet::Binary(&packet)) else {
            panic!("a repeated key was counted twice")
        };
        assert_eq!((r.data.len(), r.data.get("0")), (40, Some("w")));
    }

    #[test]
    fn map_limit_at_the_edge_ws() {
        let codec = WsBinaryCodec::new().with_max_entries(40);
        assert_eq!(
            codec.decode(Packet::Binary(&ws_wire(&wide_request(40)))),
            Ok(wide_request(40))
        );
        assert_eq!(
            codec.decode(Packet::Binary(&ws_wire(&wide_request(41)))),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        assert_eq!(WsBinaryCodec.max_entries(), DataMap::DEFAULT_MAX_ENTRIES);
        assert_eq!(
            WsBinaryCodec.decode(Packet::Binary(&ws_wire(&wide_request(257)))),
            Err(CodecError::TooManyEntries { max: 256 })
        );
    }

    /// Decoding a frame of n entries makes O(n) key comparisons: a frame of 4 000 entries (the
    /// most a 64 KB body holds with these keys) costs at most two per entry beyond the scan of
    /// the first 16, where inserting one by one into a scanned list cost n²/2 (8 million).
    #[test]
    fn decoding_a_wide_map_is_linear() {
        let n = 4000;
        let mut src = tcp_wire(&wide_request(n));
        let ws = ws_wire(&wide_request(2 * n));
        let mut codec = BinaryCodec::new().with_max_entries(usize::MAX);
        let before = cim_core::testing::key_comparisons();
        assert!(codec.decode(&mut src).unwrap().is_some());
        let cost = cim_core::testing::key_comparisons() - before;
        assert!(
            cost <= 2 * n as u64 + 120,
            "{cost} comparisons for {n} entries"
        );

        let before = cim_core::testing::key_comparisons();
        let packet = WsBinaryCodec::new().with_max_entries(usize::MAX);
        assert!(packet.decode(Packet::Binary(&ws)).is_ok());
        let cost = cim_core::testing::key_comparisons() - before;
        assert!(
            cost <= 4 * n as u64 + 120,
            "{cost} comparisons for {} entries",
            2 * n
        );
    }

    #[test]
    fn truncated_stream_at_eof() {
        let wire = hex(BIND);
        let mut src = BytesMut::from(&wire[..10]);
        assert_eq!(
            BinaryCodec::new().decode_eof(&mut src),
            Err(CodecError::Truncated { pending: 10 })
        );
    }
}
