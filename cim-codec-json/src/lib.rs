//! # cim-codec-json
//!
//! The WebSocket JSON mode of CIM (docs/protocol.md section 3): every frame is one text message, an
//! envelope `{"type":N,"content":"..."}` whose `content` is the body encoded as a JSON *string*
//! (double-encoded, as the stock web SDK expects).
//!
//! ```
//! use cim_codec_json::JsonCodec;
//! use cim_core::{Frame, OwnedPacket, Packet, PacketCodec};
//!
//! let codec = JsonCodec;
//! let bind = codec
//!     .decode(Packet::Text(
//!         r#"{"type":3,"content":"{\"key\":\"client_bind\",\"data\":{\"uid\":\"10000\",\"n\":7}}"}"#,
//!     ))
//!     .unwrap();
//! let Frame::Sent(body) = bind else { panic!() };
//! assert_eq!(body.get("uid"), "10000");
//! assert_eq!(body.get("n"), "7"); // numbers in `data` are taken as strings
//!
//! assert_eq!(codec.encode(&Frame::Ping).unwrap(), OwnedPacket::Text(r#"{"type":1}"#.into()));
//! ```
//!
//! Decoding is lenient where real clients differ: unknown properties are ignored, `null` reads
//! as an empty string, numbers may stand for strings and numeric strings for numbers, `type`
//! may be a string, and `content` may be an object instead of a string. The envelope's
//! `content` of a PING or PONG is ignored.
//!
//! A message's attachment, which CIM 4.x's message lacks, is written as the properties `file`
//! and `fileType` after `timestamp`, and only when set: a message without one is the text CIM
//! writes, and the stock web SDK hands unknown properties through to the application.
//!
//! A `data` map of more than [`DataMap::DEFAULT_MAX_ENTRIES`] entries is refused with
//! [`CodecError::TooManyEntries`] ([`JsonCodec::with_max_entries`] sets another limit). The
//! limit is checked once the body is parsed, which takes time linear in its length.

use cim_core::{
    CodecError, DataMap, Frame, FrameType, OwnedPacket, Packet, PacketCodec, ReplyBody, SentBody,
    WireFormat,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// The JSON envelope codec.
#[derive(Clone, Copy, Debug)]
pub struct JsonCodec {
    max_entries: usize,
}

/// The codec with the default limits, usable as a value as when the codec had no settings:
/// `JsonCodec.decode_text(..)`.
#[allow(non_upper_case_globals)]
pub const JsonCodec: JsonCodec = JsonCodec::new();

impl Default for JsonCodec {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    ty: serde_json::Value,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

fn frame_type(v: &serde_json::Value) -> Result<FrameType, CodecError> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| CodecError::malformed("JSON envelope", format_args!("bad type {v}")))?;
    let byte = u8::try_from(n).map_err(|_| CodecError::malformed("JSON envelope", "bad type"))?;
    FrameType::from_byte(byte).ok_or(CodecError::UnknownType(byte))
}

/// Parses a body from `content`: a JSON string holding a document, or (lenient) a document.
fn body<T: DeserializeOwned>(
    content: Option<&RawValue>,
    what: &'static str,
) -> Result<T, CodecError> {
    let raw = content
        .map(RawValue::get)
        .ok_or_else(|| CodecError::malformed(what, "no content"))?;
    let inner: String;
    let doc = if raw.starts_with('"') {
        inner = serde_json::from_str(raw).map_err(|e| CodecError::malformed(what, e))?;
        inner.trim_start()
    } else {
        raw
    };
    // serde would also take an array for a struct; a body is an object.
    if !doc.starts_with('{') {
        return Err(CodecError::malformed(what, "content is not an object"));
    }
    serde_json::from_str(doc).map_err(|e| CodecError::malformed(what, e))
}

impl JsonCodec {
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

    /// Decodes the text of one WebSocket message.
    pub fn decode_text(&self, text: &str) -> Result<Frame, CodecError> {
        let env: Envelope<'_> =
            serde_json::from_str(text).map_err(|e| CodecError::malformed("JSON envelope", e))?;
        Ok(match frame_type(&env.ty)? {
            FrameType::Pong => Frame::Pong,
            FrameType::Ping => Frame::Ping,
            FrameType::Message => Frame::Message(body(env.content, "message body")?),
            FrameType::Sent => {
                let sent: SentBody = body(env.content, "request body")?;
                sent.data.check_entries(self.max_entries)?;
                Frame::Sent(sent)
            }
            FrameType::Reply => {
                let reply: ReplyBody = body(env.content, "reply body")?;
                reply.data.check_entries(self.max_entries)?;
                Frame::Reply(reply)
            }
        })
    }

