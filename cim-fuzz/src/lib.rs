//! # cim-fuzz
//!
//! The bodies of the fuzz targets of cim-rs, one function per target, each taking the fuzzer's
//! bytes. `fuzz/` (cargo-fuzz, built outside the workspace) calls them from its targets, and this
//! crate's test feeds every file of the checked-in corpus (`fuzz/corpus/<target>/`) through them
//! on every `cargo test`, so what the fuzzer once found stays found without any extra tool.
//!
//! Each target panics when the code under test breaks a rule that holds for every input:
//!
//! - no decoder panics or loops, whatever the bytes;
//! - a stream decodes to the same frames (and stops at the same kind of error) however its bytes
//!   are split between reads;
//! - a decoded frame encodes (when the codec can carry it) and decodes back to itself;
//! - a decoded `data` map has no more entries than the codec's limit;
//! - the compatibility form parser agrees with serde_urlencoded on input it accepts;
//! - [`DataMap`] behaves as a plain list of pairs would;
//! - a PROXY header is read the same however its bytes arrive, taking exactly its own bytes,
//!   and the client it names reads back from a header written for it.
//!
//! [`TARGETS`] lists them by name, the name of their corpus directory.

use bytes::BytesMut;
use cim_codec_binary::{BinaryCodec, WsBinaryCodec};
use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::{CodecError, DataMap, Frame, Packet, PacketCodec, StreamCodec};
use cim_server::access::proxy_header::{
    HeaderError, HeaderReader, MIN_LIMIT, Probe, Scan, Step, probe, scan,
};

/// A target: takes the fuzzer's bytes, panics on a broken rule.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("binary_stream", binary_stream),
    ("ws_binary", ws_binary),
    ("json", json),
    ("xml_stream", xml_stream),
    ("compat_form", compat_form),
    ("data_map", data_map),
    ("proxy_header", proxy_header),
];

/// The entries of a decoded frame's map, if it has one.
fn entries(frame: &Frame) -> usize {
    match frame {
        Frame::Sent(s) => s.data.len(),
        Frame::Reply(r) => r.data.len(),
        _ => 0,
    }
}

/// What decoding a stream gave: its frames, and whether (and how) it stopped on an error.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<std::mem::Discriminant<CodecError>>,
}

/// Decodes `input` with `codec`, handing it over `chunk` bytes at a time (all at once for 0).
fn decode_stream<C: StreamCodec>(mut codec: C, input: &[u8], chunk: usize) -> Decoded {
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
    };
    let mut src = BytesMut::new();
    let pieces: Vec<&[u8]> = if chunk == 0 {
        vec![input]
    } else {
        input.chunks(chunk).collect()
    };
    for piece in pieces {
        src.extend_from_slice(piece);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(frame)) => out.frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(std::mem::discriminant(&e));
                    return out;
                }
            }
        }
    }
    out
}

/// Splits the fuzzer's bytes into a chunk size (1 to 256, from the first byte) and a stream.
fn chunked(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, stream) = data.split_first()?;
    Some((usize::from(first) + 1, stream))
}

/// Binary TCP frames ([`BinaryCodec`] as a stream), fed whole and in chunks of the size the first
/// byte gives.
pub fn binary_stream(data: &[u8]) {
    let Some((chunk, stream)) = chunked(data) else {
        return;
    };
    let whole = decode_stream(BinaryCodec::new(), stream, 0);
    let split = decode_stream(BinaryCodec::new(), stream, chunk);
    assert_eq!(whole, split, "split into chunks of {chunk}");
    for frame in &whole.frames {
        assert!(entries(frame) <= DataMap::DEFAULT_MAX_ENTRIES);
        // A body that grew past the 16-bit length on the way back (proto3 lets a sender leave
        // out an entry's key or value; we write both) cannot be encoded: nothing to check.
        if let Ok(wire) = BinaryCodec::new().encode_to_bytes(frame) {
            let mut src = BytesMut::from(&wire[..]);
            let again = BinaryCodec::new().decode(&mut src);
            assert_eq!(again, Ok(Some(frame.clone())));
            assert!(src.is_empty());
        }
    }
}

/// WebSocket binary packets ([`WsBinaryCodec`]).
pub fn ws_binary(data: &[u8]) {
    let codec = WsBinaryCodec::new();
    if let Ok(frame) = codec.decode(Packet::Binary(data)) {
        assert!(entries(&frame) <= codec.max_entries());
        let wire = codec.encode_payload(&frame);
        assert_eq!(codec.decode(Packet::Binary(&wire)), Ok(frame));
    }
}

