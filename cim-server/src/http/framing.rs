//! [`Framer`]: finds where each request of an HTTP/1.1 connection begins and ends, and checks
//! every request head before hyper sees it, so that hyper never refuses a head itself (it
//! would answer `400`, `414` or `431` with an empty body). Sans-IO: bytes in, decisions out.
//!
//! The framer applies the same parser (httparse, default configuration) and the same framing
//! rules as hyper's HTTP/1 server: a head that passes here parses there, and the framer knows
//! where its body ends (`Content-Length`, or a chunked body decoded with hyper's grammar), so
//! the next head on a keep-alive connection is checked too. Work is linear in the bytes
//! received: the end of a head is found by scanning each byte once, and a head is parsed at most
//! twice (when its first line ends, to refuse a garbage request line at once, and when it is
//! complete).

use axum::http::{HeaderName, Method, StatusCode, Uri};

/// hyper's own limit on a request target.
const MAX_URI: usize = u16::MAX as usize - 1;

/// The limits a request head is held to.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest head (request line and header fields, with their line ends), in bytes.
    pub max_head: usize,
    /// Header fields per request.
    pub max_headers: usize,
}

/// A refused request: the status and the reason to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `400`, `414` or `431`.
    pub status: StatusCode,
    /// Why, for the client.
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    fn bad(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }
}

/// What to do with the bytes at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes (at least one) may go to hyper.
    Pass(usize),
    /// The first `n` bytes (at least one) are empty lines before a request line: drop them.
    Skip(usize),
    /// Nothing can be decided before more bytes arrive.
    More,
    /// The request at the front is refused: answer it and close; nothing more goes to hyper.
    Refuse(Refusal),
    /// The connection takes no more requests: the last one asked to close, or its chunked body
    /// is malformed (hyper, which saw the same bytes, refuses it). Nothing more goes to hyper.
    Stop,
}

/// Where the framer is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before or inside a request head.
    Head {
        /// Bytes of the head already scanned for its end.
        scanned: usize,
        /// Whether the request line has been checked.
        line_checked: bool,
    },
    /// Inside a body of known length: bytes left.
    Body { left: u64, keep_alive: bool },
    /// Inside a chunked body.
    Chunked {
        state: Chunk,
        size: u64,
        keep_alive: bool,
    },
    /// No more requests on this connection.
    Done,
}

const HEAD: State = State::Head {
    scanned: 0,
    line_checked: false,
};

/// The states of hyper's chunked decoder, byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// Frames the requests of one connection.
#[derive(Debug)]
pub struct Framer {
    limits: HeadLimits,
    state: State,
    /// Bytes looked at while finding and parsing heads (what the tests bound).
    #[cfg(test)]
    work: usize,
}

impl Framer {
    /// A framer at the start of a connection.
    pub fn new(limits: HeadLimits) -> Self {
        Self {
            limits,
            state: HEAD,
            #[cfg(test)]
            work: 0,
        }
    }

