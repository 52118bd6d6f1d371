//! Which accounts may have a row in the `seqs` table: a Bloom filter, so that the question a
//! bind asks first ("has this account ever had a message stored?") is answered without a read
//! transaction on a blocking thread when the answer is no — as it is for most binds.
//!
//! A "no" is certain: an account's bits are set before its first message is handed to the
//! writer, and `seqs` rows are never deleted. A "maybe" costs what the read cost before. The
//! filter is sized when the store opens, at 16 bits per account already stored rounded up to a
//! power of two (at least [`MIN_BITS`], at most [`MAX_BITS`]), and is resident from then on;
//! with four probes that is about one false "maybe" in 400 while the number of accounts stays
//! below that size, and more as it grows past it — never a wrong answer.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The smallest filter: 2^23 bits (1 MiB), enough for half a million accounts at 16 bits each.
pub(super) const MIN_BITS: u64 = 1 << 23;
/// The largest filter: 2^32 bits (512 MiB), for a quarter of a billion accounts.
pub(super) const MAX_BITS: u64 = 1 << 32;
const BITS_PER_ACCOUNT: u64 = 16;
const PROBES: u64 = 4;

pub(super) struct AccountFilter {
    words: Box<[AtomicU64]>,
    /// `bits - 1`; `bits` is a power of two.
    mask: u64,
}

impl AccountFilter {
    /// A filter sized for `accounts` accounts (see the module's doc).
    pub(super) fn with_capacity(accounts: u64) -> AccountFilter {
        let bits = accounts
            .saturating_mul(BITS_PER_ACCOUNT)
            .clamp(MIN_BITS, MAX_BITS)
            .next_power_of_two();
        let words = usize::try_from(bits / 64).unwrap_or(usize::MAX >> 6);
        AccountFilter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: bits - 1,
        }
    }

    /// Notes `uid` as an account that has (or is about to have) a row in `seqs`.
    pub(super) fn insert(&self, uid: &str) {
        for bit in self.bits(uid) {
            // Relaxed: a reader that must see this insert is ordered after it by whatever made
            // the append complete first (the caller's fence, or awaiting the append itself).
            if let Some(word) = self.word(bit) {
                word.fetch_or(1 << (bit % 64), Ordering::Relaxed);
            }
        }
    }

    /// `false` when `uid` has certainly no row in `seqs`.
    pub(super) fn may_contain(&self, uid: &str) -> bool {
        self.bits(uid).all(|bit| {
            self.word(bit)
                .is_none_or(|word| word.load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
        })
    }

    /// The word holding `bit` (always there: `bit <= mask`, and the filter has
    /// `(mask + 1) / 64` words).
    fn word(&self, bit: u64) -> Option<&AtomicU64> {
        self.words.get(usize::try_from(bit / 64).ok()?)
    }

    /// The account's bits, from one 64-bit hash by double hashing.
    fn bits(&self, uid: &str) -> impl Iterator<Item = u64> + use<> {
        let mut hasher = DefaultHasher::new();
        uid.hash(&mut hasher);
        let hash = hasher.finish();
        let (first, step) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        let mask = self.mask;
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(step)) & mask)
    }

    /// The filter's size in bits.
    #[cfg(test)]
    pub(super) fn len_bits(&self) -> u64 {
        self.mask + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_inserted_is_always_found() {
        let filter = AccountFilter::with_capacity(0);
        for i in 0..10_000 {
            filter.insert(&format!("u{i}"));
        }
        assert!((0..10_000).all(|i| filter.may_contain(&format!("u{i}"))));
        // Far below its size, almost nothing else is: 10 000 accounts in 2^23 bits.
        let false_maybes = (0..10_000)
            .filter(|i| filter.may_contain(&format!("other{i}")))
            .count();
        assert!(false_maybes < 10, "{false_maybes} false maybes in 10 000");
    }

    #[test]
    fn an_empty_filter_says_no() {
        let filter = AccountFilter::with_capacity(0);
        assert!(!filter.may_contain(""));
        assert!(!filter.may_contain("u"));
    }

    #[test]
    fn the_size_follows_the_accounts_within_its_bounds() {
        assert_eq!(AccountFilter::with_capacity(0).len_bits(), MIN_BITS);
        assert_eq!(AccountFilter::with_capacity(1_000).len_bits(), MIN_BITS);
        assert_eq!(AccountFilter::with_capacity(1 << 20).len_bits(), 1 << 24);
        assert_eq!(
            AccountFilter::with_capacity(3 << 20).len_bits(),
            1 << 26,
            "rounded up to a power of two"
        );
    }
}
