//! The real `cim-server` binary as a child process, and a minimal HTTP client.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `cim-server` binary of this build, built on first use.
pub fn server_binary() -> PathBuf {
    built_binary("cim-server", "cim-server")
}

/// Binary `bin` of package `package` in this build, built on first use.
///
/// The first call builds every binary of the workspace, with the examples, as `cargo test
/// --workspace` resolves their features: after that command it only compiles and links the
/// binaries that command builds as test harnesses alone (`cim`, `cim-bench`), on libraries
/// already built. (A build of the one package would resolve features for it alone, and build
/// the server a second time in another configuration.)
pub fn built_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins", "--examples"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the workspace's binaries failed");
    });
    // This test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} (of {package}) not found", path.display());
    path
}

/// A running `cim-server`; killed when dropped.
pub struct ServerProcess {
    /// The store directory, when the test did not choose one.
    pub data: Option<tempfile::TempDir>,
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub stdout: std::sync::mpsc::Receiver<String>,
    /// The log, line by line.
    pub stderr: std::sync::mpsc::Receiver<String>,
}

/// Environment that puts every listener on a free port of 127.0.0.1.
pub fn free_ports() -> Vec<(String, String)> {
    [
        ("CIM_TCP__PORT", "0"),
        ("CIM_WEBSOCKET__PORT", "0"),
        ("CIM_XML__PORT", "0"),
        ("CIM_HTTP__PORT", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The lines `from` writes, read by a thread of their own (so the pipe never fills).
pub fn lines(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl ServerProcess {
    /// Starts the server with `env` (on top of free ports) and waits until it prints every
    /// listening address.
    pub fn start(env: &[(&str, &str)]) -> ServerProcess {
        let data = (!env.iter().any(|(k, _)| *k == "CIM_STORE__PATH"))
            .then(|| tempfile::tempdir().unwrap());
        let log = env
            .iter()
            .find(|(k, _)| *k == "RUST_LOG")
            .map_or("info", |(_, v)| v);
        let mut cmd = Command::new(server_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(free_ports())
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env("RUST_LOG", log)
            .envs(data.iter().map(|d| ("CIM_STORE__PATH", d.path())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting cim-server");
        let rx = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut addrs = HashMap::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("cim-server did not print its addresses");
            // The HTTP listener is printed last.
            if let Some((proto, addr)) = line
                .strip_prefix("cim-server: ")
                .and_then(|rest| rest.split_once(" listening on "))
            {
                addrs.insert(proto.to_owned(), addr.parse().unwrap());
                if proto == "http" {
                    break;
                }
            }
        }
        ServerProcess {
            data,
            child,
            addrs,
            stdout: rx,
            stderr,
        }
    }

    pub fn addr(&self, proto: &str) -> SocketAddr {
        self.addrs[proto]
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cim-server did not exit within 15 s of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args` and `env`; returns (exit code, stdout, stderr).
pub fn run_once(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(server_binary())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP response: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the answer is the API's JSON error `{"error": reason, "status": status}` with
    /// `status`; returns the reason.
    #[track_caller]
    pub fn json_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["status"], status, "{self:?}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error reason: {self:?}"))
            .to_owned()
    }
}

/// Splits a response head into its status and headers.
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// One HTTP/1.1 connection driven by hand: raw bytes out, responses in, one at a time.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub async fn open(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; a write the server refused by closing is not an error here (its answer
    /// is read next).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// A `method path` request with `headers` and `body`, kept alive.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send(req.as_bytes()).await;
    }

    /// Reads more bytes into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(super::WAIT, self.stream.read(&mut chunk))
            .await
            .expect("no answer from the server")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` if the connection ends first. A reset after a whole
    /// response is the end of the stream.
    pub async fn response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "cut-off response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let (status, headers) = parse_head(&head);
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        while self.buf.len() < head_end + 4 + len {
            assert!(self.fill().await, "cut-off body after {head:?}");
        }
        let body =
            String::from_utf8_lossy(&self.buf[head_end + 4..head_end + 4 + len]).into_owned();
        self.buf.drain(..head_end + 4 + len);
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// Waits for the server to close the connection, with nothing more sent.
    pub async fn expect_closed(&mut self) {
        while self.fill().await {}
        assert!(
            self.buf.is_empty(),
            "more after the answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    http_on(
        TcpStream::connect(addr).await.unwrap(),
        addr,
        method,
        path,
        headers,
        body,
    )
    .await
}

/// One HTTP/1.1 request on the connection `s` to `addr`.
pub async fn http_on(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("HTTP response timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub const JSON: (&str, &str) = ("content-type", "application/json");

/// Sends a text message to `to` through the HTTP API at `addr`.
pub async fn send(addr: SocketAddr, to: &str, content: &str) -> Resp {
    let body = serde_json::json!({ "receiver": to, "action": "2", "content": content }).to_string();
    http(addr, "POST", "/api/v1/messages", &[JSON], &body).await
}

/// How many messages wait for `uid` (`GET /api/v1/accounts/{uid}/pending` at `addr`).
pub async fn pending(addr: SocketAddr, uid: &str) -> u64 {
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/accounts/{uid}/pending"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["pending"].as_u64().unwrap()
}

/// Sends and expects a 200; returns the message id.
pub async fn send_ok(addr: SocketAddr, to: &str, content: &str) -> i64 {
    let r = send(addr, to, content).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["id"].as_str().unwrap().parse().unwrap()
}
