//! [`Networks`]: a list of IP networks (`10.0.0.0/8`, `2001:db8::/32`, or a single address),
//! as the allow, deny and trusted-proxy lists are written.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One network: an address and a prefix length (`10.0.0.0/8`); an address alone is the network
/// of that one address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network(IpNet);

impl Network {
    /// Whether `ip` is in this network. An IPv4 address seen as IPv6 (`::ffff:10.1.2.3`, as a
    /// dual-stack socket reports it) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Network(IpNet::from(ip.to_canonical())));
        }
        s.parse::<IpNet>()
            .map(|net| Network(net.trunc()))
            .map_err(|_| {
                format!(
                    "{s:?} is not a network: expected an address with a prefix length \
                     (10.0.0.0/8, 2001:db8::/32) or an address alone"
                )
            })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A list of networks; empty by default. In a configuration file it is an array of strings
/// (`["10.0.0.0/8", "192.168.1.7"]`); in an environment variable, one string with the networks
/// separated by commas (`CIM_TCP__ALLOW=10.0.0.0/8,192.168.1.7`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks(Vec<Network>);

impl Networks {
    /// No network.
    pub const fn none() -> Self {
        Networks(Vec::new())
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The networks.
    pub fn iter(&self) -> impl Iterator<Item = &Network> {
        self.0.iter()
    }

    /// Parses every item of `items`; the error names the first that is not a network.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        items
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .map(Network::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Networks)
    }
}

impl FromStr for Networks {
    type Err = String;

    /// Networks separated by commas.
    fn from_str(s: &str) -> Result<Self, String> {
        Networks::parse(s.split(','))
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            n.fmt(f)?;
        }
        Ok(())
    }
}

impl Serialize for Networks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for Networks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Networks;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of networks, such as [\"10.0.0.0/8\", \"192.168.1.7\"]")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Networks, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Networks, A::Error> {
                let mut all = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    all.push(item.parse().map_err(serde::de::Error::custom)?);
                }
                Ok(Networks(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_their_addresses_and_no_others() {
        let nets: Networks = "10.0.0.0/8, 192.168.1.7,2001:db8::/32".parse().unwrap();
        for inside in ["10.0.0.1", "10.255.255.255", "192.168.1.7", "2001:db8::1"] {
            assert!(nets.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.168.1.8", "2001:db9::1", "::1", "127.0.0.1"] {
            assert!(!nets.contains(ip(outside)), "{outside}");
        }
        assert_eq!(nets.to_string(), "10.0.0.0/8,192.168.1.7/32,2001:db8::/32");
    }

    #[test]
    fn an_ipv4_address_seen_as_ipv6_matches_its_ipv4_network() {
        let nets: Networks = "127.0.0.0/8".parse().unwrap();
        assert!(nets.contains(ip("::ffff:127.0.0.2")));
        let one: Networks = "::ffff:10.1.2.3".parse().unwrap();
        assert!(one.contains(ip("10.1.2.3")));
    }

    #[test]
    fn host_bits_are_dropped_and_bad_networks_named() {
        let nets: Networks = "10.1.2.3/8".parse().unwrap();
        assert_eq!(nets.to_string(), "10.0.0.0/8");
        for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", "::1/129"] {
            let e = bad.parse::<Networks>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!("".parse::<Networks>().unwrap().is_empty());
    }
}
