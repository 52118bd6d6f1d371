//! Ports in the configuration: a number out of range is named as such, not as a wrong type.

use serde::{Deserialize, Deserializer};

/// `n` as a port, or its refusal.
fn checked<E: serde::de::Error>(n: i64) -> Result<u16, E> {
    u16::try_from(n).map_err(|_| E::custom(format!("{n} is not a port: must be 0 to 65535")))
}

/// A port, 0 to 65535.
pub(crate) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    checked(i64::deserialize(d)?)
}

/// A port that may be left out.
pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Option::<i64>::deserialize(d)?.map(checked).transpose()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::port")]
        port: u16,
        #[serde(default, deserialize_with = "super::optional")]
        other: Option<u16>,
    }

    fn parse(s: &str) -> Result<T, String> {
        toml::from_str::<T>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn ports_hold_at_their_edges() {
        assert_eq!(parse("port = 0").unwrap().port, 0);
        assert_eq!(parse("port = 65535").unwrap().port, 65535);
        for bad in ["65536", "-1", "70000"] {
            let e = parse(&format!("port = {bad}")).err().unwrap();
            assert!(
                e.contains(&format!("{bad} is not a port: must be 0 to 65535")),
                "{e}"
            );
        }
        let t = parse("port = 1\nother = 65535").unwrap();
        assert_eq!(t.other, Some(65535));
        assert_eq!(parse("port = 1").unwrap().other, None);
        let e = parse("port = 1\nother = 65536").err().unwrap();
        assert!(e.contains("65536 is not a port"), "{e}");
    }
}
