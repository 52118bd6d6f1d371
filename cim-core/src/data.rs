//! [`DataMap`]: the string-to-string map carried by requests and replies.

use std::fmt;
use std::hash::{BuildHasher, RandomState};

use crate::codec::CodecError;
use hashbrown::HashTable;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maps of up to this many entries are searched by a scan; a larger one gets a hash index.
const SCAN_MAX: usize = 16;

/// The `data` map of a [`SentBody`](crate::SentBody) or [`ReplyBody`](crate::ReplyBody).
///
/// CIM's maps hold a handful of short entries (a bind carries about eight), so this is a vector
/// of pairs that keeps insertion order: encoders write entries in the order they were inserted
/// (the worked examples of the protocol put `uid` before `channel`), and a small map is searched
/// by a scan, which beats hashing at this size. Past 16 entries the map also keeps a hash index
/// of its keys (seeded per map, so a peer cannot choose colliding keys), so that building a map
/// of `n` entries costs `O(n)` whatever its size: decoders build maps from peer input, one
/// insert per entry. Keys are unique: [`insert`](Self::insert) replaces an existing value, as
/// protobuf's "last one wins" rule for repeated map keys requires.
///
/// How many entries a decoder accepts in one map is the codec's limit
/// ([`DEFAULT_MAX_ENTRIES`](Self::DEFAULT_MAX_ENTRIES) unless configured), refused with
/// [`CodecError::TooManyEntries`](crate::CodecError::TooManyEntries).
///
/// Equality ignores order: two maps are equal when they hold the same entries.
#[derive(Clone, Default)]
pub struct DataMap {
    entries: Vec<(String, String)>,
    /// Positions in `entries`, by key; present once the map has more than [`SCAN_MAX`] entries.
    index: Option<Box<Index>>,
}

/// The hash index of a large map.
#[derive(Clone)]
struct Index {
    table: HashTable<usize>,
    hasher: RandomState,
}

impl Index {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// An index of `entries` (whose keys are unique), with room for `capacity` keys.
    fn build(entries: &[(String, String)], capacity: usize) -> Box<Index> {
        let mut index = Box::new(Index {
            table: HashTable::with_capacity(capacity.max(entries.len())),
            hasher: RandomState::new(),
        });
        for (at, (k, _)) in entries.iter().enumerate() {
            let hash = index.hash(k);
            index
                .table
                .insert_unique(hash, at, |&i| rehash(&index.hasher, entries, i));
        }
        index
    }

    /// The position of `key` in `entries`.
    fn find(&self, entries: &[(String, String)], key: &str) -> Option<usize> {
        self.table
            .find(self.hash(key), |&i| key_at(entries, i, key))
            .copied()
    }
}

/// The hash of the key at position `i` (for the table to grow).
fn rehash(hasher: &RandomState, entries: &[(String, String)], i: usize) -> u64 {
    entries
        .get(i)
        .map_or(0, |(k, _)| hasher.hash_one(k.as_str()))
}

/// Whether the key at position `i` is `key`.
fn key_at(entries: &[(String, String)], i: usize, key: &str) -> bool {
    entries.get(i).is_some_and(|(k, _)| keys_equal(k, key))
}

/// Every comparison of two keys goes through here, so that tests can count them.
#[inline]
fn keys_equal(a: &str, b: &str) -> bool {
    #[cfg(feature = "testing")]
    comparisons::count();
    a == b
}

/// The number of key comparisons made by the maps of this thread, for tests that bound the
/// work of decoding (feature `testing`).
#[cfg(feature = "testing")]
pub(crate) mod comparisons {
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count() {
        COUNT.with(|c| c.set(c.get() + 1));
    }

    /// Comparisons made on this thread so far.
    pub(crate) fn get() -> u64 {
        COUNT.with(Cell::get)
    }
}

impl DataMap {
    /// How many entries a decoder accepts in one map unless configured otherwise: 256, some
    /// thirty times what CIM's requests carry (a bind has about eight), so that an application
    /// with rich requests fits, while the largest map a peer can make the server build stays
    /// small.
    pub const DEFAULT_MAX_ENTRIES: usize = 256;