    /// Whether a body has begun and not ended: closing now would leave part of it unread.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. } | State::Chunked { .. })
    }

    /// Decides about the front of `buf`: the bytes received and neither passed nor skipped yet.
    /// After `Pass(n)` or `Skip(n)` the caller calls again with the bytes after the first `n`.
    pub fn step(&mut self, buf: &[u8]) -> Step {
        if buf.is_empty() {
            return match self.state {
                State::Done => Step::Stop,
                _ => Step::More,
            };
        }
        match self.state {
            State::Head {
                scanned,
                line_checked,
            } => self.head(buf, scanned, line_checked),
            State::Body { left, keep_alive } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - n as u64;
                self.state = if left > 0 {
                    State::Body { left, keep_alive }
                } else {
                    after_body(keep_alive)
                };
                Step::Pass(n)
            }
            State::Chunked {
                state,
                size,
                keep_alive,
            } => self.chunked(buf, state, size, keep_alive),
            State::Done => Step::Stop,
        }
    }

    fn head(&mut self, buf: &[u8], scanned: usize, line_checked: bool) -> Step {
        if scanned == 0 {
            // Empty lines before a request line are ignored (RFC 9112, section 2.2).
            let mut blank = 0;
            loop {
                match (buf.get(blank), buf.get(blank + 1)) {
                    (Some(b'\r'), Some(b'\n')) => blank += 2,
                    (Some(b'\n'), _) => blank += 1,
                    _ => break,
                }
            }
            if blank > 0 {
                return Step::Skip(blank);
            }
            if buf == b"\r" {
                // Perhaps the start of an empty line.
                return Step::More;
            }
        }
        let window = buf.len().min(self.limits.max_head);
        let mut line_checked = line_checked;
        // Resume a little before the last scan, so a line end split between reads is found.
        let mut i = scanned.saturating_sub(2);
        let mut end = None;
        while i < window {
            #[cfg(test)]
            {
                self.work += 1;
            }
            if buf.get(i) == Some(&b'\n') {
                if !line_checked {
                    line_checked = true;
                    if let Err(refusal) = self.parse(buf.get(..=i).unwrap_or(buf)) {
                        return self.refuse(refusal);
                    }
                }
                match (buf.get(i + 1), buf.get(i + 2)) {
                    (Some(b'\n'), _) if i + 2 <= window => {
                        end = Some(i + 2);
                        break;
                    }
                    (Some(b'\r'), Some(b'\n')) if i + 3 <= window => {
                        end = Some(i + 3);
                        break;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        let Some(end) = end else {
            if buf.len() >= self.limits.max_head {
                let refusal = if line_checked {
                    Refusal::new(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!(
                            "request head exceeds the limit of {} bytes (http.max_head)",
                            self.limits.max_head
                        ),
                    )
                } else {
                    Refusal::new(
                        StatusCode::URI_TOO_LONG,
                        format!(
                            "request line exceeds the limit of {} bytes (http.max_head)",
                            self.limits.max_head
                        ),
                    )
                };
                return self.refuse(refusal);
            }
            self.state = State::Head {
                scanned: window,
                line_checked,
            };
            return Step::More;
        };
        match self.parse(buf.get(..end).unwrap_or(buf)) {
            Ok(Some(head)) => {
                self.state = head.body;
                Step::Pass(head.len)
            }
            Ok(None) => self.refuse(Refusal::bad("malformed request head")),
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Step {
        self.state = State::Done;
        Step::Refuse(refusal)
    }

    /// Parses a head as hyper does. `Ok(None)`: incomplete.
    fn parse(&mut self, bytes: &[u8]) -> Result<Option<Head>, Refusal> {
        #[cfg(test)]
        {
            self.work += bytes.len();
        }
        let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!(
                        "more than {} header fields (http.max_headers)",
                        self.limits.max_headers
                    ),
                ));
            }
            Err(httparse::Error::Version) => {
                return Err(Refusal::bad(
                    "bad request line: not an HTTP/1.0 or HTTP/1.1 request",
                ));
            }
            Err(httparse::Error::Token) if req.method.is_none() => {
                return Err(Refusal::bad("bad request line: invalid method"));
            }
            Err(httparse::Error::Token) => {
                return Err(Refusal::bad("bad request line: invalid request target"));
            }
            Err(e) => return Err(Refusal::bad(format!("bad request head: {e}"))),
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(Refusal::bad("malformed request head"));
        };
        if path.len() > MAX_URI {
            return Err(Refusal::new(
                StatusCode::URI_TOO_LONG,
                format!("request target longer than {MAX_URI} bytes"),
            ));
        }
        Method::from_bytes(method.as_bytes())
            .map_err(|_| Refusal::bad("bad request line: invalid method"))?;
        Uri::try_from(path).map_err(|e| Refusal::bad(format!("bad request target: {e}")))?;
        let http11 = version == 1;
        let mut keep_alive = http11;
        let mut saw_close = false;
        let mut content_length: Option<u64> = None;
        let mut is_cl = false;
        let mut is_te = false;
        let mut chunked = false;
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Refusal::bad(format!("invalid header name {:?}", h.name)))?;
            if name == axum::http::header::TRANSFER_ENCODING {
                if !http11 {
                    return Err(Refusal::bad(
                        "Transfer-Encoding is not allowed in an HTTP/1.0 request",
                    ));
                }
                is_te = true;
                content_length = None;
                chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                });
            } else if name == axum::http::header::CONTENT_LENGTH {
                is_cl = true;
                if is_te {
                    continue;
                }
                let n =
                    digits(h.value).ok_or_else(|| Refusal::bad("invalid Content-Length header"))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(Refusal::bad("Content-Length headers that differ"));
                }
                if n >= u64::MAX - 1 {
                    return Err(Refusal::bad("Content-Length too large"));
                }
                content_length = Some(n);
            } else if name == axum::http::header::CONNECTION {
                if saw_close || has_token(h.value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(h.value, "keep-alive");
                }
            }
        }
        if is_te && !chunked {
            return Err(Refusal::bad("Transfer-Encoding must end in chunked"));
        }
        if is_te && is_cl {
            keep_alive = false;
        }
        let body = if chunked {
            State::Chunked {
                state: Chunk::Start,
                size: 0,
                keep_alive,
            }
        } else {
            match content_length {
                Some(left) if left > 0 => State::Body { left, keep_alive },
                _ => after_body(keep_alive),
            }
        };
        Ok(Some(Head { len, body }))
    }

    /// Walks a chunked body as hyper's decoder does; passes chunk data in bulk.
    fn chunked(&mut self, buf: &[u8], mut state: Chunk, mut size: u64, keep_alive: bool) -> Step {
        let mut i = 0;
        while i < buf.len() {
            if state == Chunk::Data {
                let n = usize::try_from(size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - i);
                size -= n as u64;
                i += n;
                if size == 0 {
                    state = Chunk::DataCr;
                }
                continue;
            }
            let Some(&b) = buf.get(i) else { break };
            i += 1;
            let next = match (state, b) {
                (Chunk::Start | Chunk::Size, b) if hex(b).is_some() => {
                    match size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(hex(b).unwrap_or(0))))
                    {
                        Some(s) => {
                            size = s;
                            Some(Chunk::Size)
                        }
                        None => None,
                    }
                }
                (Chunk::Size | Chunk::SizeLws, b'\t' | b' ') => Some(Chunk::SizeLws),
                (Chunk::Size | Chunk::SizeLws, b';') => Some(Chunk::Extension),
                (Chunk::Size | Chunk::SizeLws | Chunk::Extension, b'\r') => Some(Chunk::SizeLf),
                (Chunk::Extension, b'\n') => None,
                (Chunk::Extension, _) => Some(Chunk::Extension),
                (Chunk::SizeLf, b'\n') if size == 0 => Some(Chunk::EndCr),
                (Chunk::SizeLf, b'\n') => Some(Chunk::Data),
                (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                (Chunk::DataLf, b'\n') => Some(Chunk::Start),
                (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
                (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
                (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
                (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
                (Chunk::EndLf, b'\n') => {
                    self.state = after_body(keep_alive);
                    return Step::Pass(i);
                }
                _ => None,
            };
            match next {
                Some(s) => state = s,
                None => {
                    // Malformed: hyper gets the offending byte and refuses the body itself.
                    self.state = State::Done;
                    return Step::Pass(i);
                }
            }
        }
        self.state = State::Chunked {
            state,
            size,
            keep_alive,
        };
        Step::Pass(i)
    }
}

/// A parsed head: its length and what follows it.
struct Head {
    len: usize,
    body: State,
}

fn after_body(keep_alive: bool) -> State {
    if keep_alive { HEAD } else { State::Done }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A Content-Length value: ASCII digits only, as hyper reads it.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'9' => acc.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Whether a comma-separated header value carries `token` (any case).
fn has_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head: 1024,
        max_headers: 8,
    };

    /// Feeds `input` to a framer in pieces of `piece` bytes, as a socket would deliver them;
    /// returns the bytes passed and how it ended.
    fn run(input: &[u8], piece: usize) -> (Vec<u8>, Step) {
        let mut f = Framer::new(LIMITS);
        let mut passed = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            match f.step(&buf) {
                Step::Pass(n) => {
                    assert!(n > 0);
                    passed.extend(buf.drain(..n));
                }
                Step::Skip(n) => {
                    assert!(n > 0);
                    buf.drain(..n);
                }
                Step::More if fed < input.len() => {
                    let to = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..to]);
                    fed = to;
                }
                end => return (passed, end),
            }
        }
    }

    fn refused(input: &[u8]) -> Refusal {
        match run(input, input.len()).1 {
            Step::Refuse(r) => r,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn pipelined_requests_pass_whole_in_any_split() {
        let input: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: y\r\n\r\n\
            GET /d HTTP/1.1\nHost: x\n\n";
        for piece in 1..=input.len() {
            let (passed, end) = run(input, piece);
            assert_eq!(passed, input, "piece {piece}");
            assert_eq!(end, Step::More, "piece {piece}");
        }
    }

    #[test]
    fn garbage_request_line_is_refused_before_the_head_ends() {
        let (passed, end) = run(b"\x16\x03\x01\x02\x00\n", 64);
        assert!(passed.is_empty());
        assert!(
            matches!(&end, Step::Refuse(r) if r.status == StatusCode::BAD_REQUEST),
            "{end:?}"
        );
        assert_eq!(
            refused(b"GET / HTTP/2.0\r\n\r\n").reason,
            "bad request line: not an HTTP/1.0 or HTTP/1.1 request"
        );
        assert_eq!(refused(b"G(T / HTTP/1.1\r\n\r\n").status, 400);
    }

    #[test]
    fn a_bad_head_after_a_good_one_is_refused_after_it_passed() {
        let good: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        let input = [good, b"NOT HTTP AT ALL\r\n\r\n"].concat();
        let (passed, end) = run(&input, 7);
        assert_eq!(passed, good);
        assert!(matches!(end, Step::Refuse(r) if r.status == StatusCode::BAD_REQUEST));
    }

    #[test]
    fn head_limit_at_the_edge() {
        // A head of exactly max_head bytes passes; one byte more is 431.
        let fill = |n: usize| {
            let start = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
            let pad = n - start.len() - 4;
            [start, vec![b'a'; pad], b"\r\n\r\n".to_vec()].concat()
        };
        let exact = fill(1024);
        assert_eq!(exact.len(), 1024);
        assert_eq!(run(&exact, 100), (exact.clone(), Step::More));
        let over = fill(1025);
        let (passed, end) = run(&over, 100);
        assert!(passed.is_empty());
        assert!(
            matches!(&end, Step::Refuse(r) if r.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            "{end:?}"
        );
        // A request line that does not end within the limit is 414.
        let long = [
            b"GET /".to_vec(),
            vec![b'a'; 1100],
            b" HTTP/1.1\r\n\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(refused(&long).status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn header_count_at_the_edge() {
        let with = |n: usize| {
            let mut h = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            h
        };
        let eight = with(8);
        assert_eq!(run(&eight, 5), (eight.clone(), Step::More));
        assert_eq!(
            refused(&with(9)).status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn framing_headers_are_held_to_hyper_rules() {
        for (head, why) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                "Content-Length headers that differ",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length header",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding must end in chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ),
        ] {
            assert_eq!(refused(head).reason, why);
        }
    }

    #[test]
    fn a_request_that_closes_ends_the_framing() {
        for input in [
            &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET",
        ] {
            let (passed, end) = run(input, 3);
            assert_eq!(end, Step::Stop);
            assert!(input.starts_with(&passed) && passed.len() < input.len());
        }
        // HTTP/1.0 that asks to be kept alive is.
        let input = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(run(input, 4), (input.to_vec(), Step::More));
    }

    #[test]
    fn a_malformed_chunk_goes_to_hyper_up_to_the_bad_byte_then_stops() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = [head, b"3\r\nabcX\r\n0\r\n\r\n"].concat();
        let (passed, end) = run(&input, 4);
        assert_eq!(end, Step::Stop);
        assert_eq!(passed, [head, b"3\r\nabcX"].concat());
    }

    #[test]
    fn empty_lines_before_a_request_are_dropped() {
        let mut f = Framer::new(LIMITS);
        assert_eq!(f.step(b"\r\n\r\n\nGET"), Step::Skip(5));
        assert_eq!(f.step(b"\r"), Step::More);
        assert_eq!(f.step(b"\r\nGET"), Step::Skip(2));
        assert_eq!(f.step(b"GET"), Step::More);
        assert_eq!(f.step(b"GET / HTTP/1.1\r\n\r\n"), Step::Pass(18));
    }

    #[test]
    fn in_body_while_a_body_is_unfinished() {
        let mut f = Framer::new(LIMITS);
        assert_eq!(
            f.step(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
            Step::Pass(38)
        );
        assert!(f.in_body());
        assert_eq!(f.step(b"ab"), Step::Pass(2));
        assert!(f.in_body());
        assert_eq!(f.step(b"cGET"), Step::Pass(1));
        assert!(!f.in_body());
    }

    #[test]
    fn work_is_linear_in_a_trickled_head() {
        // A head of the largest size, one byte per read: each read rescans at most the two
        // bytes before it, and the head is parsed twice — not once per read, which would look
        // at about 500 times as many bytes.
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', LIMITS.max_head - input.len() - 5));
        input.extend_from_slice(b":\r\n\r\n");
        let mut f = Framer::new(LIMITS);
        let mut end = Step::More;
        for n in 1..=input.len() {
            end = f.step(&input[..n]);
            if end != Step::More {
                assert_eq!(n, input.len(), "{end:?}");
            }
        }
        assert_eq!(input.len(), LIMITS.max_head);
        assert_eq!(end, Step::Pass(input.len()));
        assert!(
            f.work <= 6 * input.len(),
            "{} for {} bytes",
            f.work,
            input.len()
        );
    }
}
