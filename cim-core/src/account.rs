//! Account ids: [`check_uid`], the one rule every entry point applies to an account id before it
//! is bound, addressed or stored — not empty, at most a configurable number of bytes, and no
//! control characters (which would break log lines, the XML protocol and terminals).

/// The default of the configurable maximum, in bytes.
pub const DEFAULT_MAX_UID_BYTES: usize = 128;

/// Why an account id is refused. The message reads after the field's name:
/// `receiver is empty`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// The id is the empty string.
    #[error("is empty")]
    Empty,
    /// The id is longer than the maximum.
    #[error("is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum in bytes.
        max: usize,
    },
    /// The id contains a control character (Unicode category Cc).
    #[error("contains the control character U+{code:04X} at byte {at}")]
    Control {
        /// The character's code point.
        code: u32,
        /// Its byte offset in the id.
        at: usize,
    },
}

/// Checks an account id: non-empty, at most `max_bytes` bytes of UTF-8, no control characters.
///
/// ```
/// use cim_core::{UidError, check_uid};
///
/// assert_eq!(check_uid("10000", 128), Ok(()));
/// assert_eq!(check_uid("", 128), Err(UidError::Empty));
/// assert_eq!(check_uid("abc", 2), Err(UidError::TooLong { len: 3, max: 2 }));
/// assert_eq!(check_uid("a\nb", 128), Err(UidError::Control { code: 0x0a, at: 1 }));
/// ```
pub fn check_uid(uid: &str, max_bytes: usize) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > max_bytes {
        return Err(UidError::TooLong {
            len: uid.len(),
            max: max_bytes,
        });
    }
    match uid.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(UidError::Control {
            code: u32::from(c),
            at,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_bytes_at_the_edge() {
        assert_eq!(check_uid(&"a".repeat(128), 128), Ok(()));
        assert_eq!(
            check_uid(&"a".repeat(129), 128),
            Err(UidError::TooLong { len: 129, max: 128 })
        );
        // Eight two-byte characters fill 16 bytes; one more byte is too many.
        assert_eq!(check_uid(&"é".repeat(8), 16), Ok(()));
        assert_eq!(
            check_uid(&format!("{}x", "é".repeat(8)), 16),
            Err(UidError::TooLong { len: 17, max: 16 })
        );
    }

    #[test]
    fn control_characters_anywhere_are_refused() {
        for (uid, code, at) in [
            ("\0", 0x00, 0),
            ("ab\t", 0x09, 2),
            ("a\u{7f}", 0x7f, 1),
            ("é\u{85}", 0x85, 2),
        ] {
            assert_eq!(
                check_uid(uid, 128),
                Err(UidError::Control { code, at }),
                "{uid:?}"
            );
        }
        // Other non-ASCII text is an account id like any other.
        assert_eq!(check_uid("用户 10000", 128), Ok(()));
    }

    #[test]
    fn messages_read_after_a_field_name() {
        let e = check_uid("a\nb", 128).unwrap_err();
        assert_eq!(
            format!("receiver {e}"),
            "receiver contains the control character U+000A at byte 1"
        );
        let e = check_uid("abc", 2).unwrap_err();
        assert_eq!(
            format!("uid {e}"),
            "uid is 3 bytes, more than the limit of 2"
        );
    }
}
