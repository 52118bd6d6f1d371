//! [`DataMap`]: the string-to-string map carried by requests and replies.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `data` map of a [`SentBody`](crate::SentBody) or [`ReplyBody`](crate::ReplyBody).
///
/// CIM's maps hold a handful of short entries, so this is a vector of pairs that keeps insertion
/// order: encoders write entries in the order they were inserted (the worked examples of the
/// protocol put `uid` before `channel`), and lookups are a linear scan, which beats hashing at
/// this size. Keys are unique: [`insert`](Self::insert) replaces an existing value, as protobuf's
/// "last one wins" rule for repeated map keys requires.
///
/// Equality ignores order: two maps are equal when they hold the same entries.
#[derive(Clone, Default)]
pub struct DataMap {
    entries: Vec<(String, String)>,
}

impl DataMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
        }
    }

    /// Sets `key` to `value`, returning the previous value if there was one. A new key goes last.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key`, returning its value if it was present. Keeps the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
                let mut map = DataMap::with_capacity(access.size_hint().unwrap_or(0).min(64));
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
