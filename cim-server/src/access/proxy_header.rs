//! The PROXY protocol header (HAProxy's, versions 1 and 2) a load balancer sends before a
//! connection's own bytes, naming the client it speaks for. Parsing is ppp's; what is read, and
//! how much, is decided here.
//!
//! The header is read with the socket's peek, so that not one byte past it is taken from the
//! stream: the connection goes on as a plain `TcpStream` (a TLS handshake, a WebSocket upgrade or
//! the protocol's first frame starts right after the header), and its task is no larger than
//! without the header. [`HeaderReader`] is the sans-IO part: given what a peek saw, it says how
//! many bytes to take, and when the header is whole, which client it names.
//!
//! Bounds: a version 1 header is at most 107 bytes (its specification's limit); a version 2
//! header says its length in its first 16 bytes, and one longer than the listener's limit is
//! refused before its body is read. The time is bounded by the caller (the bind timeout).

use std::net::SocketAddr;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The first 12 bytes of a version 2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The first 6 bytes of a version 1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest version 1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// A version 2 header's fixed part: the signature, version and command, family and protocol,
/// and the length of the rest.
const V2_FIXED: usize = 16;
/// The smallest limit a listener may set: the longest version 2 header without extensions
/// (two UNIX socket paths).
pub const MIN_LIMIT: usize = V2_FIXED + 216;
/// The largest limit: the longest version 2 header there can be.
pub const MAX_LIMIT: usize = V2_FIXED + u16::MAX as usize;
/// What is peeked at first: room for every header without extensions.
const FIRST_WINDOW: usize = MIN_LIMIT;

/// Why a connection's PROXY header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The connection did not start with a PROXY header.
    #[error("no PROXY header: the connection starts with {0:?}")]
    Missing(String),
    /// It started with one that cannot be parsed.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// A version 2 header longer than the limit.
    #[error("PROXY header of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The length the header gives itself.
        len: usize,
        /// The listener's limit.
        max: usize,
    },
    /// The connection ended before its header did.
    #[error("connection closed before its PROXY header ended")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(String),
}

/// What the bytes seen so far make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The start of a header, not yet whole: every byte so far belongs to it, and it is at least
    /// `want` bytes long.
    More {
        /// The least length the header can have now.
        want: usize,
    },
    /// A whole header: its first `len` bytes.
    Done {
        /// The header's length.
        len: usize,
        /// The client it names; `None` when it names none (the proxy's own connection, such as
        /// a health check: version 1 `UNKNOWN`, version 2 `LOCAL`, or an address family other
        /// than IPv4 and IPv6).
        source: Option<SocketAddr>,
    },
    /// Not a header, or a broken one.
    Bad(HeaderError),
}

/// The first bytes, escaped, for a log line.
fn shown(bytes: &[u8]) -> String {
    bytes.iter().take(16).copied().map(char::from).collect()
}

/// What `bytes`, the first bytes of a connection, make of a PROXY header no longer than `max`.
pub fn scan(bytes: &[u8], max: usize) -> Scan {
    let max = max.clamp(MIN_LIMIT, MAX_LIMIT);
    let is_prefix =
        |sig: &[u8]| sig.starts_with(bytes.get(..sig.len().min(bytes.len())).unwrap_or_default());
    if is_prefix(V2_SIGNATURE) {
        return scan_v2(bytes, max);
    }
    if is_prefix(V1_PREFIX) {
        return scan_v1(bytes);
    }
    Scan::Bad(HeaderError::Missing(shown(bytes)))
}

/// A header starting with the version 2 signature (or the start of it).
fn scan_v2(bytes: &[u8], max: usize) -> Scan {
    let Some(&[hi, lo]) = bytes.get(V2_FIXED - 2..V2_FIXED) else {
        return Scan::More { want: V2_FIXED };
    };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if len > max {
        return Scan::Bad(HeaderError::Oversized { len, max });
    }
    let Some(header) = bytes.get(..len) else {
        return Scan::More { want: len };
    };
    match v2::Header::try_from(header) {
        Ok(h) => Scan::Done {
            len,
            source: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            },
        },
        Err(e) => Scan::Bad(HeaderError::Malformed(e.to_string())),
    }
}

