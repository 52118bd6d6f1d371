//! Stored values: one format-version byte, then the encoding of that version. Only this module
//! knows the encoding, so it can change (a new version byte) without losing stored data.
//!
//! - version 1: bincode 2 (standard configuration) of [`V1`], the CIM 4.x fields;
//! - version 2 (written today): the same encoding of [`V2`], which adds the attachment
//!   (`file`, `fileType`) at the end.
//!
//! Values of every version this build knows are read; only the newest is written.

use bincode::{Decode, Encode};
use cim_core::Message;

const V1_TAG: u8 = 1;
const V2_TAG: u8 = 2;

/// Version 1, written before messages carried attachments.
#[derive(Encode, Decode)]
struct V1 {
    stored_at: i64,
    id: i64,
    action: String,
    title: String,
    content: String,
    sender: String,
    receiver: String,
    format: String,
    extra: String,
    timestamp: i64,
}

/// Version 2: version 1 and the attachment.
#[derive(Encode, Decode)]
struct V2 {
    stored_at: i64,
    id: i64,
    action: String,
    title: String,
    content: String,
    sender: String,
    receiver: String,
    format: String,
    extra: String,
    timestamp: i64,
    file: String,
    file_type: String,
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Empty value.
    #[error("empty value")]
    Empty,
    /// A version this build does not know.
    #[error("unknown value format version {0}")]
    UnknownVersion(u8),
    /// The bytes do not decode.
    #[error("corrupt value: {0}")]
    Corrupt(String),
}

/// Encodes a message and its storage time (in the newest version).
pub fn encode(stored_at: i64, m: &Message) -> Vec<u8> {
    let v = V2 {
        stored_at,
        id: m.id,
        action: m.action.clone(),
        title: m.title.clone(),
        content: m.content.clone(),
        sender: m.sender.clone(),
        receiver: m.receiver.clone(),
        format: m.format.clone(),
        extra: m.extra.clone(),
        timestamp: m.timestamp,
        file: m.file.clone(),
        file_type: m.file_type.clone(),
    };
    let mut out = Vec::with_capacity(64 + m.content.len() + m.file.len());
    out.push(V2_TAG);
    // Encoding owned strings and integers into a Vec cannot fail.
    let _ = bincode::encode_into_std_write(&v, &mut out, bincode::config::standard());
    out
}

fn body<T: Decode<()>>(rest: &[u8]) -> Result<T, ValueError> {
    let (v, _): (T, usize) = bincode::decode_from_slice(rest, bincode::config::standard())
        .map_err(|e| ValueError::Corrupt(e.to_string()))?;
    Ok(v)
}

/// The storage time of a value written by [`encode`], read without decoding the message (it is
/// the first field); `None` if the value is not one this build can read.
#[cfg_attr(not(feature = "redb"), allow(dead_code))] // redb's expiry index reads it
pub fn stored_at(bytes: &[u8]) -> Option<i64> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        // Every version begins with the storage time.
        V1_TAG | V2_TAG => bincode::decode_from_slice::<i64, _>(rest, bincode::config::standard())
            .ok()
            .map(|(at, _)| at),
        _ => None,
    }
}

/// Decodes a value written by [`encode`], now or by an older build (any version this build
/// knows).
pub fn decode(bytes: &[u8]) -> Result<(i64, Message), ValueError> {
    let (&tag, rest) = bytes.split_first().ok_or(ValueError::Empty)?;
    match tag {
        V1_TAG => {
            let v: V1 = body(rest)?;
            Ok((
                v.stored_at,
                Message {
                    id: v.id,
                    action: v.action,
                    title: v.title,
                    content: v.content,
                    sender: v.sender,
                    receiver: v.receiver,
                    format: v.format,
                    extra: v.extra,
                    timestamp: v.timestamp,
                    file: String::new(),
                    file_type: String::new(),
                },
            ))
        }
        V2_TAG => {
            let v: V2 = body(rest)?;
            Ok((
                v.stored_at,
                Message {
                    id: v.id,
                    action: v.action,
                    title: v.title,
                    content: v.content,
                    sender: v.sender,
                    receiver: v.receiver,
                    format: v.format,
                    extra: v.extra,
                    timestamp: v.timestamp,
                    file: v.file,
                    file_type: v.file_type,
                },
            ))
        }
        other => Err(ValueError::UnknownVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let m = Message {
            file: "http://files.example/a.png".into(),
            file_type: "image".into(),
            ..cim_core::testing::typical_message()
        };
        let bytes = encode(42, &m);
        assert_eq!(bytes[0], 2);
        assert_eq!(decode(&bytes).unwrap(), (42, m));
        for at in [0, 42, -1, i64::MIN, i64::MAX, 1_700_000_000_000] {
            assert_eq!(stored_at(&encode(at, &Message::default())), Some(at));
        }
        assert_eq!(stored_at(&[]), None);
        assert_eq!(stored_at(&[9, 1]), None);
        assert!(matches!(decode(&[]), Err(ValueError::Empty)));
        assert!(matches!(
            decode(&[9, 1, 2]),
            Err(ValueError::UnknownVersion(9))
        ));
        assert!(matches!(decode(&[1, 0xff]), Err(ValueError::Corrupt(_))));
        assert!(matches!(decode(&[2, 0xff]), Err(ValueError::Corrupt(_))));
    }

    /// A value exactly as the version-1 encoder wrote it (before attachments) still reads.
    #[test]
    fn version_1_value_still_decodes() {
        let v1: &[u8] = &[
            0x01, 0xfd, 0xe8, 0xd3, 0xca, 0x9f, 0x17, 0x03, 0x00, 0x00, 0x54, 0x01, 0x32, 0x01,
            0x74, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x06, 0x73, 0x79, 0x73, 0x74, 0x65, 0x6d,
            0x02, 0x75, 0x31, 0x03, 0x74, 0x78, 0x74, 0x01, 0x65, 0xfd, 0x00, 0xd0, 0xca, 0x9f,
            0x17, 0x03, 0x00, 0x00,
        ];
        let expected = Message {
            id: 42,
            action: "2".into(),
            title: "t".into(),
            content: "hello".into(),
            sender: "system".into(),
            receiver: "u1".into(),
            format: "txt".into(),
            extra: "e".into(),
            timestamp: 1_700_000_000_000,
            ..Message::default()
        };
        assert_eq!(decode(v1).unwrap(), (1_700_000_000_500, expected.clone()));
        // Written again, it becomes a version-2 value with the same content.
        let v2 = encode(1_700_000_000_500, &expected);
        assert_eq!(v2[0], 2);
        assert_eq!(decode(&v2).unwrap(), (1_700_000_000_500, expected));
    }
}
