//! # cim-codec-xml
//!
//! The XML protocol of CIM's MINA era as CIM 2.x (its last XML release, 2.2.1) spoke it
//! (docs/protocol.md section 4): each frame is one UTF-8 XML document followed by the byte
//! `0x08` (`0x00` is accepted too, for Flash clients). Heartbeats are the bare strings `S_H_RQ`
//! (server) and `C_H_RS` (client); the older `cmd_server_hb_request` /
//! `cmd_client_hb_response` are accepted on decode.
//!
//! ```
//! use bytes::BytesMut;
//! use cim_codec_xml::XmlCodec;
//! use cim_core::{Frame, Message, StreamCodec};
//!
//! let mut codec = XmlCodec::new();
//! // A CIM 2.x bind, values as plain text (the Android SDK) and in CDATA (the Java SDK).
//! let mut input = BytesMut::from(
//!     &b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><sent><key>client_bind</key>\
//!        <data><account>u1</account><device><![CDATA[Nexus 5]]></device>\
//!        <version>2.2.1</version></data></sent>\x08C_H_RS\x08"[..],
//! );
//! let Some(Frame::Sent(bind)) = codec.decode(&mut input).unwrap() else { panic!() };
//! // The 2.x keys, also under their 4.x names.
//! assert_eq!(bind.get("uid"), "u1");
//! assert_eq!(bind.get("deviceName"), "Nexus 5");
//! assert_eq!(bind.get("appVersion"), "2.2.1");
//! assert_eq!(codec.decode(&mut input).unwrap(), Some(Frame::Pong));
//!
//! // A message is written as 2.x wrote it: `mid`, `type`, only the elements with a value.
//! let mut out = BytesMut::new();
//! let m = Message {
//!     id: 7,
//!     action: "2".into(),
//!     content: "hello".into(),
//!     file: "http://files.example/a.png".into(),
//!     file_type: "image".into(),
//!     receiver: "u1".into(),
//!     ..Message::default()
//! };
//! codec.encode(&Frame::Message(m), &mut out).unwrap();
//! assert_eq!(
//!     &out[..],
//!     &b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><message><mid>7</mid><type>2</type>\
//!        <content><![CDATA[hello]]></content><file>http://files.example/a.png</file>\
//!        <fileType>image</fileType><receiver>u1</receiver></message>\x08"[..]
//! );
//! ```
//!
//! ## The 2.x dialect
//!
//! - A message is written with the element names CIM 2.x clients decode, in 2.x's order:
//!   `mid` (the id), `type` (the action), `title`, `content`, `file`, `fileType`, `sender`,
//!   `receiver`, `format`, `timestamp`. An element whose value is empty (a zero timestamp) is
//!   left out, so a 2.x client keeps its own defaults (`format` = `txt`); `mid` is always
//!   written. `extra`, which 2.x did not have, comes after them when set (2.x clients skip
//!   unknown elements).
//! - A reply is written as 2.x wrote it: `key`, `timestamp`, `code`, then `message` when set,
//!   then `data` (always, possibly empty: 2.x clients look it up).
//! - On decode both spellings are accepted: `mid` or `id`, `type` or `action` (a non-numeric
//!   `mid`, once a UUID, reads as id 0). A bind's 2.x keys `account`, `device` and `version` are
//!   copied to `uid`, `deviceName` and `appVersion` (a 4.x key the client sent itself is kept).
//!
//! Unlike CIM, values are escaped on encode (content goes in CDATA, with `]]>` split across two
//! sections; characters XML cannot carry literally, including the terminators, become character
//! references), and both escaped text and CDATA are accepted on decode. A document longer than
//! the configured maximum (default 64 KiB) is refused as soon as that many bytes have arrived
//! without a terminator. A `data` map of more than [`DataMap::DEFAULT_MAX_ENTRIES`] entries is
//! refused with [`CodecError::TooManyEntries`] as soon as the entry too many has been read
//! ([`XmlCodec::with_max_entries`] sets another limit; the names a legacy bind adds beside
//! `account` and `device` are not counted).
//!
//! ## Flash policy
//!
//! [`probe_flash_policy`], [`FLASH_POLICY_REQUEST`] and [`FLASH_POLICY_ANSWER`] let a listener
//! answer the cross-domain policy request of the retired Flash client, as the 2.x server did;
//! the codec itself treats such a request as a malformed document.

mod document;
mod escape;
mod flash;

pub use flash::{FLASH_POLICY_ANSWER, FLASH_POLICY_REQUEST, PolicyProbe, probe_flash_policy};

