//! Test support (feature `testing`): a real `redis-server` the test starts on a free port of
//! 127.0.0.1 with its own directory, append-only file on and fsynced at every write, killed by
//! its pid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test support

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): install it (`apt-get install -y redis-server`; \
                 scripts/test does this when it runs as root)"
            )
        })
}

/// Sends one inline command and returns the first reply line.
fn ask(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 65536];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"\r\n") && reply_complete(&got) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Whether a RESP reply (simple, error, integer or one bulk string) is complete.
fn reply_complete(b: &[u8]) -> bool {
    match b.first() {
        Some(b'$') => {
            let text = String::from_utf8_lossy(b);
            let Some((len, rest)) = text[1..].split_once("\r\n") else {
                return false;
            };
            match len.parse::<i64>() {
                Ok(n) if n >= 0 => rest.len() >= n as usize + 2,
                _ => true,
            }
        }
        _ => true,
    }
}

impl RedisServer {
    /// Starts a server on a free port with a fresh directory and waits until it answers.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..10 {
            let port = free_port();
            let mut child = spawn(port, dir.path());
            if wait_ready(port, &mut child) {
                return RedisServer {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The memory the server uses (`used_memory` of `INFO memory`), in bytes.
    pub fn used_memory(&self) -> u64 {
        self.command("INFO memory")
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO memory names used_memory")
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` (SIGKILL), and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory (what the append-only file
    /// holds survives), and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = spawn(self.port, self.dir.path());
            if wait_ready(self.port, &mut child) {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis-server did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server, deletes everything it had, and starts it again empty.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        self.restart();
    }

    /// Sends one inline command (words separated by spaces) and returns the raw reply.
    pub fn command(&self, command: &str) -> String {
        ask(self.port, command).unwrap_or_default()
    }
}

fn wait_ready(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ask(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
