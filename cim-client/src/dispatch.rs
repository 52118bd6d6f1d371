//! Asking dispatch (`GET /api/v1/dispatch`) which node to connect to: a [`DispatchUrl`] and
//! [`ask`], one HTTP/1.1 `GET` on a connection of its own, over TLS for `https://`.
//!
//! Part of the SDK's default build on purpose: a client that follows dispatch needs no HTTP
//! library — a request line, two headers, and a parse of the answer's head (`httparse`) and of
//! its JSON body (which the JSON codec already needs) are all there is to it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cim_client::ClientError> {
//! let url: cim_client::DispatchUrl = "http://127.0.0.1:8080".parse()?;
//! let node = cim_client::dispatch::ask(&url, None, 64 * 1024).await?;
//! println!("connect to node {} at {}", node.node, node.tcp);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cim_core::NodeAddrs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ClientError, Result};
use crate::transport::Socket;

/// The path asked when a dispatch URL names none.
pub const DEFAULT_PATH: &str = "/api/v1/dispatch";

/// Where to ask dispatch: `http://host:port` (the path defaults to `/api/v1/dispatch`), or a
/// full URL such as `https://push.example.com/api/v1/dispatch` (TLS: the certificate is checked
/// as for `tls://` endpoints). The port defaults to 80, or 443 for `https`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchUrl {
    tls: bool,
    /// `host:port`.
    authority: String,
    /// The request target: a path, perhaps with a query.
    path: String,
}

impl DispatchUrl {
    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host (without the brackets of an IPv6 address).
    pub fn host(&self) -> &str {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The path asked.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether it is asked over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Display for DispatchUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

impl FromStr for DispatchUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ClientError::BadEndpoint {
            endpoint: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (tls, rest) = match s.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(bad("a dispatch URL starts with http:// or https://")),
        };
        if s.bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
        {
            return Err(bad(
                "spaces, control characters and fragments are not allowed",
            ));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("expected http://host[:port][/path]"));
        }
        let has_port = match authority.rsplit_once(':') {
            // An IPv6 address without a port ends in `]`.
            Some((_, port)) if !port.ends_with(']') => {
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
                true
            }
            _ => false,
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let path = match path {
            "" | "/" => DEFAULT_PATH.to_owned(),
            p if p.starts_with('?') => format!("{DEFAULT_PATH}{p}"),
            p => p.to_owned(),
        };
        Ok(DispatchUrl {
            tls,
            authority,
            path,
        })
    }
}

/// Asks dispatch at `url` which node to connect to: one `GET` on a new connection (over TLS for
/// `https://`, trusting `ca_file` or the platform's roots), an answer of at most `max_answer`
/// bytes. A `200` answer's JSON is the node and its addresses; any other answer is an error
/// carrying its status and the server's reason (`503` when no node qualifies, say). The caller
/// bounds the time it may take.
pub async fn ask(
    url: &DispatchUrl,
    ca_file: Option<&Path>,
    max_answer: usize,
) -> Result<NodeAddrs> {
    ask_avoiding(url, None, ca_file, max_answer).await
}

