//! Stored values: one format-version byte, then the encoding of that version. Only this module
//! knows the encoding, so it can change (a new version byte) without losing stored data.

use bincode::{Decode, Encode};
use cim_core::Message;

/// The version written today: bincode 2 (standard configuration) of [`V1`].
const V1_TAG: u8 = 1;

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

/// Encodes a message and its storage time.
pub fn encode(stored_at: i64, m: &Message) -> Vec<u8> {
    let v = V1 {
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
    };
    let mut out = Vec::with_capacity(64 + m.content.len());
    out.push(V1_TAG);
    // Encoding owned strings and integers into a Vec cannot fail.
    let _ = bincode::encode_into_std_write(&v, &mut out, bincode::config::standard());
    out
}

/// The storage time of a value written by [`encode`], read without decoding the message (it is
/// the first field); `None` if the value is not one this build can read.
pub fn stored_at(bytes: &[u8]) -> Option<i64> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        V1_TAG => bincode::decode_from_slice::<i64, _>(rest, bincode::config::standard())
            .ok()
            .map(|(at, _)| at),
        _ => None,
    }
}

/// Decodes a value written by [`encode`] (any version this build knows).
pub fn decode(bytes: &[u8]) -> Result<(i64, Message), ValueError> {
    let (&tag, rest) = bytes.split_first().ok_or(ValueError::Empty)?;
    match tag {
        V1_TAG => {
            let (v, _): (V1, usize) = bincode::decode_from_slice(rest, bincode::config::standard())
                .map_err(|e| ValueError::Corrupt(e.to_string()))?;
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
        let m = cim_core::testing::typical_message();
        let bytes = encode(42, &m);
        assert_eq!(bytes[0], 1);
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
    }
}