/// WebSocket JSON packets ([`JsonCodec`]), as text and as binary messages.
pub fn json(data: &[u8]) {
    let codec = JsonCodec::new();
    let frame = codec.decode(Packet::Binary(data));
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(codec.decode(Packet::Text(text)), frame);
    }
    if let Ok(frame) = frame {
        assert!(entries(&frame) <= codec.max_entries());
        if let Ok(text) = codec.encode_text(&frame) {
            assert_eq!(codec.decode_text(&text), Ok(frame), "{text}");
        }
    }
}

/// XML documents ([`XmlCodec`] as a stream), fed whole and in chunks of the size the first byte
/// gives.
pub fn xml_stream(data: &[u8]) {
    let Some((chunk, stream)) = chunked(data) else {
        return;
    };
    let whole = decode_stream(XmlCodec::new(), stream, 0);
    let split = decode_stream(XmlCodec::new(), stream, chunk);
    assert_eq!(whole, split, "split into chunks of {chunk}");
    for frame in &whole.frames {
        // A legacy bind gets the 4.x names of `account` and `device` beside them.
        assert!(entries(frame) <= DataMap::DEFAULT_MAX_ENTRIES + 2);
        let mut wire = BytesMut::new();
        // Keys that are not XML names cannot be encoded, and escaping may grow a document past
        // the limit: nothing to check then.
        if XmlCodec::new().encode(frame, &mut wire).is_ok() {
            let again = decode_stream(XmlCodec::new(), &wire, 0);
            assert_eq!(again.frames, std::slice::from_ref(frame), "{wire:?}");
            assert_eq!(again.error, None);
        }
    }
}

/// The pairs serde_urlencoded makes of `input`, if it makes any.
fn serde_pairs(input: &[u8]) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_bytes(input).ok()
}

