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
use memchr::memchr;

/// hyper's own limit on a request target.
const MAX_URI: usize = u16::MAX as usize - 1;

/// Header slots kept on the stack while a head is parsed; a head of more lines takes them from
/// the heap.
const STACK_SLOTS: usize = 24;

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
        let mut first_line_end = None;
        while let Some(at) = buf.get(i..window).and_then(|rest| memchr(b'\n', rest)) {
            let nl = i + at;
            #[cfg(test)]
            {
                self.work += at + 1;
            }
            first_line_end.get_or_insert(nl);
            match (buf.get(nl + 1), buf.get(nl + 2)) {
                (Some(b'\n'), _) if nl + 2 <= window => {
                    end = Some(nl + 2);
                    break;
                }
                (Some(b'\r'), Some(b'\n')) if nl + 3 <= window => {
                    end = Some(nl + 3);
                    break;
                }
                _ => {}
            }
            i = nl + 1;
        }
        #[cfg(test)]
        if end.is_none() {
            self.work += window.saturating_sub(i);
        }
        // A head whose first line has ended is checked at once, even before the head is
        // complete, so a garbage request line is refused without waiting for more (a complete
        // head is parsed once, below).
        if let (None, Some(nl), false) = (end, first_line_end, line_checked) {
            line_checked = true;
            if let Err(refusal) = self.parse(buf.get(..=nl).unwrap_or(buf)) {
                return self.refuse(refusal);
            }
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
        // A head has at most as many fields as it has lines after the first: as many slots
        // as that (within the limit, so that more fields than the limit are still refused),
        // on the stack for a head of a few lines.
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        let slots = lines.min(self.limits.max_headers);
        let mut stack = [httparse::EMPTY_HEADER; STACK_SLOTS];
        let mut heap = Vec::new();
        let headers = match stack.get_mut(..slots) {
            Some(few) => few,
            None => {
                heap.resize(slots, httparse::EMPTY_HEADER);
                heap.as_mut_slice()
            }
        };
        let mut req = httparse::Request::new(headers);
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
        if !plain_path(path) {
            Uri::try_from(path).map_err(|e| Refusal::bad(format!("bad request target: {e}")))?;
        }
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

/// Whether `path` is an origin-form target of characters every URI parser takes (RFC 3986's
/// unreserved and sub-delimiters, `:`, `@`, `/`, `?` and `%`): then it needs no full parse (which
/// copies it) to know that hyper takes it. Anything else is parsed as hyper will.
fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
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
#[path = "framing_tests.rs"]
mod tests;
