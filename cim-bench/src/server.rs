//! The server under test: started by the tool, or found by pid; its memory and CPU from /proc.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (Linux's USER_HZ, fixed at 100
/// for that interface).
const USER_HZ: f64 = 100.0;

/// A server process the tool reads figures from.
pub struct Server {
    pub pid: u32,
    pub tcp: SocketAddr,
    pub http: Option<SocketAddr>,
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    binary: PathBuf,
    data: PathBuf,
    addrs: HashMap<String, SocketAddr>,
    /// The certificate and key of a server whose TCP port speaks TLS.
    tls: Option<crate::tls::Files>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `binary` on free ports of 127.0.0.1 with a fresh store directory (`k`: which of
    /// the servers of this run) and quiet logs; with `tls`, its TCP port speaks TLS with a
    /// certificate made for the run, and the client side that trusts it comes back too.
    pub fn spawn(
        binary: PathBuf,
        k: usize,
        tls: bool,
    ) -> anyhow::Result<(Server, Option<crate::tls::Tls>)> {
        let data = std::env::temp_dir().join(format!("cim-bench-{}-{k}", std::process::id()));
        let (client, files) = match tls {
            true => {
                let (client, files) = crate::tls::Tls::self_signed(&data)?;
                (Some(client), Some(files))
            }
            false => (None, None),
        };
        let (child, addrs) = start_on(&binary, &data, files.as_ref(), None, &[])?;
        let server = Server::from_spawned(Spawned {
            child,
            binary,
            data,
            addrs,
            tls: files,
            env: Vec::new(),
        });
        Ok((server, client))
    }

    /// [`spawn`](Self::spawn), plain, with more environment (a cluster node's settings).
    pub fn spawn_with(
        binary: PathBuf,
        k: usize,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Server> {
        let data = std::env::temp_dir().join(format!("cim-bench-{}-{k}", std::process::id()));
        let (child, addrs) = start_on(&binary, &data, None, None, &env)?;
        Ok(Server::from_spawned(Spawned {
            child,
            binary,
            data,
            addrs,
            tls: None,
            env,
        }))
    }

    /// Kills the spawned server with SIGKILL (`kill -9`), and waits for it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(s) = self.spawned.as_mut() else {
            bail!("only a server started by cim-bench can be killed");
        };
        s.child.kill()?;
        s.child.wait()?;
        Ok(())
    }

    fn from_spawned(s: Spawned) -> Server {
        Server {
            pid: s.child.id(),
            tcp: s
                .addrs
                .get("tcp")
                .or_else(|| s.addrs.get("tls"))
                .copied()
                .unwrap_or(([127, 0, 0, 1], 0).into()),
            http: s.addrs.get("http").copied(),
            spawned: Some(s),
        }
    }

    /// A server started elsewhere.
    pub fn external(pid: Option<u32>, tcp: SocketAddr, http: Option<SocketAddr>) -> Server {
        Server {
            pid: pid.unwrap_or(0),
            tcp,
            http,
            spawned: None,
        }
    }

    /// Whether figures can be read from /proc.
    pub fn has_pid(&self) -> bool {
        self.pid != 0
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&self.pid.to_string())
    }

    /// The soft limit on open files of the server process.
    pub fn fd_limit(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// Stops the spawned server (SIGTERM) and starts it again on the same ports. Returns the time
    /// the new process took to listen.
    pub fn restart(&mut self) -> anyhow::Result<Duration> {
        let Some(s) = self.spawned.as_mut() else {
            bail!("only a server started by cim-bench can be restarted (omit --addr)");
        };
        terminate(&mut s.child)?;
        let start = std::time::Instant::now();
        let (child, addrs) = start_on(&s.binary, &s.data, s.tls.as_ref(), Some(&s.addrs), &s.env)?;
        s.child = child;
        s.addrs = addrs;
        self.pid = s.child.id();
        Ok(start.elapsed())
    }
}

/// User plus system CPU seconds used so far by this process (the generator).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// CPU seconds of the process `/proc/<pid>` names.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.spawned.as_mut() {
            let _ = terminate(&mut s.child);
            let _ = std::fs::remove_dir_all(&s.data);
        }
    }
}

fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..400 {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn start_on(
    binary: &PathBuf,
    data: &PathBuf,
    tls: Option<&crate::tls::Files>,
    ports: Option<&HashMap<String, SocketAddr>>,
    env: &[(String, String)],
) -> anyhow::Result<(Child, HashMap<String, SocketAddr>)> {
    let port = |p: &str| {
        ports
            .and_then(|m| m.get(p))
            .map_or_else(|| "0".to_owned(), |a| a.port().to_string())
    };
    let tcp_port = match tls {
        Some(_) => port("tls"),
        None => port("tcp"),
    };
    let mut command = Command::new(binary);
    if let Some(files) = tls {
        command
            .env("CIM_TCP__TLS__CERT", &files.cert)
            .env("CIM_TCP__TLS__KEY", &files.key);
    }
    let mut child = command
        .env("CIM_TCP__PORT", tcp_port)
        .env("CIM_HTTP__PORT", port("http"))
        .env("CIM_WEBSOCKET__ENABLED", "false")
        .env("CIM_STORE__PATH", data)
        .env("CIM_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let out = child.stdout.take().context("the server's stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut addrs = HashMap::new();
    for line in lines.by_ref() {
        let line = line?;
        if let Some((proto, addr)) = line
            .strip_prefix("cim-server: ")
            .and_then(|r| r.split_once(" listening on "))
        {
            addrs.insert(proto.to_owned(), addr.parse()?);
            if proto == "http" {
                break;
            }
        }
    }
    if !addrs.contains_key("tcp") && !addrs.contains_key("tls") {
        bail!("{} exited before it listened", binary.display());
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addrs))
}
