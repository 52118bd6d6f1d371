//! [`Host`]: where a listener listens — an IP address, or a name resolved at start-up.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A listener's host as configured: an IP address (`127.0.0.1`, `::`, `0.0.0.0`) or a host
/// name (`localhost`, `push.example.com`) that is resolved when the server starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Host {
    /// An address.
    Ip(IpAddr),
    /// A name, resolved at start-up.
    Name(String),
}

impl Host {
    /// The loopback address `127.0.0.1`, every listener's default.
    pub const LOOPBACK: Host = Host::Ip(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    /// The socket address of `port` on this host: a name is looked up (the first IPv4 address
    /// it has, else the first address). The error says what the lookup found or why it failed.
    pub async fn resolve(&self, port: u16) -> Result<SocketAddr, String> {
        let name = match self {
            Host::Ip(ip) => return Ok(SocketAddr::new(*ip, port)),
            Host::Name(name) => name,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot be resolved: {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| "resolves to no address".to_owned())
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::LOOPBACK
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Whether `name` is a host name: dot-separated labels of letters, digits and hyphens (not at
/// either end of a label), 253 bytes at most.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl FromStr for Host {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        // `[::1]`, as addresses are often written.
        if let Some(ip) = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.parse::<IpAddr>().ok())
        {
            return Ok(Host::Ip(ip));
        }
        if is_host_name(s) {
            return Ok(Host::Name(s.to_owned()));
        }
        Err(format!("{s:?}: not an IP address or a host name"))
    }
}

impl TryFrom<String> for Host {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Host> for String {
    fn from(h: Host) -> String {
        h.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!("0.0.0.0".parse::<Host>(), Ok(Host::Ip([0, 0, 0, 0].into())));
        assert_eq!(
            "[::1]".parse::<Host>(),
            Ok(Host::Ip(std::net::Ipv6Addr::LOCALHOST.into()))
        );
        assert_eq!(
            "localhost".parse::<Host>(),
            Ok(Host::Name("localhost".into()))
        );
        assert_eq!(
            "push-1.example.com".parse::<Host>(),
            Ok(Host::Name("push-1.example.com".into()))
        );
        for bad in ["", "a b", "-x", "x-", "a..b", "http://x", "1.2.3.4:80"] {
            assert!(bad.parse::<Host>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addr = Host::Name("localhost".into()).resolve(80).await.unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 80);
    }
}