    /// An empty map.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            index: None,
        }
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
            index: None,
        }
    }

    /// The position of `key`.
    fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.find(&self.entries, key),
            None => self.entries.iter().position(|(k, _)| keys_equal(k, key)),
        }
    }

    /// Sets `key` to `value`, returning the previous value if there was one. A new key goes last.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        if let Some(at) = self.position(&key) {
            return self
                .entries
                .get_mut(at)
                .map(|(_, v)| std::mem::replace(v, value));
        }
        let at = self.entries.len();
        match &mut self.index {
            Some(index) => {
                let Index { table, hasher } = &mut **index;
                let entries = &self.entries;
                table.insert_unique(hasher.hash_one(key.as_str()), at, |&i| {
                    rehash(hasher, entries, i)
                });
                self.entries.push((key, value));
            }
            None => {
                self.entries.push((key, value));
                if self.entries.len() > SCAN_MAX {
                    self.index = Some(Index::build(&self.entries, self.entries.capacity()));
                }
            }
        }
        None
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.position(key)?;
        self.entries.get(at).map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Removes `key`, returning its value if it was present. Keeps the order of the others (so
    /// it takes time proportional to the size of the map).
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.position(key)?;
        let (_, value) = self.entries.remove(at);
        if let Some(index) = &mut self.index {
            if self.entries.len() <= SCAN_MAX {
                self.index = None;
            } else {
                // Drop the removed position and close the gap it leaves.
                index.table.retain(|i| *i != at);
                for i in index.table.iter_mut() {
                    if *i > at {
                        *i -= 1;
                    }
                }
            }
        }
        Some(value)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A map of decoded `entries`, in their order, the last value of a repeated key winning;
    /// more than `max` distinct keys are refused as soon as the one too many is seen.
    pub fn from_entries_within(
        entries: impl IntoIterator<Item = (String, String)>,
        max: usize,
    ) -> Result<Self, CodecError> {
        let entries = entries.into_iter();
        let mut map = Self::with_capacity(entries.size_hint().0.min(max));
        for (k, v) in entries {
            map.insert(k, v);
            if map.len() > max {
                return Err(CodecError::TooManyEntries { max });
            }
        }
        Ok(map)
    }

    /// Refuses the map if it has more than `max` entries.
    pub fn check_entries(&self, max: usize) -> Result<(), CodecError> {
        if self.len() > max {
            return Err(CodecError::TooManyEntries { max });
        }
        Ok(())
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl PartialEq for DataMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for DataMap {}

impl fmt::Debug for DataMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for DataMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = Self::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for DataMap {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for DataMap {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl IntoIterator for DataMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Serialize for DataMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Deserializes a map, keeping its order. Values may be strings, numbers or booleans (the
/// latter two are kept as their text, as JavaScript clients put numbers into `data`); a `null`
/// value drops the entry.
impl<'de> Deserialize<'de> for DataMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = DataMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<DataMap, E> {
                Ok(DataMap::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<DataMap, A::Error> {
                let mut map = DataMap::with_capacity(access.size_hint().unwrap_or(0).min(SCAN_MAX));
                while let Some((k, v)) = access.next_entry::<String, LenientString>()? {
                    if let Some(v) = v.0 {
                        map.insert(k, v);
                    }
                }
                Ok(map)
            }
        }
        deserializer.deserialize_any(MapVisitor)
    }
}

/// A string that also accepts a number or a boolean (kept as text) and `null` (as `None`).
pub(crate) struct LenientString(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LenientString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LenientString(Some(v.to_string())))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientString(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_keeps_order() {
        let mut m = DataMap::new();
        assert_eq!(m.insert("uid", "1"), None);
        assert_eq!(m.insert("channel", "web"), None);
        assert_eq!(m.insert("uid", "2").as_deref(), Some("1"));
        let keys: Vec<_> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["uid", "channel"]);
        assert_eq!(m.get("uid"), Some("2"));
        assert_eq!(m.remove("uid").as_deref(), Some("2"));
        assert_eq!(m.len(), 1);
    }

    /// Distinct keys `k0`, `k1`, ... with their index as value.
    fn numbered(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("k{i}"), i.to_string())).collect()
    }

    /// Building a map of n entries takes O(n) key comparisons, not O(n²): 8 000 distinct keys
    /// (a 64 KB frame's worth) cost a scan's 120 comparisons for the first 16 entries and about
    /// one per entry after that. A map that scanned on every insert would make n²/2, 32 million.
    #[test]
    fn building_a_large_map_is_linear_in_comparisons() {
        let small = numbered(8);
        let before = crate::testing::key_comparisons();
        let map: DataMap = small.into_iter().collect();
        let small_cost = crate::testing::key_comparisons() - before;
        assert_eq!(map.len(), 8);
        assert!(small_cost <= 28, "{small_cost}");

        let n = 8000;
        let before = crate::testing::key_comparisons();
        let map: DataMap = numbered(n).into_iter().collect();
        let cost = crate::testing::key_comparisons() - before;
        assert_eq!(map.len(), n);
        assert!(
            cost <= 2 * n as u64 + 120,
            "{cost} comparisons for {n} entries"
        );

        // Looking every key up again, and replacing every value, stays linear too.
        let mut map = map;
        let before = crate::testing::key_comparisons();
        for (k, v) in numbered(n) {
            assert_eq!(map.get(&k), Some(v.as_str()));
            assert_eq!(map.insert(k, "x").as_deref(), Some(v.as_str()));
        }
        let cost = crate::testing::key_comparisons() - before;
        assert!(
            cost <= 4 * n as u64,
            "{cost} comparisons for {n} lookups and replacements"
        );
        assert_eq!(map.len(), n);
    }

    /// A large map behaves as the small one does: insertion order, last value wins, removal
    /// keeps the order of the rest, across the switch to an index and back.
    #[test]
    fn large_maps_keep_the_rules() {
        let mut map = DataMap::new();
        let mut model: Vec<(String, String)> = Vec::new();
        let model_insert = |model: &mut Vec<(String, String)>, k: &str, v: &str| match model
            .iter_mut()
            .find(|(mk, _)| mk == k)
        {
            Some((_, mv)) => Some(std::mem::replace(mv, v.to_owned())),
            None => {
                model.push((k.to_owned(), v.to_owned()));
                None
            }
        };
        for round in 0..3 {
            for i in 0..40 {
                let (k, v) = (format!("k{}", i * 7 % 40), format!("{round}-{i}"));
                assert_eq!(
                    map.insert(k.as_str(), v.as_str()),
                    model_insert(&mut model, &k, &v)
                );
            }
            for i in (0..40).step_by(3) {
                let k = format!("k{i}");
                let expected = model
                    .iter()
                    .position(|(mk, _)| *mk == k)
                    .map(|at| model.remove(at).1);
                assert_eq!(map.remove(&k), expected);
            }
            let got: Vec<_> = map
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, model);
            for (k, v) in &model {
                assert_eq!(map.get(k), Some(v.as_str()));
            }
            assert_eq!(map.get("absent"), None);
        }
        // Down to a scanned map and up again.
        while map.len() > 3 {
            let k = map.iter().next().map(|(k, _)| k.to_owned()).unwrap();
            model.retain(|(mk, _)| *mk != k);
            map.remove(&k);
        }
        for i in 100..130 {
            map.insert(format!("k{i}"), "v");
            model.push((format!("k{i}"), "v".into()));
        }
        let got: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got, model);
        assert_eq!(map.clone(), map);
    }

    #[test]
    fn decoded_maps_stop_at_the_limit() {
        let at_limit = DataMap::from_entries_within(numbered(256), 256).unwrap();
        assert_eq!(at_limit.len(), 256);
        assert_eq!(
            DataMap::from_entries_within(numbered(257), 256),
            Err(CodecError::TooManyEntries { max: 256 })
        );
        // Repeated keys are one entry: the last value wins and counts once.
        let mut repeated = numbered(256);
        repeated.push(("k0".into(), "last".into()));
        let map = DataMap::from_entries_within(repeated, 256).unwrap();
        assert_eq!((map.len(), map.get("k0")), (256, Some("last")));
        assert_eq!(map.check_entries(256), Ok(()));
        assert_eq!(
            map.check_entries(255),
            Err(CodecError::TooManyEntries { max: 255 })
        );
    }

    /// A map is a vector (24 bytes) and the pointer to its index (8): 32 bytes, 8 more than the
    /// vector alone, in every request and reply.
    #[test]
    fn size() {
        assert_eq!(std::mem::size_of::<DataMap>(), 32);
    }

    #[test]
    fn equality_ignores_order() {
        let a = DataMap::from([("a", "1"), ("b", "2")]);
        let b = DataMap::from([("b", "2"), ("a", "1")]);
        let c = DataMap::from([("b", "2"), ("a", "3")]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn json_is_lenient_and_ordered() {
        let m: DataMap =
            serde_json::from_str(r#"{"z":"s","n":12,"f":1.5,"b":true,"gone":null}"#).unwrap();
        let got: Vec<_> = m.iter().collect();
        assert_eq!(got, [("z", "s"), ("n", "12"), ("f", "1.5"), ("b", "true")]);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"z":"s","n":"12","f":"1.5","b":"true"}"#
        );
    }
}