use bytes::{BufMut, BytesMut};
use cim_core::{CodecError, DataMap, Frame, StreamCodec, WireFormat};

/// Terminator written after every document.
pub const TERMINATOR: u8 = 0x08;
/// Alternative terminator accepted on decode.
pub const ALT_TERMINATOR: u8 = 0x00;
/// Default maximum document size in bytes.
pub const DEFAULT_MAX_DOCUMENT: usize = 64 * 1024;
/// The server's heartbeat request.
pub const SERVER_HEARTBEAT: &str = "S_H_RQ";
/// The client's heartbeat answer.
pub const CLIENT_HEARTBEAT: &str = "C_H_RS";
const LEGACY_SERVER_HEARTBEAT: &str = "cmd_server_hb_request";
const LEGACY_CLIENT_HEARTBEAT: &str = "cmd_client_hb_response";

/// The `0x08`-terminated XML stream codec.
#[derive(Clone, Debug)]
pub struct XmlCodec {
    max_document: usize,
    max_entries: usize,
    /// Bytes at the front of the buffer already searched for a terminator.
    scanned: usize,
}

impl XmlCodec {
    /// A codec with the default maximum document size.
    pub const fn new() -> Self {
        Self::with_max_document(DEFAULT_MAX_DOCUMENT)
    }

    /// A codec that refuses documents longer than `max` bytes (terminator not counted), in
    /// both directions.
    pub const fn with_max_document(max: usize) -> Self {
        Self {
            max_document: max,
            max_entries: DataMap::DEFAULT_MAX_ENTRIES,
            scanned: 0,
        }
    }

    /// Refuses, on decode, `data` maps of more than `max` entries.
    pub const fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// The maximum document size in bytes.
    pub fn max_document(&self) -> usize {
        self.max_document
    }

    /// The limit of entries in a decoded `data` map.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Encodes `frame` as a document and its terminator.
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut doc = String::with_capacity(256);
        document::write(frame, &mut doc)?;
        if doc.len() > self.max_document {
            return Err(CodecError::TooLarge {
                len: doc.len(),
                max: self.max_document,
            });
        }
        dst.reserve(doc.len() + 1);
        dst.put_slice(doc.as_bytes());
        dst.put_u8(TERMINATOR);
        Ok(())
    }
}

impl Default for XmlCodec {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes one document's bytes (terminator removed), whose maps have at most `max_entries`
/// entries. `None` for an empty document.
fn decode_document(bytes: &[u8], max_entries: usize) -> Result<Option<Frame>, CodecError> {
    let text = std::str::from_utf8(bytes).map_err(|e| CodecError::malformed("XML document", e))?;
    let text = text.trim();
    Ok(Some(match text {
        "" => return Ok(None),
        SERVER_HEARTBEAT | LEGACY_SERVER_HEARTBEAT => Frame::Ping,
        CLIENT_HEARTBEAT | LEGACY_CLIENT_HEARTBEAT => Frame::Pong,
        doc => document::parse(doc, max_entries)?,
    }))
}

impl StreamCodec for XmlCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        loop {
            let from = self.scanned.min(src.len());
            let found = src
                .get(from..)
                .and_then(|rest| memchr::memchr2(TERMINATOR, ALT_TERMINATOR, rest));
            let Some(offset) = found else {
                // Whitespace between documents (a client that ends each with a newline too) is
                // what a document's decoding trims anyway: dropped, not kept as a document begun.
                if src.iter().all(u8::is_ascii_whitespace) {
                    src.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                self.scanned = src.len();
                if src.len() > self.max_document {
                    return Err(CodecError::TooLarge {
                        len: src.len(),
                        max: self.max_document,
                    });
                }
                return Ok(None);
            };
            let end = from + offset;
            self.scanned = 0;
            if end > self.max_document {
                return Err(CodecError::TooLarge {
                    len: end,
                    max: self.max_document,
                });
            }
            let doc = src.split_to(end + 1);
            // Empty documents (stray terminators) are skipped.
            if let Some(frame) =
                decode_document(doc.get(..end).unwrap_or_default(), self.max_entries)?
            {
                return Ok(Some(frame));
            }
        }
    }

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(frame, dst)
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::XmlStream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::{DataMap, Message, ReplyBody, SentBody};

