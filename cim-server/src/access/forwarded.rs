//! The client of an HTTP request (a WebSocket upgrade, a call of the HTTP API) as the proxies in
//! front of the server report it: `X-Forwarded-For`, `Forwarded` (RFC 7239) or `X-Real-IP`,
//! whichever the listener is told its proxies write.
//!
//! The headers are believed only as far as trusted proxies wrote them: starting from the
//! connection's own address, the hops are walked from the right (the last one was appended by
//! the proxy nearest to the server) past every trusted proxy, and the first hop that is not one
//! is the client. A client can put anything at the left of the list, never at its right; so
//! what it wrote is never reached while a trusted proxy is in between. A hop that cannot be
//! read (`unknown`, an obfuscated name, garbage) ends the walk at the proxy that wrote it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Networks;

/// Which header a listener's proxies write the client into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's `$proxy_add_x_forwarded_for`,
    /// HAProxy's `option forwardfor`, most cloud balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239; HAProxy's `option forwarded`).
    Forwarded,
    /// `X-Real-IP: client` (nginx's `proxy_set_header X-Real-IP $remote_addr`).
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name, in lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            "x-real-ip" => Ok(ForwardedHeader::XRealIp),
            _ => Err(format!(
                "{s:?}: expected one of x-forwarded-for, forwarded, x-real-ip"
            )),
        }
    }
}

impl TryFrom<String> for ForwardedHeader {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ForwardedHeader> for String {
    fn from(h: ForwardedHeader) -> String {
        h.name().to_owned()
    }
}

/// The client of a request that came over a connection from `conn`, with `headers` (name,
/// value; names in any case, in the order received): `conn` itself unless it is a trusted
/// proxy, else the rightmost hop of `header` that is not a trusted proxy. A hop without a port
/// gets port 0.
pub fn client<'a>(
    conn: SocketAddr,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    header: ForwardedHeader,
    trusted: &Networks,
) -> SocketAddr {
    if !trusted.contains(conn.ip()) {
        return conn;
    }
    // Every line of the header, in order, as one list (as HTTP joins repeated list headers).
    let lines: Vec<&str> = headers
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(header.name()))
        .map(|(_, value)| std::str::from_utf8(value).unwrap_or("\u{0}"))
        .collect();
    let hops: Vec<Option<SocketAddr>> = match header {
        ForwardedHeader::Forwarded => lines
            .iter()
            .flat_map(|l| split_top(l, b','))
            .map(forwarded_for)
            .collect(),
        ForwardedHeader::XForwardedFor | ForwardedHeader::XRealIp => lines
            .iter()
            .flat_map(|l| l.split(','))
            .map(|hop| node(hop.trim()))
            .collect(),
    };
    let mut current = conn;
    for hop in hops.into_iter().rev() {
        let Some(addr) = hop else {
            return current;
        };
        current = addr;
        if !trusted.contains(addr.ip()) {
            return addr;
        }
    }
    current
}

/// `s` split at `sep` where it is outside a quoted string.
fn split_top(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts.into_iter()
}

/// The `for=` node of one element of a `Forwarded` header.
fn forwarded_for(element: &str) -> Option<SocketAddr> {
    split_top(element, b';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some(node(value))
    })?
}