/// [`ask`], telling dispatch which node to pass over if it can (`avoid=`): the one the client
/// just lost, or could not reach — a node killed is live in the cluster's registry until its
/// deadline.
pub async fn ask_avoiding(
    url: &DispatchUrl,
    avoid: Option<&str>,
    ca_file: Option<&Path>,
    max_answer: usize,
) -> Result<NodeAddrs> {
    let failed = |reason: String| ClientError::Dispatch {
        url: url.to_string(),
        reason,
    };
    let stream = TcpStream::connect(url.authority())
        .await
        .map_err(|e| failed(format!("cannot connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut stream = if url.is_tls() {
        let tls = crate::tls::connect(stream, url.host(), ca_file)
            .await
            .map_err(failed)?;
        Socket::Tls(Box::new(tls))
    } else {
        Socket::Plain(stream)
    };
    let target = match avoid {
        Some(node) => {
            let sep = if url.path().contains('?') { '&' } else { '?' };
            format!("{}{sep}avoid={}", url.path(), encode(node))
        }
        None => url.path().to_owned(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: cim-client/{}\r\n\
         Connection: close\r\n\r\n",
        target,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(format!("writing the request: {e}")))?;
    let mut raw = Vec::new();
    loop {
        raw.reserve(4096);
        let n = stream
            .read_buf(&mut raw)
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?;
        if raw.len() > max_answer {
            return Err(failed(format!(
                "the answer is larger than {max_answer} bytes (max_frame)"
            )));
        }
        let answer = if n == 0 {
            complete_at_eof(&raw).map_err(&failed)?
        } else {
            complete(&raw).map_err(&failed)?
        };
        match answer {
            Some(answer) => return answer.map_err(failed),
            None if n == 0 => {
                return Err(failed(
                    "the connection closed before the answer was complete".into(),
                ));
            }
            None => {}
        }
    }
}

/// `s` percent-encoded for a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How an answer's body ends.
enum Framing {
    Length(usize),
    Chunked,
    /// At the end of the stream.
    Close,
}

/// A parsed head: status, reason phrase, framing, where the body starts.
struct Head {
    status: u16,
    reason: String,
    framing: Framing,
    body_at: usize,
}

fn head(raw: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let body_at = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("").to_owned();
    let mut framing = Framing::Close;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
        {
            framing = Framing::Chunked;
            break;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("a Content-Length that is not a number")?;
            framing = Framing::Length(n);
        }
    }
    Ok(Some(Head {
        status,
        reason,
        framing,
        body_at,
    }))
}

/// The answer, once the bytes read hold all of it (before the end of the stream).
fn complete(raw: &[u8]) -> Result<Option<Result<NodeAddrs, String>>, String> {
    let Some(h) = head(raw)? else {
        return Ok(None);
    };
    let body = raw.get(h.body_at..).unwrap_or_default();
    let body = match h.framing {
        Framing::Length(n) if body.len() >= n => body.get(..n).unwrap_or_default().to_vec(),
        Framing::Chunked => match dechunk(body)? {
            Some(b) => b,
            None => return Ok(None),
        },
        Framing::Length(_) | Framing::Close => return Ok(None),
    };
    Ok(Some(answer(&h, &body)))
}

/// The answer at the end of the stream (a body framed by the close).
fn complete_at_eof(raw: &[u8]) -> Result<Option<Result<NodeAddrs, String>>, String> {
    let Some(h) = head(raw)? else {
        return Ok(None);
    };
    match h.framing {
        Framing::Close => Ok(Some(answer(&h, raw.get(h.body_at..).unwrap_or_default()))),
        Framing::Length(_) | Framing::Chunked => complete(raw),
    }
}

fn answer(h: &Head, body: &[u8]) -> Result<NodeAddrs, String> {
    if h.status == 200 {
        return serde_json::from_slice(body)
            .map_err(|e| format!("the answer is not a node's addresses: {e}"));
    }
    // The API's errors are `{"error": reason, "status": code}`.
    let why = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| h.reason.clone());
    Err(format!("answered {} {why}", h.status))
}

/// The body of a chunked answer, once its last chunk is in (`None` before).
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(rest.get(..eol).unwrap_or_default())
            .map_err(|_| "a chunk size that is not text")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("a bad chunk size {size:?}"))?;
        rest = rest.get(eol + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(Some(body));
        }
        // The answer is bounded, so a chunk larger than what was read is simply not in yet;
        // `checked_add` keeps an absurd size from wrapping.
        let end = size.checked_add(2).ok_or("a chunk size too large")?;
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size..end)) else {
            return Ok(None);
        };
        if after != b"\r\n" {
            return Err("a chunk not followed by CRLF".into());
        }
        body.extend_from_slice(chunk);
        rest = rest.get(end..).unwrap_or_default();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls_parse_with_defaults() {
        let u: DispatchUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/api/v1/dispatch");
        assert_eq!(
            (u.authority(), u.host(), u.is_tls()),
            ("127.0.0.1:8080", "127.0.0.1", false)
        );
        let u: DispatchUrl = "https://push.example.com/cim/dispatch?zone=eu"
            .parse()
            .unwrap();
        assert_eq!(
            u.to_string(),
            "https://push.example.com:443/cim/dispatch?zone=eu"
        );
        assert_eq!(u.host(), "push.example.com");
        let u: DispatchUrl = "http://[::1]".parse().unwrap();
        assert_eq!((u.authority(), u.host()), ("[::1]:80", "::1"));
        let u: DispatchUrl = "http://h:1/".parse().unwrap();
        assert_eq!(u.path(), DEFAULT_PATH);
        for bad in [
            "127.0.0.1:8080",
            "ftp://h:1",
            "http://",
            "http://h:99999",
            "http://u@h:1",
            "http://h:1/a b",
            "http://h:1/#x",
        ] {
            let e = bad.parse::<DispatchUrl>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    /// Serves one connection: reads the request, writes `answer`, closes; returns the request.
    async fn serve_once(answer: Vec<u8>) -> (DispatchUrl, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, task)
    }

    #[tokio::test]
    async fn answers_framed_every_way_are_read() {
        let json = r#"{"node":"b","tcp":"127.0.0.1:2","websocket":"","http":"127.0.0.1:3"}"#;
        let framed = [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            ),
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                &json[..5],
                json.len() - 5,
                &json[5..]
            ),
            format!("HTTP/1.0 200 OK\r\n\r\n{json}"),
        ];
        for answer in framed {
            let (url, server) = serve_once(answer.into_bytes()).await;
            let node = ask(&url, None, 4096).await.unwrap();
            assert_eq!(
                (node.node.as_str(), node.tcp.as_str()),
                ("b", "127.0.0.1:2")
            );
            let req = server.await.unwrap();
            assert!(
                req.starts_with("GET /api/v1/dispatch HTTP/1.1\r\n"),
                "{req}"
            );
            assert!(req.contains("Connection: close\r\n"), "{req}");
        }
    }

    #[tokio::test]
    async fn the_node_to_avoid_goes_in_the_query() {
        let json = r#"{"node":"a","tcp":"127.0.0.1:2"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        let (url, server) = serve_once(answer.clone().into_bytes()).await;
        ask_avoiding(&url, Some("b.1"), None, 4096).await.unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("GET /api/v1/dispatch?avoid=b.1 HTTP/1.1\r\n"),
            "{req}"
        );
        // A query of the URL's own is kept; odd bytes are encoded.
        let (base, server) = serve_once(answer.into_bytes()).await;
        let url: DispatchUrl = format!("http://{}/d?zone=eu", base.authority())
            .parse()
            .unwrap();
        ask_avoiding(&url, Some("a b&c"), None, 4096).await.unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("GET /d?zone=eu&avoid=a%20b%26c HTTP/1.1\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn errors_say_why() {
        let body =
            r#"{"error":"cluster unavailable: no live node that is not draining","status":503}"#;
        let (url, _s) = serve_once(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
        .await;
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("503") && e.contains("no live node"), "{e}");
        assert!(e.contains(&url.to_string()), "{e}");

        let (url, _s) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()).await;
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("not a node's addresses"), "{e}");

        let (url, _s) = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("not an HTTP answer"), "{e}");

        let (url, _s) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}".to_vec()).await;
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("closed before the answer was complete"), "{e}");

        let (url, _s) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx".to_vec(),
        )
        .await;
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("chunk size too large"), "{e}");

        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: DispatchUrl = format!("http://{}", free.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(free);
        let e = ask(&url, None, 4096).await.unwrap_err().to_string();
        assert!(e.contains("cannot connect"), "{e}");
    }

    /// The answer is held to `max_answer` bytes: one of exactly that size is read, one byte more
    /// is refused.
    #[tokio::test]
    async fn answers_larger_than_the_limit_are_refused() {
        let json = format!(r#"{{"node":"{}"}}"#, "n".repeat(200));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        let (url, _s) = serve_once(answer.clone().into_bytes()).await;
        assert_eq!(ask(&url, None, answer.len()).await.unwrap().node.len(), 200);
        let (url, _s) = serve_once(answer.clone().into_bytes()).await;
        let e = ask(&url, None, answer.len() - 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("larger than {} bytes", answer.len() - 1)),
            "{e}"
        );
    }
}
