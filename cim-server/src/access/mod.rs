//! Who a connection really comes from, and whether it may: the PROXY protocol header of a
//! trusted load balancer ([`proxy_header`]), the forwarding headers of a trusted HTTP proxy
//! ([`forwarded`]), and the allow and deny lists of networks a listener checks that address
//! against ([`Access`]).
//!
//! What a listener does with a new connection, with `proxy_protocol` on:
//!
//! - from a trusted proxy, the connection must start with a PROXY header (version 1 or 2); the
//!   client it names is the connection's address from then on (in its session's `remoteAddr`
//!   and in the logs). A missing, malformed or oversized header closes the connection, with the
//!   reason logged. A header that names no client (`LOCAL`, `UNKNOWN`: the balancer's own
//!   health check) leaves the proxy's address.
//! - from any other address, a connection is served as it is, with its own address, unless it
//!   starts with a PROXY header: it may not say who it speaks for, and is closed.
//!
//! The allow and deny lists are checked on that address, before anything else is read: a
//! denied network is closed at once (an address in `deny`, or, when `allow` is not empty, one
//! in none of its networks). The lists are about clients: a trusted proxy's own connections are
//! never refused by them. On a WebSocket listener and the HTTP API the lists are checked again
//! on the client the forwarding headers name, when the connection is from a trusted proxy.

pub mod forwarded;
mod networks;
pub mod proxy_header;

use std::net::{IpAddr, SocketAddr};

pub use forwarded::ForwardedHeader;
pub use networks::{Network, Networks};
pub use proxy_header::HeaderError;

/// The default limit of a PROXY header's length, in bytes: room for a version 2 header with
/// the extensions balancers add (TLS details, a connection id, a cloud endpoint's id).
pub const DEFAULT_MAX_PROXY_HEADER: usize = 1024;

/// A listener's rules of who connects: where the real client address comes from and which
/// addresses are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read a PROXY header on every connection from a trusted proxy (default off).
    pub proxy_protocol: bool,
    /// The networks of the load balancers and proxies whose PROXY headers and forwarding
    /// headers are believed.
    pub trusted_proxies: Networks,
    /// Which header the trusted proxies write the client into (WebSocket and HTTP only).
    pub forwarded_header: ForwardedHeader,
    /// When not empty, only clients in these networks are served.
    pub allow: Networks,
    /// Clients in these networks are refused (before `allow` is looked at).
    pub deny: Networks,
    /// The longest PROXY header taken, in bytes.
    pub max_proxy_header: usize,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            proxy_protocol: false,
            trusted_proxies: Networks::none(),
            forwarded_header: ForwardedHeader::default(),
            allow: Networks::none(),
            deny: Networks::none(),
            max_proxy_header: DEFAULT_MAX_PROXY_HEADER,
        }
    }
}

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// It is in a network of the deny list.
    #[error("in a network of the deny list")]
    Denied,
    /// The allow list is not empty and has no network of it.
    #[error("in no network of the allow list")]
    NotAllowed,
}

impl Access {
    /// Whether `ip` is a trusted proxy's.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.contains(ip)
    }

    /// Whether a client at `ip` is served: never when it is denied, and when the allow list is
    /// not empty only when it allows it. A trusted proxy's own address is always served.
    pub fn admits(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.trusts(ip) {
            return Ok(());
        }
        if self.deny.contains(ip) {
            return Err(Denied::Denied);
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(Denied::NotAllowed);
        }
        Ok(())
    }

    /// The client of a request with `headers` over a connection from `conn` (see
    /// [`forwarded::client`]).
    pub fn forwarded_client<'a>(
        &self,
        conn: SocketAddr,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> SocketAddr {
        forwarded::client(conn, headers, self.forwarded_header, &self.trusted_proxies)
    }
}

/// Why a connection was closed before its protocol started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Its address is refused by the lists.
    #[error("{addr} is {why}")]
    Denied {
        /// The client's address.
        addr: SocketAddr,
        /// Which list.
        why: Denied,
    },
    /// A PROXY header from an address that is not a trusted proxy's.
    #[error("PROXY header from {0}, which is not a trusted proxy")]
    Untrusted(SocketAddr),
    /// A trusted proxy's connection without a usable header.
    #[error("{0}")]
    Header(HeaderError),
    /// A connection that ended (or failed) before it sent anything, or before its header ended.
    #[error("{0}")]
    Gone(HeaderError),
}

/// Reads what a connection from `peer` starts with, as `access` says (see the module's
/// documentation): returns the client's address, or why the connection is refused. Unbounded
/// in time: the caller bounds it.
pub(crate) async fn client_of(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    access: &Access,
) -> Result<SocketAddr, Refused> {
    let client = if !access.proxy_protocol {
        peer
    } else if access.trusts(peer.ip()) {
        match proxy_header::read(stream, access.max_proxy_header).await {
            Ok(Some(source)) => source,
            Ok(None) => peer,
            // The proxy gave up (its client left): nothing to refuse.
            Err(e @ (HeaderError::Closed | HeaderError::Io(_))) => return Err(Refused::Gone(e)),
            Err(e) => return Err(Refused::Header(e)),
        }
    } else {
        match proxy_header::starts_with_header(stream).await {
            Ok(true) => return Err(Refused::Untrusted(peer)),
            Ok(false) => peer,
            Err(e) => return Err(Refused::Gone(e)),
        }
    };
    access
        .admits(client.ip())
        .map_err(|why| Refused::Denied { addr: client, why })?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn deny_wins_over_allow_and_trusted_proxies_are_always_served() {
        let access = Access {
            trusted_proxies: "10.0.0.1".parse().unwrap(),
            allow: "192.168.0.0/16".parse().unwrap(),
            deny: "192.168.66.0/24,10.0.0.0/8".parse().unwrap(),
            ..Access::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(access.admits(ip("192.168.1.1")), Ok(()));
        assert_eq!(access.admits(ip("192.168.66.1")), Err(Denied::Denied));
        assert_eq!(access.admits(ip("172.16.0.1")), Err(Denied::NotAllowed));
        assert_eq!(access.admits(ip("10.0.0.2")), Err(Denied::Denied));
        assert_eq!(access.admits(ip("10.0.0.1")), Ok(()));
        assert_eq!(Access::default().admits(ip("8.8.8.8")), Ok(()));
    }
}