/// A header starting with `PROXY ` (or the start of it): a line of at most 107 bytes.
fn scan_v1(bytes: &[u8]) -> Scan {
    let within = bytes.get(..V1_MAX.min(bytes.len())).unwrap_or_default();
    let Some(end) = within.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Scan::Bad(HeaderError::Malformed(format!(
                "a version 1 header ends within {V1_MAX} bytes"
            )))
        } else {
            Scan::More { want: V1_MAX }
        };
    };
    let len = end + 1;
    let line = within.get(..len).unwrap_or_default();
    if !line.ends_with(b"\r\n") {
        return Scan::Bad(HeaderError::Malformed(
            "a version 1 header ends with CRLF".into(),
        ));
    }
    match v1::Header::try_from(line) {
        Ok(h) => Scan::Done {
            len,
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        Err(e) => Scan::Bad(HeaderError::Malformed(e.to_string())),
    }
}

/// What a connection from an untrusted address starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A PROXY header's signature: refused, as such a peer may not say who it speaks for.
    Header,
    /// Something else: the protocol.
    Other,
    /// Too few bytes to tell (they are the start of a signature).
    Undecided,
}

/// Whether `bytes`, the first of a connection, start with a PROXY header's signature.
pub fn probe(bytes: &[u8]) -> Probe {
    let mut undecided = false;
    for sig in [&V1_PREFIX[..], &V2_SIGNATURE[..]] {
        if bytes.starts_with(sig) {
            return Probe::Header;
        }
        undecided |= sig.starts_with(bytes);
    }
    if undecided {
        Probe::Undecided
    } else {
        Probe::Other
    }
}

/// The next move of a [`HeaderReader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Take (read) this many of the bytes peeked, all the header's, and peek again.
    Take(usize),
    /// Take this many and stop: the header is whole.
    Done {
        /// Bytes to read yet.
        take: usize,
        /// The client the header names (see [`Scan::Done`]).
        source: Option<SocketAddr>,
    },
    /// Stop: no header, or a broken one.
    Bad(HeaderError),
}

/// Reads a header with peeks, taking from the stream only the header's bytes (sans-IO: the
/// caller peeks into [`window`](Self::window), reports with [`peeked`](Self::peeked), reads what
/// the [`Step`] says into the window, and reports that with [`took`](Self::took)).
#[derive(Debug)]
pub struct HeaderReader {
    /// The header's bytes taken so far, then room for the next peek.
    buf: Vec<u8>,
    /// Bytes taken.
    have: usize,
    /// The limit of the header's length.
    max: usize,
}

impl HeaderReader {
    /// A reader of a header of at most `max` bytes (clamped to [`MIN_LIMIT`]..=[`MAX_LIMIT`]).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(MIN_LIMIT, MAX_LIMIT);
        Self {
            buf: vec![0; FIRST_WINDOW.min(max)],
            have: 0,
            max,
        }
    }

    /// Where the next peek (or read) goes: after the bytes taken.
    pub fn window(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.have..).unwrap_or_default()
    }

    /// A peek put `n` bytes in the window (0: the stream ended).
    pub fn peeked(&mut self, n: usize) -> Step {
        if n == 0 {
            return Step::Bad(HeaderError::Closed);
        }
        let seen = (self.have + n).min(self.buf.len());
        match scan(self.buf.get(..seen).unwrap_or_default(), self.max) {
            Scan::More { want } => {
                // Room for the rest of what the header needs at least (it fits the limit: a
                // longer one is refused by the scan).
                if self.buf.len() < want {
                    self.buf.resize(want.min(self.max), 0);
                }
                Step::Take(seen - self.have)
            }
            Scan::Done { len, source } => Step::Done {
                take: len.saturating_sub(self.have),
                source,
            },
            Scan::Bad(e) => Step::Bad(e),
        }
    }

    /// `n` bytes were read into the window, as a [`Step::Take`] said.
    pub fn took(&mut self, n: usize) {
        self.have = (self.have + n).min(self.buf.len());
    }

    /// The bytes taken so far.
    pub fn taken(&self) -> &[u8] {
        self.buf.get(..self.have).unwrap_or_default()
    }
}

