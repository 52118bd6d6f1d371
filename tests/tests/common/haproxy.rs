//! A real HAProxy (Debian's `haproxy`) in front of a server: started on free ports of
//! 127.0.0.1 in the foreground (`-db`), killed by pid when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// How HAProxy passes connections of one frontend on.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// TCP, a PROXY header of version 1 first (`send-proxy`).
    ProxyV1,
    /// TCP, a PROXY header of version 2 first (`send-proxy-v2`).
    ProxyV2,
    /// HTTP, the client appended to `X-Forwarded-For` (`option forwardfor`); WebSocket
    /// upgrades pass.
    HttpForwardFor,
}

/// One frontend: what it does, and the server address it sends to.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub mode: Mode,
    pub to: SocketAddr,
}

/// A running HAProxy.
pub struct Haproxy {
    child: Child,
    /// The address of each route's frontend, in the order given.
    pub fronts: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
    /// Its log, line by line.
    pub stderr: std::sync::mpsc::Receiver<String>,
}

/// A port of 127.0.0.1 free just now.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Haproxy {
    /// Starts HAProxy with one frontend per route and waits until every one accepts.
    pub async fn start(routes: &[Route]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let fronts: Vec<SocketAddr> = routes.iter().map(|_| free_port()).collect();
        let mut cfg = String::from(
            "global\n    maxconn 256\n\ndefaults\n    timeout connect 5s\n    \
             timeout client 30s\n    timeout server 30s\n    timeout tunnel 30s\n\n",
        );
        for (i, (route, front)) in routes.iter().zip(&fronts).enumerate() {
            let (mode, server_opt, extra) = match route.mode {
                Mode::ProxyV1 => ("tcp", " send-proxy", ""),
                Mode::ProxyV2 => ("tcp", " send-proxy-v2", ""),
                Mode::HttpForwardFor => ("http", "", "    option forwardfor\n"),
            };
            write!(
                cfg,
                "frontend f{i}\n    mode {mode}\n    bind {front}\n{extra}    default_backend b{i}\n\n\
                 backend b{i}\n    mode {mode}\n    server s{i} {}{server_opt}\n\n",
                route.to
            )
            .unwrap();
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, &cfg).unwrap();
        let mut child = Command::new("haproxy")
            .arg("-f")
            .arg(&file)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting haproxy (Debian's package `haproxy`; scripts/test installs it)");
        let stderr = super::process::lines(child.stderr.take().unwrap());
        let proxy = Haproxy {
            child,
            fronts,
            _dir: dir,
            stderr,
        };
        for front in &proxy.fronts {
            let deadline = tokio::time::Instant::now() + super::WAIT;
            while TcpStream::connect(front).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "haproxy does not listen on {front}: {}",
                    proxy.stderr.try_iter().collect::<Vec<_>>().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `to` from the loopback address `from` (such as 127.0.0.2), so that a
/// client and the proxy in front of the server have addresses of their own.
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}
