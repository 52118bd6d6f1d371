//! A protobuf field reader over a borrowed slice, for the body every request arrives in: a
//! `SentBody` is read field by field into the data model, each string allocated once at its
//! exact length, with no intermediate structs (prost's derived decoder builds a `Vec` of entry
//! structs and grows every string from empty). It accepts what prost accepts: unknown fields
//! are skipped, a repeated scalar field keeps its last value, a field of the wrong wire type or
//! a string that is not UTF-8 is an error.

use cim_core::{CodecError, SentBody};
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// Why a body could not be read (prost's own errors, or this reader's in the same words).
type Reason = String;

/// One field's value, as far as this reader needs to tell them apart.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A field of another wire type, already skipped.
    Skipped(WireType),
}

/// The fields of one protobuf message, in wire order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// The next field's number and value; `None` at the end.
    #[inline]
    fn next(&mut self) -> Option<Result<(u32, Value<'a>), Reason>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(self.read())
    }

    /// A varint; one byte (every tag and short length here) without a loop.
    #[inline]
    fn varint(&mut self) -> Result<u64, Reason> {
        match self.rest.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.rest = rest;
                Ok(u64::from(b))
            }
            _ => self.long_varint(),
        }
    }

    /// A varint of more than one byte, or a missing one (kept out of line: the reader's loop
    /// stays small where every field pays for it).
    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, Reason> {
        decode_varint(&mut self.rest).map_err(|e| e.to_string())
    }

    #[inline]
    fn read(&mut self) -> Result<(u32, Value<'a>), Reason> {
        let key = self.varint()?;
        let (tag, wire_type) = match (u32::try_from(key), WireType::try_from(key & 7)) {
            (Ok(k), Ok(wire_type)) if k >> 3 > 0 => (k >> 3, wire_type),
            // prost's reasons for what it refuses here.
            _ => return Err(key_error(key)),
        };
        let value = match wire_type {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::LengthDelimited => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= self.rest.len())
                    .ok_or_else(|| "buffer underflow".to_owned())?;
                let (bytes, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(bytes)
            }
            other => {
                skip_field(other, tag, &mut self.rest, DecodeContext::default())
                    .map_err(|e| e.to_string())?;
                Value::Skipped(other)
            }
        };
        Ok((tag, value))
    }
}

/// prost's reason for refusing `key`.
#[cold]
fn key_error(key: u64) -> Reason {
    decode_key(&mut key_bytes(key).as_slice())
        .err()
        .map_or_else(|| format!("invalid key value: {key}"), |e| e.to_string())
}

/// `key` as a varint again, for prost to say what is wrong with it.
fn key_bytes(key: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    prost::encoding::encode_varint(key, &mut out);
    out
}

/// The error prost gives for a field of the wrong wire type.
#[cold]
fn wrong_type(field: &str, got: &Value<'_>, expected: WireType) -> Reason {
    let got = match got {
        Value::Varint(_) => WireType::Varint,
        Value::Bytes(_) => WireType::LengthDelimited,
        Value::Skipped(w) => *w,
    };
    format!("invalid wire type for {field}: {got:?} (expected {expected:?})")
}

/// A string field's value.
#[inline]
fn string(field: &str, value: &Value<'_>) -> Result<String, Reason> {
    match value {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| not_utf8(field)),
        other => Err(wrong_type(field, other, WireType::LengthDelimited)),
    }
}

/// The error prost gives for a string that is not UTF-8.
#[cold]
fn not_utf8(field: &str) -> Reason {
    format!("invalid string value for {field}: data is not UTF-8 encoded")
}

/// A map entry: `key` (1) and `value` (2), both strings, either may be missing.
#[inline]
fn entry(body: &[u8]) -> Result<(String, String), Reason> {
    let (mut key, mut value) = (String::new(), String::new());
    let mut fields = Fields::new(body);
    while let Some(field) = fields.next() {
        match field? {
            (1, v) => key = string("Entry.key", &v)?,
            (2, v) => value = string("Entry.value", &v)?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// Reads a `SentBody` (`key` 1, `timestamp` 2, `data` 3 as repeated entries) whose map has at
/// most `max_entries` entries; reading stops at the first entry past the limit.
pub(crate) fn sent_body(body: &[u8], max_entries: usize) -> Result<SentBody, CodecError> {
    let malformed = |e: Reason| CodecError::malformed("request body", e);
    let mut sent = SentBody::default();
    let mut fields = Fields::new(body);
    while let Some(field) = fields.next() {
        match field.map_err(malformed)? {
            (1, v) => sent.key = string("SentBody.key", &v).map_err(malformed)?,
            (2, Value::Varint(t)) => sent.timestamp = t as i64,
            (2, other) => {
                return Err(malformed(wrong_type(
                    "SentBody.timestamp",
                    &other,
                    WireType::Varint,
                )));
            }
            (3, Value::Bytes(b)) => {
                let (k, v) = entry(b).map_err(malformed)?;
                sent.data.insert(k, v);
                if sent.data.len() > max_entries {
                    return Err(CodecError::TooManyEntries { max: max_entries });
                }
            }
            (3, other) => {
                return Err(malformed(wrong_type(
                    "SentBody.data",
                    &other,
                    WireType::LengthDelimited,
                )));
            }
            _ => {}
        }
    }
    Ok(sent)
}