fn io_error(e: std::io::Error) -> HeaderError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HeaderError::Closed
    } else {
        HeaderError::Io(e.to_string())
    }
}

/// Reads the PROXY header `stream` starts with, of at most `max` bytes, and no byte past it.
/// Returns the client it names (`None`: the proxy's own connection). Unbounded in time: the
/// caller bounds it.
pub async fn read(stream: &mut TcpStream, max: usize) -> Result<Option<SocketAddr>, HeaderError> {
    let mut reader = HeaderReader::new(max);
    loop {
        let n = stream.peek(reader.window()).await.map_err(io_error)?;
        let (take, done) = match reader.peeked(n) {
            Step::Take(k) => (k, None),
            Step::Done { take, source } => (take, Some(source)),
            Step::Bad(e) => return Err(e),
        };
        let into = reader.window().get_mut(..take).unwrap_or_default();
        stream.read_exact(into).await.map_err(io_error)?;
        reader.took(take);
        if let Some(source) = done {
            return Ok(source);
        }
    }
}

/// How long to wait before looking again at a connection whose first bytes are the start of a
/// signature and no more (a peek would see the same bytes at once).
const PROBE_AGAIN: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether `stream`, from an untrusted address, starts with a PROXY header, taking nothing
/// from it. Unbounded in time: the caller bounds it.
pub async fn starts_with_header(stream: &TcpStream) -> Result<bool, HeaderError> {
    let mut first = [0u8; V2_SIGNATURE.len()];
    loop {
        let n = stream.peek(&mut first).await.map_err(io_error)?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        match probe(first.get(..n).unwrap_or_default()) {
            Probe::Header => return Ok(true),
            Probe::Other => return Ok(false),
            Probe::Undecided => tokio::time::sleep(PROBE_AGAIN).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_ipv4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &body)
    }

    /// Reads `input` through a reader as a socket would deliver it, `chunk` bytes arriving at a
    /// time: the result, and the bytes taken from the stream.
    fn read_chunked(input: &[u8], max: usize, chunk: usize) -> (Step, usize) {
        let mut reader = HeaderReader::new(max);
        let mut pos = 0;
        let mut arrived = chunk.min(input.len());
        loop {
            let window = reader.window();
            let n = window.len().min(arrived - pos);
            window[..n].copy_from_slice(&input[pos..pos + n]);
            let step = reader.peeked(n);
            let take = match &step {
                Step::Take(k) => *k,
                Step::Done { take, .. } => *take,
                Step::Bad(_) => return (step, pos),
            };
            assert!(pos + take <= arrived, "takes only what arrived");
            reader.window()[..take].copy_from_slice(&input[pos..pos + take]);
            reader.took(take);
            pos += take;
            assert_eq!(reader.taken(), &input[..pos]);
            if matches!(step, Step::Done { .. }) {
                return (step, pos);
            }
            arrived = (arrived + chunk).min(input.len());
        }
    }

    #[test]
    fn a_version_1_header_names_its_client_and_nothing_past_it_is_taken() {
        let mut input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 23456\r\n".to_vec();
        let len = input.len();
        input.extend_from_slice(b"\x03\x00\x10rest of the protocol");
        for chunk in [1, 2, 7, 1000] {
            let (step, taken) = read_chunked(&input, 1024, chunk);
            assert!(
                matches!(step, Step::Done { source: Some(s), .. } if s == "203.0.113.7:51234".parse().unwrap()),
                "chunk {chunk}: {step:?}"
            );
            assert_eq!(taken, len, "chunk {chunk}");
        }
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 4711 443\r\n";
        assert_eq!(
            scan(v6, 1024),
            Scan::Done {
                len: v6.len(),
                source: Some("[2001:db8::7]:4711".parse().unwrap())
            }
        );
        assert_eq!(
            scan(b"PROXY UNKNOWN\r\nGET", 1024),
            Scan::Done {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn a_version_2_header_names_its_client_and_local_names_none() {
        let mut input = v2_ipv4([198, 51, 100, 9], 40000);
        let len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for chunk in [1, 5, 16, 17, 1000] {
            let (step, taken) = read_chunked(&input, 1024, chunk);
            assert!(
                matches!(step, Step::Done { source: Some(s), .. } if s == "198.51.100.9:40000".parse().unwrap()),
                "chunk {chunk}: {step:?}"
            );
            assert_eq!(taken, len);
        }
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            scan(&local, 1024),
            Scan::Done {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn the_limit_of_a_version_2_header_holds_at_its_edge() {
        // Extensions pad the header to exactly the limit, then one byte past it.
        for (extra, ok) in [(1024 - 28, true), (1024 - 28 + 1, false)] {
            let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1, 0, 80, 1, 187];
            // One TLV of type 0xE0 (custom) filling `extra` bytes: 3 bytes of type and length.
            body.push(0xE0);
            body.extend_from_slice(&u16::try_from(extra - 3).unwrap().to_be_bytes());
            body.extend(std::iter::repeat_n(0u8, extra - 3));
            let header = v2(1, 0x11, &body);
            assert_eq!(header.len(), 1024 + usize::from(!ok));
            let (step, _) = read_chunked(&header, 1024, 100);
            if ok {
                assert!(matches!(step, Step::Done { .. }), "{step:?}");
            } else {
                assert_eq!(
                    step,
                    Step::Bad(HeaderError::Oversized {
                        len: 1025,
                        max: 1024
                    })
                );
            }
        }
    }

    #[test]
    fn a_version_1_header_longer_than_107_bytes_is_refused() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let (step, taken) = read_chunked(&long, 1024, 10);
        assert!(
            matches!(step, Step::Bad(HeaderError::Malformed(_))),
            "{step:?}"
        );
        assert!(taken < V1_MAX);
    }

    #[test]
    fn missing_and_malformed_headers_are_refused_with_a_reason() {
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\n", 1024),
            Scan::Bad(HeaderError::Missing("GET / HTTP/1.1\r\n".into()))
        );
        assert!(matches!(
            scan(b"\x03\x00\x05hello", 1024),
            Scan::Bad(HeaderError::Missing(_))
        ));
        for bad in [
            &b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\n",
            b"PROXY UDP4 1.2.3.4 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 01 2\r\n",
        ] {
            assert!(
                matches!(scan(bad, 1024), Scan::Bad(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Version 3, and an address shorter than its family.
        let mut v3 = v2_ipv4([1, 2, 3, 4], 1);
        v3[12] = 0x31;
        assert!(matches!(
            scan(&v3, 1024),
            Scan::Bad(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            scan(&v2(1, 0x11, &[1, 2, 3]), 1024),
            Scan::Bad(HeaderError::Malformed(_))
        ));
        assert_eq!(
            read_chunked(b"PROXY TCP4", 1024, 4).0,
            Step::Bad(HeaderError::Closed)
        );
    }

    #[test]
    fn the_probe_tells_a_header_from_a_protocol() {
        assert_eq!(probe(b"PROXY TCP4 1.2.3.4"), Probe::Header);
        assert_eq!(probe(&V2_SIGNATURE[..]), Probe::Header);
        assert_eq!(probe(b"PRO"), Probe::Undecided);
        assert_eq!(probe(b"\r\n\r"), Probe::Undecided);
        assert_eq!(probe(b"POST /"), Probe::Other);
        assert_eq!(probe(b"GET / HTTP/1.1"), Probe::Other);
        assert_eq!(probe(b"\x16\x03\x01"), Probe::Other);
        assert_eq!(probe(b"\x03\x00\x10"), Probe::Other);
    }
}
