//! Key layout: one account's messages are one ordered range.
//!
//! - message: `b'm'`, the account's length (u32 big-endian), the account, the sequence (u64
//!   big-endian). The length prefix keeps `a` and `ab` apart; big-endian sequences sort in order.
//! - last sequence of an account: `b's'`, the account.

use cim_core::engine::Seq;

/// Prefix of every message key of `uid`.
pub fn account_prefix(uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + uid.len() + 8);
    k.push(b'm');
    k.extend_from_slice(&(uid.len() as u32).to_be_bytes());
    k.extend_from_slice(uid.as_bytes());
    k
}

/// Key of message `seq` of `uid`.
pub fn message(uid: &str, seq: Seq) -> Vec<u8> {
    let mut k = account_prefix(uid);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence at the end of a message key.
pub fn seq_of(key: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq::from_be_bytes(tail))
}

/// The account of a message key.
pub fn uid_of(key: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(5..5 + len)?).ok()
}

/// Key of the last sequence of `uid`.
pub fn last_seq(uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + uid.len());
    k.push(b's');
    k.extend_from_slice(uid.as_bytes());
    k
}

/// Prefix of every message key.
pub const MESSAGES: &[u8] = b"m";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = message("ab", 258);
        assert_eq!(k, [b'm', 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(seq_of(&k), Some(258));
        assert_eq!(uid_of(&k), Some("ab"));
        assert!(!message("ab", 1).starts_with(&account_prefix("a")));
        assert!(message("a", 1) < message("a", 256));
    }
}