/// The HTTP compatibility form (`POST /api/message/send`): the query string is what comes
/// before the first newline, the body what follows it.
pub fn compat_form(data: &[u8]) {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            data.get(..at).unwrap_or_default(),
            data.get(at + 1..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let Ok(message) = cim_server::http::parse_send_form(query, body) else {
        return;
    };
    for required in [&message.sender, &message.receiver, &message.action] {
        assert!(!required.is_empty());
    }
    // Accepted input decodes to UTF-8, so the form extractor's decoder, which replaces what is
    // not UTF-8, sees the same pairs: the last of each name is the field.
    let (Some(mut pairs), Some(body_pairs)) = (serde_pairs(query), serde_pairs(body)) else {
        panic!("serde_urlencoded refused a form that was accepted");
    };
    pairs.extend(body_pairs);
    let field = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    for (name, value) in [
        ("sender", &message.sender),
        ("receiver", &message.receiver),
        ("action", &message.action),
        ("title", &message.title),
        ("content", &message.content),
        ("format", &message.format),
        ("extra", &message.extra),
    ] {
        assert_eq!(field(name), value.as_str(), "{name}");
    }
}

/// [`DataMap`] against a plain list of pairs: the bytes are operations (insert, remove, get) on
/// keys from a small set, so that maps grow past the size where they start indexing and shrink
/// back.
pub fn data_map(data: &[u8]) {
    let mut map = DataMap::new();
    let mut model: Vec<(String, String)> = Vec::new();
    for (i, op) in data.chunks(2).enumerate() {
        let (&code, key) = match op {
            [code, key] => (code, *key),
            [code] => (code, 0),
            _ => continue,
        };
        let key = format!("k{}", key % 48);
        let at = model.iter().position(|(k, _)| *k == key);
        match code % 4 {
            0 | 1 => {
                let value = i.to_string();
                let before = match at.and_then(|at| model.get_mut(at)) {
                    Some((_, v)) => Some(std::mem::replace(v, value.clone())),
                    None => {
                        model.push((key.clone(), value.clone()));
                        None
                    }
                };
                assert_eq!(map.insert(key, value), before);
            }
            2 => {
                let before = at.map(|at| model.remove(at).1);
                assert_eq!(map.remove(&key), before);
            }
            _ => {
                let before = at.and_then(|at| model.get(at)).map(|(_, v)| v.as_str());
                assert_eq!(map.get(&key), before);
                assert_eq!(map.contains_key(&key), before.is_some());
            }
        }
        assert_eq!(map.len(), model.len());
    }
    let got: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(got, model);
    let rebuilt: DataMap = model.iter().rev().cloned().collect();
    assert_eq!(rebuilt, map);
    assert_eq!(map.clone(), map);
    // The decoders' constructor: the limit is on distinct keys.
    let limit = data.first().map_or(0, |&b| usize::from(b) % 64);
    let mut entries = model.clone();
    entries.extend(model.iter().take(3).cloned());
    match DataMap::from_entries_within(entries, limit) {
        Ok(within) => {
            assert!(model.len() <= limit);
            assert_eq!(within, map);
        }
        Err(e) => {
            assert!(model.len() > limit);
            assert_eq!(e, CodecError::TooManyEntries { max: limit });
        }
    }
}

/// What reading a PROXY header gave: the outcome (a refusal by its kind only: its text shows
/// the bytes seen, which depend on how they arrived), and how many bytes were taken from the
/// stream.
#[derive(Debug, PartialEq)]
struct HeaderRead {
    outcome: Result<(usize, Option<std::net::SocketAddr>), std::mem::Discriminant<HeaderError>>,
    taken: usize,
}

/// Reads a header from `input` with a [`HeaderReader`] as the listener does with a socket:
/// `chunk` bytes arrive at a time, a peek sees what has arrived and not been taken (as much as
/// the window holds), and only what the reader says is taken.
fn read_header(input: &[u8], max: usize, chunk: usize) -> HeaderRead {
    let bytes = |from: usize, n: usize| input.get(from..from + n).unwrap_or_default();
    let mut reader = HeaderReader::new(max);
    let mut pos = 0;
    let mut arrived = chunk.min(input.len());
    loop {
        let window = reader.window();
        let n = window.len().min(arrived - pos);
        if let Some(peek) = window.get_mut(..n) {
            peek.copy_from_slice(bytes(pos, n));
        }
        let (take, done) = match reader.peeked(n) {
            Step::Take(k) => (k, None),
            Step::Done { take, source } => (take, Some(source)),
            Step::Bad(e) => {
                return HeaderRead {
                    outcome: Err(std::mem::discriminant(&e)),
                    taken: pos,
                };
            }
        };
        assert!(take <= n, "takes {take} of the {n} bytes peeked");
        if let Some(read) = reader.window().get_mut(..take) {
            read.copy_from_slice(bytes(pos, take));
        }
        reader.took(take);
        pos += take;
        assert_eq!(reader.taken(), bytes(0, pos));
        if let Some(source) = done {
            return HeaderRead {
                outcome: Ok((pos, source)),
                taken: pos,
            };
        }
        arrived = (arrived + chunk).min(input.len());
    }
}

/// The PROXY header a listener reads from a trusted proxy (`cim_server::access::proxy_header`):
/// the first byte gives a chunk size (1 to 256), the second the limit (232 to 1252 bytes), the
/// rest is the stream.
pub fn proxy_header(data: &[u8]) {
    let Some((chunk, rest)) = chunked(data) else {
        return;
    };
    let Some((&limit, stream)) = rest.split_first() else {
        return;
    };
    let max = MIN_LIMIT + usize::from(limit) * 4;
    let whole = read_header(stream, max, stream.len().max(1));
    let split = read_header(stream, max, chunk);
    // A refusal may come after more bytes were taken when they arrived a few at a time (they
    // were the header's start); a header is whole with exactly its bytes taken, either way.
    assert_eq!(whole.outcome, split.outcome, "split into chunks of {chunk}");
    match whole.outcome {
        Ok((len, source)) => {
            assert_eq!((whole.taken, split.taken), (len, len));
            assert!(len <= max && len <= stream.len());
            // The header alone makes the same header; and it starts with a signature.
            assert_eq!(
                scan(stream.get(..len).unwrap_or_default(), max),
                Scan::Done { len, source },
                "the header alone"
            );
            assert_eq!(probe(stream), Probe::Header);
            // A version 1 header written for the client names it again.
            if let Some(src) = source {
                let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                let dst = if src.is_ipv4() { "127.0.0.1" } else { "::1" };
                let line = format!("PROXY {family} {} {dst} {} 443\r\n", src.ip(), src.port());
                assert_eq!(
                    scan(line.as_bytes(), max),
                    Scan::Done {
                        len: line.len(),
                        source: Some(src)
                    },
                    "{line}"
                );
            }
        }
        Err(_) => assert!(whole.taken <= stream.len()),
    }
    // What does not start like a header is never taken for one.
    if probe(stream) == Probe::Other {
        assert!(matches!(
            scan(stream, max),
            Scan::Bad(HeaderError::Missing(_))
        ));
    }
}