/// A node: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::7`, `[2001:db8::7]`, `[2001:db8::7]:4711`
/// (an obfuscated port, `_x`, is dropped); `None` for anything else.
fn node(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => {
            let (host, port) = s.split_once(':')?;
            (host, Some(port))
        }
    };
    let ip = host.parse::<IpAddr>().ok()?;
    match port {
        None => Some(SocketAddr::new(ip, 0)),
        Some(p) if p.starts_with('_') => Some(SocketAddr::new(ip, 0)),
        Some(p) => p.parse().ok().map(|p| SocketAddr::new(ip, p)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn run(conn: &str, header: ForwardedHeader, lines: &[(&str, &str)]) -> SocketAddr {
        let trusted: Networks = "10.0.0.0/8,192.168.0.1".parse().unwrap();
        client(
            addr(conn),
            lines.iter().map(|(n, v)| (*n, v.as_bytes())),
            header,
            &trusted,
        )
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // A client wrote two addresses of its choice; the proxies appended the rest.
        let lines = [(
            "X-Forwarded-For",
            "1.1.1.1, 2.2.2.2, 203.0.113.7, 10.0.0.2, 192.168.0.1",
        )];
        assert_eq!(run("10.0.0.1:5000", XFF, &lines), addr("203.0.113.7:0"));
        // Two header lines are one list.
        let split = [
            ("x-forwarded-for", "1.1.1.1, 203.0.113.7"),
            ("X-FORWARDED-FOR", "10.0.0.2"),
        ];
        assert_eq!(run("10.0.0.1:5000", XFF, &split), addr("203.0.113.7:0"));
        // Every hop trusted: the leftmost.
        let all = [("x-forwarded-for", "10.9.9.9, 10.0.0.2")];
        assert_eq!(run("10.0.0.1:5000", XFF, &all), addr("10.9.9.9:0"));
        // None at all: the proxy itself.
        assert_eq!(run("10.0.0.1:5000", XFF, &[]), addr("10.0.0.1:5000"));
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let lines = [("x-forwarded-for", "203.0.113.7"), ("x-real-ip", "1.2.3.4")];
        assert_eq!(
            run("198.51.100.1:4000", XFF, &lines),
            addr("198.51.100.1:4000")
        );
        let fwd = [("forwarded", "for=203.0.113.7")];
        assert_eq!(
            run("198.51.100.1:4000", ForwardedHeader::Forwarded, &fwd),
            addr("198.51.100.1:4000")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // A client's own `Forwarded` header, passed on by a proxy that writes X-Forwarded-For.
        let lines = [
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
        ];
        assert_eq!(run("10.0.0.1:1", XFF, &lines), addr("203.0.113.7:0"));
        assert_eq!(
            run(
                "10.0.0.1:1",
                ForwardedHeader::XRealIp,
                &[("x-real-ip", "203.0.113.8")]
            ),
            addr("203.0.113.8:0")
        );
    }

    #[test]
    fn forwarded_elements_quoted_values_and_ports_are_read() {
        let lines = [(
            "Forwarded",
            "for=1.1.1.1;proto=https, For=\"[2001:db8:cafe::17]:4711\";by=\"a,b\", for=10.0.0.3",
        )];
        assert_eq!(
            run("10.0.0.1:1", ForwardedHeader::Forwarded, &lines),
            addr("[2001:db8:cafe::17]:4711")
        );
        let port = [("forwarded", "for=\"203.0.113.7:_hidden\"")];
        assert_eq!(
            run("10.0.0.1:1", ForwardedHeader::Forwarded, &port),
            addr("203.0.113.7:0")
        );
        assert_eq!(
            run(
                "10.0.0.1:1",
                XFF,
                &[("x-forwarded-for", "[2001:db8::1]:80, 203.0.113.9:81")]
            ),
            addr("203.0.113.9:81")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_proxy_that_wrote_it() {
        for (header, value) in [
            (XFF, "203.0.113.7, garbage, 10.0.0.2"),
            (XFF, "203.0.113.7, , 10.0.0.2"),
            (
                ForwardedHeader::Forwarded,
                "for=203.0.113.7, for=unknown, for=10.0.0.2",
            ),
            (
                ForwardedHeader::Forwarded,
                "for=203.0.113.7, proto=http, for=10.0.0.2",
            ),
            (
                ForwardedHeader::Forwarded,
                "for=203.0.113.7, for=_hidden, for=10.0.0.2",
            ),
        ] {
            assert_eq!(
                run("10.0.0.1:1", header, &[(header.name(), value)]),
                addr("10.0.0.2:0"),
                "{value}"
            );
        }
        // Not UTF-8: nothing is read.
        let trusted: Networks = "10.0.0.0/8".parse().unwrap();
        let got = client(
            addr("10.0.0.1:1"),
            [("x-forwarded-for", &b"\xff203.0.113.7"[..])],
            XFF,
            &trusted,
        );
        assert_eq!(got, addr("10.0.0.1:1"));
    }

    #[test]
    fn header_names_parse_and_bad_ones_are_named() {
        assert_eq!("X-Real-IP".parse(), Ok(ForwardedHeader::XRealIp));
        assert_eq!("forwarded".parse(), Ok(ForwardedHeader::Forwarded));
        let e = "via".parse::<ForwardedHeader>().unwrap_err();
        assert!(
            e.contains("\"via\"") && e.contains("x-forwarded-for"),
            "{e}"
        );
    }
}