    #[test]
    fn whitespace_between_documents_is_not_kept() {
        let mut codec = XmlCodec::new();
        let mut buf = BytesMut::from(&b"<sent><key>client_bind</key></sent>\0\r\n"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty(), "{buf:?}");
        // A document begun after whitespace is kept whole.
        buf.extend_from_slice(b" \n<sent><key>k</key>");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"</sent>\0");
        assert!(codec.decode(&mut buf).unwrap().is_some());
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
        let mut codec = XmlCodec::new();
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut src)? {
            out.push(f);
        }
        Ok(out)
    }

    fn encode(frame: &Frame) -> String {
        let mut out = BytesMut::new();
        XmlCodec::new().encode(frame, &mut out).unwrap();
        assert_eq!(out.last(), Some(&TERMINATOR));
        String::from_utf8(out[..out.len() - 1].to_vec()).unwrap()
    }

    /// The documents of docs/protocol.md section 4, as CIM 2.x clients and servers wrote them.
    #[test]
    fn protocol_examples_decode() {
        let input = concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><sent><key>client_bind</key><timestamp>1487900000000</timestamp><data><account>u1</account><channel>android</channel><deviceId>d1</deviceId><device>Nexus 5</device><version>2.2.1</version><osVersion>6.0.1</osVersion></data></sent>"#,
            "\u{8}",
            r#"<?xml version="1.0" encoding="UTF-8"?><reply><key>client_bind</key><timestamp>1487900000000</timestamp><code>200</code><data><k>v</k></data></reply>"#,
            "\u{8}",
            r#"<?xml version="1.0" encoding="UTF-8"?><message><mid>1</mid><type>2</type><title>t</title><content><![CDATA[hello]]></content><file>http://files.example/a.png</file><fileType>image</fileType><sender>system</sender><receiver>u1</receiver><format>txt</format><timestamp>1487900000000</timestamp></message>"#,
            "\u{0}",
        );
        let frames = decode_all(input.as_bytes()).unwrap();
        assert_eq!(
            frames,
            [
                Frame::Sent(SentBody {
                    key: "client_bind".into(),
                    timestamp: 1_487_900_000_000,
                    data: DataMap::from([
                        ("account", "u1"),
                        ("channel", "android"),
                        ("deviceId", "d1"),
                        ("device", "Nexus 5"),
                        ("version", "2.2.1"),
                        ("osVersion", "6.0.1"),
                        ("uid", "u1"),
                        ("deviceName", "Nexus 5"),
                        ("appVersion", "2.2.1"),
                    ]),
                }),
                Frame::Reply(ReplyBody {
                    key: "client_bind".into(),
                    code: "200".into(),
                    message: String::new(),
                    data: DataMap::from([("k", "v")]),
                    timestamp: 1_487_900_000_000,
                }),
                Frame::Message(attachment_message()),
            ]
        );
    }

    fn attachment_message() -> Message {
        Message {
            id: 1,
            action: "2".into(),
            title: "t".into(),
            content: "hello".into(),
            sender: "system".into(),
            receiver: "u1".into(),
            format: "txt".into(),
            timestamp: 1_487_900_000_000,
            file: "http://files.example/a.png".into(),
            file_type: "image".into(),
            ..Message::default()
        }
    }

    #[test]
    fn protocol_examples_encode() {
        let sent = Frame::Sent(SentBody {
            key: "client_bind".into(),
            timestamp: 1_487_900_000_000,
            data: DataMap::from([("uid", "u1"), ("channel", "android")]),
        });
        assert_eq!(
            encode(&sent),
            r#"<?xml version="1.0" encoding="UTF-8"?><sent><key>client_bind</key><timestamp>1487900000000</timestamp><data><uid>u1</uid><channel>android</channel></data></sent>"#
        );
        assert_eq!(
            encode(&Frame::Message(attachment_message())),
            r#"<?xml version="1.0" encoding="UTF-8"?><message><mid>1</mid><type>2</type><title>t</title><content><![CDATA[hello]]></content><file>http://files.example/a.png</file><fileType>image</fileType><sender>system</sender><receiver>u1</receiver><format>txt</format><timestamp>1487900000000</timestamp></message>"#
        );
        let reply = Frame::Reply(ReplyBody {
            timestamp: 1_487_900_000_000,
            ..ReplyBody::ok("client_bind")
        });
        assert_eq!(
            encode(&reply),
            r#"<?xml version="1.0" encoding="UTF-8"?><reply><key>client_bind</key><timestamp>1487900000000</timestamp><code>200</code><data></data></reply>"#
        );
    }

    /// Only elements with a value are written (a 2.x client keeps its defaults for the rest);
    /// `mid` always; `extra`, unknown to 2.x, after the ten 2.x elements.
    #[test]
    fn empty_elements_are_left_out() {
        assert_eq!(
            encode(&Frame::Message(Message::default())),
            r#"<?xml version="1.0" encoding="UTF-8"?><message><mid>0</mid></message>"#
        );
        let kick = Message {
            id: 9,
            action: "999".into(),
            sender: "0".into(),
            receiver: "u1".into(),
            content: "Pixel".into(),
            extra: "x".into(),
            ..Message::default()
        };
        assert_eq!(
            encode(&Frame::Message(kick)),
            r#"<?xml version="1.0" encoding="UTF-8"?><message><mid>9</mid><type>999</type><content><![CDATA[Pixel]]></content><sender>0</sender><receiver>u1</receiver><extra>x</extra></message>"#
        );
        let reply = Frame::Reply(ReplyBody::new("k", "404").with_message("no handler"));
        assert_eq!(
            encode(&reply),
            r#"<?xml version="1.0" encoding="UTF-8"?><reply><key>k</key><timestamp>0</timestamp><code>404</code><message>no handler</message><data></data></reply>"#
        );
    }

    #[test]
    fn bind_keys_of_2x_and_4x() {
        let frames = decode_all(
            b"<sent><key>client_bind</key><data><account>a</account><uid>b</uid>\
              <version>1</version></data></sent>\x08\
              <sent><key>other</key><data><version>1</version></data></sent>\x08",
        )
        .unwrap();
        let [Frame::Sent(bind), Frame::Sent(other)] = &frames[..] else {
            panic!("{frames:?}")
        };
        // The client's own 4.x key wins; `version` becomes `appVersion`.
        assert_eq!((bind.get("uid"), bind.get("appVersion")), ("b", "1"));
        // Only a bind's keys are renamed.
        assert_eq!(other.data.get("appVersion"), None);
    }

    #[test]
    fn heartbeats_new_and_legacy() {
        assert_eq!(encode(&Frame::Ping), "S_H_RQ");
        assert_eq!(encode(&Frame::Pong), "C_H_RS");
        let frames = decode_all(
            b"S_H_RQ\x08C_H_RS\x08cmd_server_hb_request\x08\x08 cmd_client_hb_response \x00",
        )
        .unwrap();
        assert_eq!(frames, [Frame::Ping, Frame::Pong, Frame::Ping, Frame::Pong]);
    }

    #[test]
    fn both_spellings_decode() {
        let frames = decode_all(
            "<message><mid>5c1f2d3e-uuid</mid><type>2</type><content>a &amp; b</content></message>\u{8}\
             <message><mid>42</mid></message>\u{8}\
             <message><id>43</id><action>3</action><file><![CDATA[f]]></file><fileType>voice</fileType></message>\u{8}"
                .as_bytes(),
        )
        .unwrap();
        let [Frame::Message(a), Frame::Message(b), Frame::Message(c)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            (a.id, a.action.as_str(), a.content.as_str()),
            (0, "2", "a & b")
        );
        assert_eq!(b.id, 42);
        assert_eq!(
            (
                c.id,
                c.action.as_str(),
                c.file.as_str(),
                c.file_type.as_str()
            ),
            (43, "3", "f", "voice")
        );
    }

    #[test]
    fn escaping_round_trip() {
        let m = Frame::Message(Message {
            content: "<b>]]>&\u{8}\u{0}\r\n".into(),
            title: "a<b>&\"'".into(),
            ..Message::default()
        });
        let wire = encode(&m);
        assert!(!wire.contains('\u{8}') && !wire.contains('\u{0}'));
        assert_eq!(decode_all(format!("{wire}\u{8}").as_bytes()).unwrap(), [m]);
    }

    #[test]
    fn bad_data_key_is_an_encode_error() {
        let f = Frame::Reply(ReplyBody::ok("k").with("not a name", "v"));
        let mut out = BytesMut::new();
        assert!(matches!(
            XmlCodec::new().encode(&f, &mut out),
            Err(CodecError::Unencodable(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_documents() {
        for bad in [
            "<sent><key>k</sent>",
            "<sent><key>k</key>",
            "<unknown/>",
            "<sent/><sent/>",
            "<sent><timestamp>soon</timestamp></sent>",
            "<sent><key>&bogus;</key></sent>",
            "just text",
        ] {
            let input = format!("{bad}\u{8}");
            assert!(
                decode_all(input.as_bytes()).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(decode_all(b"\xff\xfe\x08").is_err());
    }

    #[test]
    fn document_size_limit_at_the_edge() {
        let doc = |n: usize| {
            let pad = n - "<sent><key></key></sent>".len();
            format!("<sent><key>{}</key></sent>", "k".repeat(pad))
        };
        let mut codec = XmlCodec::with_max_document(100);
        let mut src = BytesMut::from(format!("{}\u{8}", doc(100)).as_bytes());
        assert!(codec.decode(&mut src).unwrap().is_some());
        // One byte more, terminated or not, is refused.
        let mut src = BytesMut::from(format!("{}\u{8}", doc(101)).as_bytes());
        assert_eq!(
            codec.decode(&mut src),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        let mut codec = XmlCodec::with_max_document(100);
        let mut src = BytesMut::from(&[b'x'; 100][..]);
        assert_eq!(codec.decode(&mut src), Ok(None));
        src.extend_from_slice(b"x");
        assert_eq!(
            codec.decode(&mut src),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        // Encoding refuses too.
        let big = Frame::Sent(SentBody::new("k".repeat(200)));
        assert!(matches!(
            XmlCodec::with_max_document(100).encode(&big, &mut BytesMut::new()),
            Err(CodecError::TooLarge { .. })
        ));
    }

    /// A request whose map has `n` distinct entries, as a terminated document.
    fn wide_request(n: usize) -> (Frame, Vec<u8>) {
        let frame = Frame::Sent(SentBody {
            key: "k".into(),
            timestamp: 0,
            data: (0..n).map(|i| (format!("k{i:x}"), "v")).collect(),
        });
        let mut wire = BytesMut::new();
        XmlCodec::with_max_document(1 << 20)
            .encode(&frame, &mut wire)
            .unwrap();
        (frame, wire.to_vec())
    }

    #[test]
    fn map_limit_at_the_edge() {
        let mut codec = XmlCodec::new().with_max_entries(40);
        assert_eq!(codec.max_entries(), 40);
        let (frame, wire) = wide_request(40);
        assert_eq!(
            codec.decode(&mut BytesMut::from(&wire[..])),
            Ok(Some(frame))
        );
        let (_, wire) = wide_request(41);
        assert_eq!(
            codec.decode(&mut BytesMut::from(&wire[..])),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        // The default, 256, for replies too.
        let mut codec = XmlCodec::new();
        assert!(
            codec
                .decode(&mut BytesMut::from(&wide_request(256).1[..]))
                .is_ok()
        );
        assert_eq!(
            codec.decode(&mut BytesMut::from(&wide_request(257).1[..])),
            Err(CodecError::TooManyEntries { max: 256 })
        );
        let entries: String = (0..41).map(|i| format!("<k{i}>v</k{i}>")).collect();
        let reply = format!("<reply><key>k</key><data>{entries}</data></reply>\u{8}");
        assert_eq!(
            XmlCodec::new()
                .with_max_entries(40)
                .decode(&mut BytesMut::from(reply.as_bytes())),
            Err(CodecError::TooManyEntries { max: 40 })
        );
        // A repeated key is one entry, its last value.
        let entries: String = (0..40).map(|i| format!("<k{i}>v</k{i}>")).collect();
        let sent = format!("<sent><key>k</key><data>{entries}<k0>w</k0></data></sent>\u{8}");
        let Ok(Some(Frame::Sent(s))) = XmlCodec::new()
            .with_max_entries(40)
            .decode(&mut BytesMut::from(sent.as_bytes()))
        else {
            panic!("a repeated key was counted twice")
        };
        assert_eq!((s.data.len(), s.get("k0")), (40, "w"));
    }

    /// Decoding a document of n entries makes O(n) key comparisons (n²/2 when each insert
    /// scanned the list: 32 million for these 8 000).
    #[test]
    fn decoding_a_wide_map_is_linear() {
        let n = 8000;
        let (_, wire) = wide_request(n);
        let mut codec = XmlCodec::with_max_document(1 << 20).with_max_entries(usize::MAX);
        let before = cim_core::testing::key_comparisons();
        assert!(
            codec
                .decode(&mut BytesMut::from(&wire[..]))
                .unwrap()
                .is_some()
        );
        let cost = cim_core::testing::key_comparisons() - before;
        assert!(
            cost <= 2 * n as u64 + 120,
            "{cost} comparisons for {n} entries"
        );
    }

    #[test]
    fn incremental_scan_resumes() {
        let mut codec = XmlCodec::new();
        let mut src = BytesMut::from(&b"<sent><key>a"[..]);
        assert_eq!(codec.decode(&mut src), Ok(None));
        src.extend_from_slice(b"b</key></sent>\x08S_H");
        assert_eq!(
            codec.decode(&mut src),
            Ok(Some(Frame::Sent(SentBody::new("ab"))))
        );
        assert_eq!(codec.decode(&mut src), Ok(None));
        src.extend_from_slice(b"_RQ\x08");
        assert_eq!(codec.decode(&mut src), Ok(Some(Frame::Ping)));
    }
}
