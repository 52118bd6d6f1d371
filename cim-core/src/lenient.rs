//! serde helpers that accept what JavaScript and Java clients actually send: `null` for an
//! empty string, numbers as strings and strings as numbers.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

use crate::data::LenientString;

/// A string field: `null` and absent mean `""`; numbers and booleans are kept as text.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(LenientString::deserialize(d)?.0.unwrap_or_default())
}

/// An `i64` field: a number, a string holding one, or `null` (0).
pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, a string holding one, or null")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format_args!("{v} does not fit in an i64")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            // JavaScript has only doubles; accept whole numbers within range.
            if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                Ok(v as i64)
            } else {
                Err(E::custom(format_args!("{v} is not a whole number")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            let t = v.trim();
            if t.is_empty() {
                return Ok(0);
            }
            t.parse()
                .map_err(|_| E::custom(format_args!("{v:?} is not an integer")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V)
}