    /// Encodes `frame` as the text of one WebSocket message.
    pub fn encode_text(&self, frame: &Frame) -> Result<String, CodecError> {
        let content = match frame {
            Frame::Ping => return Ok(r#"{"type":1}"#.to_owned()),
            Frame::Pong => return Ok(r#"{"type":0,"content":"PONG"}"#.to_owned()),
            Frame::Message(m) => serde_json::to_string(m),
            Frame::Sent(s) => serde_json::to_string(s),
            Frame::Reply(r) => serde_json::to_string(r),
        }
        .map_err(|e| CodecError::Unencodable(e.to_string()))?;
        let mut out = String::with_capacity(content.len() + content.len() / 8 + 24);
        out.push_str(r#"{"type":"#);
        out.push(char::from(b'0' + frame.frame_type().byte()));
        out.push_str(r#","content":"#);
        // Serialising a String cannot fail.
        out.push_str(
            &serde_json::to_string(&content).map_err(|e| CodecError::Unencodable(e.to_string()))?,
        );
        out.push('}');
        Ok(out)
    }
}

impl PacketCodec for JsonCodec {
    fn decode(&self, packet: Packet<'_>) -> Result<Frame, CodecError> {
        match packet {
            Packet::Text(text) => self.decode_text(text),
            Packet::Binary(bytes) => match std::str::from_utf8(bytes) {
                // Some clients send JSON in binary messages; take it if it is text.
                Ok(text) => self.decode_text(text),
                Err(_) => Err(CodecError::WrongPacketKind { expected: "text" }),
            },
        }
    }

    fn encode(&self, frame: &Frame) -> Result<OwnedPacket, CodecError> {
        self.encode_text(frame).map(OwnedPacket::Text)
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::JsonPacket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::Message;

    /// A request whose map has `n` distinct entries, as the text of a message.
    fn wide_request(n: usize) -> (Frame, String) {
        let frame = Frame::Sent(SentBody {
            key: "k".into(),
            timestamp: 0,
            data: (0..n).map(|i| (format!("{i:x}"), "v")).collect(),
        });
        let text = JsonCodec.encode_text(&frame).unwrap();
        (frame, text)
    }

    #[test]
    fn map_limit_at_the_edge() {
        let codec = JsonCodec::new().with_max_entries(40);
        assert_eq!(codec.max_entries(), 40);
        let (frame, text) = wide_request(40);
        assert_eq!(codec.decode_text(&text), Ok(frame));
        let (_, text) = wide_request(41);
        assert_eq!(
            codec.decode_text(&text),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        // The default, 256, for requests and replies alike.
        assert!(JsonCodec.decode_text(&wide_request(256).1).is_ok());
        assert_eq!(
            JsonCodec.decode_text(&wide_request(257).1),
            Err(CodecError::TooManyEntries { max: 256 })
        );
        let mut r = ReplyBody::ok("k");
        r.data = (0..41).map(|i| (i.to_string(), "v")).collect();
        let text = JsonCodec.encode_text(&Frame::Reply(r)).unwrap();
        assert_eq!(
            codec.decode_text(&text),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        // A repeated key is one entry, its last value.
        let keys: String = (0..40).map(|i| format!(r#""{i}":"v","#)).collect();
        let text = format!(r#"{{"type":3,"content":{{"key":"k","data":{{{keys}"0":"w"}}}}}}"#);
        let Ok(Frame::Sent(s)) = codec.decode_text(&text) else {
            panic!("{text}")
        };
        assert_eq!((s.data.len(), s.get("0")), (40, "w"));
    }

    /// Decoding a frame of n entries makes O(n) key comparisons (n²/2 when each insert scanned
    /// the list: 32 million for these 8 000).
    #[test]
    fn decoding_a_wide_map_is_linear() {
        let n = 8000;
        let (_, text) = wide_request(n);
        let codec = JsonCodec::new().with_max_entries(usize::MAX);
        let before = cim_core::testing::key_comparisons();
        assert!(codec.decode_text(&text).is_ok());
        let cost = cim_core::testing::key_comparisons() - before;
        assert!(
            cost <= 2 * n as u64 + 120,
            "{cost} comparisons for {n} entries"
        );
    }

    #[test]
    fn protocol_example_bind() {
        let text = r#"{"type":3,"content":"{\"key\":\"client_bind\",\"timestamp\":1700000000000,\"data\":{\"uid\":\"10000\",\"channel\":\"web\"}}"}"#;
        let frame = JsonCodec.decode_text(text).unwrap();
        let expected = Frame::Sent(SentBody {
            key: "client_bind".into(),
            timestamp: 1_700_000_000_000,
            data: DataMap::from([("uid", "10000"), ("channel", "web")]),
        });
        assert_eq!(frame, expected);
        assert_eq!(JsonCodec.encode_text(&expected).unwrap(), text);
    }

    #[test]
    fn heartbeats() {
        assert_eq!(
            JsonCodec.encode_text(&Frame::Ping).unwrap(),
            r#"{"type":1}"#
        );
        assert_eq!(
            JsonCodec.encode_text(&Frame::Pong).unwrap(),
            r#"{"type":0,"content":"PONG"}"#
        );
        assert_eq!(
            JsonCodec
                .decode_text(r#"{"type":0,"content":"PONG"}"#)
                .unwrap(),
            Frame::Pong
        );
        assert_eq!(JsonCodec.decode_text(r#"{"type":0}"#).unwrap(), Frame::Pong);
        assert_eq!(
            JsonCodec.decode_text(r#"{"type":"1"}"#).unwrap(),
            Frame::Ping
        );
    }

    #[test]
    fn message_and_reply_names() {
        let m = Message {
            id: 7,
            action: "2".into(),
            content: "hi".into(),
            ..Message::default()
        };
        let text = JsonCodec.encode_text(&Frame::Message(m.clone())).unwrap();
        assert_eq!(
            text,
            r#"{"type":2,"content":"{\"id\":7,\"action\":\"2\",\"title\":\"\",\"content\":\"hi\",\"sender\":\"\",\"receiver\":\"\",\"format\":\"\",\"extra\":\"\",\"timestamp\":0}"}"#
        );
        let r = ReplyBody::ok("client_bind").with("k", "v");
        let text = JsonCodec.encode_text(&Frame::Reply(r.clone())).unwrap();
        assert!(text.contains(
            r#"\"key\":\"client_bind\",\"code\":\"200\",\"message\":\"\",\"data\":{\"k\":\"v\"}"#
        ));
        assert_eq!(JsonCodec.decode_text(&text).unwrap(), Frame::Reply(r));
    }

    #[test]
    fn attachment_properties() {
        let m = Message {
            id: 7,
            file: "http://x/a.png".into(),
            file_type: "image".into(),
            ..Message::default()
        };
        let text = JsonCodec.encode_text(&Frame::Message(m.clone())).unwrap();
        assert!(
            text.ends_with(
                r#"\"timestamp\":0,\"file\":\"http://x/a.png\",\"fileType\":\"image\"}"}"#
            ),
            "{text}"
        );
        assert_eq!(JsonCodec.decode_text(&text).unwrap(), Frame::Message(m));
    }

    #[test]
    fn lenient_decoding() {
        // Object content, unknown properties, numbers for strings, strings for numbers.
        let f = JsonCodec
            .decode_text(
                r#"{"type":3,"extra":1,"content":{"key":"k","timestamp":"12","data":{"a":1,"b":null},"x":[]}}"#,
            )
            .unwrap();
        assert_eq!(
            f,
            Frame::Sent(SentBody {
                key: "k".into(),
                timestamp: 12,
                data: DataMap::from([("a", "1")]),
            })
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"type":9}"#,
            r#"{"type":300}"#,
            r#"{"type":-1}"#,
            r#"{"type":3}"#,
            r#"{"type":3,"content":"not json"}"#,
            r#"{"type":3,"content":"{\"timestamp\":\"x\"}"}"#,
            r#"{"type":2,"content":[1]}"#,
            r#"{"type":2,"content":"[1]"}"#,
        ] {
            assert!(JsonCodec.decode_text(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            JsonCodec.decode_text(r#"{"type":9}"#),
            Err(CodecError::UnknownType(9))
        );
        assert!(matches!(
            JsonCodec.decode(Packet::Binary(&[0xff])),
            Err(CodecError::WrongPacketKind { .. })
        ));
    }
}
