//! The `cim-server` binary: the reference CIM-compatible push server.
//!
//! ```sh
//! cargo run --release -p cim-server                      # defaults: TCP 23456, WS 34567, HTTP 8080
//! cargo run --release -p cim-server -- --config cim.toml # a TOML file; CIM_* variables override it
//! cargo run --release -p cim-server -- --print-config    # the effective configuration
//! cargo run --release -p cim-server -- token --uid 10000 # mint a bind token (needs auth.token_secret)
//! cargo run --release -p cim-server -- health            # ask the running server's GET /health
//! ```
//!
//! SIGINT and SIGTERM shut it down gracefully; SIGUSR1 drains it (out of dispatch, no new
//! connections, the open ones closed spread over `shutdown.drain_ms`, then it exits 0), as
//! `POST /api/v1/admin/drain` does; SIGHUP reloads the TLS certificates.
//!
//! Built without the `http` feature it serves no HTTP API: `http.enabled` is off by default
//! (said once in the log) and `true` is refused at start-up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cim_server::app::App;
use cim_server::auth::{TokenSigner, now_secs};
use cim_server::settings::{LogFormat, Settings};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cim-server",
    version,
    about = "A CIM-compatible push and instant-messaging server"
)]
struct Args {
    /// A TOML configuration file; `CIM_*` environment variables override it
    /// (`CIM_TCP__PORT=5000` sets `tcp.port`).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a bind token for an account with `auth.token_secret`.
    Token {
        /// The account.
        #[arg(long)]
        uid: String,
        /// Lifetime in seconds (default `auth.token_ttl_secs`, or one day).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Ask the server this configuration describes for `GET /health` (at `http.host` and
    /// `http.port`; an unspecified host such as 0.0.0.0 is asked on loopback; with a PROXY
    /// header when `http.proxy_protocol` is on and that address is a trusted proxy's) and exit 0
    /// when it answers 200: a container's health check, with nothing else in the image.
    Health {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// Largest answer `health` reads.
const MAX_HEALTH_ANSWER: u64 = 64 * 1024;

/// `GET /health` at `addr`: the body of a `200`, or why not. With `proxied`, the request
/// starts with a PROXY header naming no client (`PROXY UNKNOWN`, a proxy's own health check),
/// as the API takes from a trusted proxy.
async fn ask_health(addr: std::net::SocketAddr, proxied: bool) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let proxy = if proxied { "PROXY UNKNOWN\r\n" } else { "" };
    stream
        .write_all(
            format!("{proxy}GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .with_context(|| format!("asking {addr}"))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_HEALTH_ANSWER)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("reading the answer of {addr}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "{addr} answered {status:?} to GET /health"
    );
    Ok(body.trim().to_owned())
}

/// The `health` subcommand.
async fn health(settings: &Settings, timeout: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg!(feature = "http"),
        "this cim-server is built without the `http` feature: there is no GET /health to ask"
    );
    anyhow::ensure!(
        settings.http.enabled,
        "http.enabled is false: there is no GET /health to ask"
    );
    let mut addr = settings
        .http
        .host
        .resolve(settings.http.port)
        .await
        .map_err(|e| anyhow::anyhow!("`http.host` = {:?}: {e}", settings.http.host.to_string()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // From loopback to the API: a PROXY header is expected when loopback is a trusted proxy.
    let access = settings.http.access();
    let proxied = access.proxy_protocol && access.trusts(addr.ip());
    let body = tokio::time::timeout(Duration::from_secs(timeout), ask_health(addr, proxied))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer GET /health within {timeout} s"))??;
    println!("{body}");
    Ok(())
}

/// The log filter: `RUST_LOG` when set, else `log.level`; either one invalid is an error that
/// names it and its value.
fn log_filter(settings: &Settings) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(var) => EnvFilter::try_new(&var)
            .map_err(|e| anyhow::anyhow!("RUST_LOG = {var:?} is not a log filter: {e}")),
        Err(_) => EnvFilter::try_new(&settings.log.level).map_err(|e| {
            anyhow::anyhow!(
                "configuration: `log.level` = {:?}: not a log filter (such as `info` or \
                 `cim_core=debug,info`): {e}",
                settings.log.level
            )
        }),
    }
}

fn init_logs(settings: &Settings, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only: a pipe or a file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGINT and SIGTERM handlers now (before the server says it is ready, so an
/// early signal is never lost) and returns a future that completes on the first signal.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

/// SIGHUP: reload the TLS certificates. Installed before the server says it is ready.
#[cfg(unix)]
struct ReloadSignal(tokio::signal::unix::Signal);

#[cfg(unix)]
fn reload_signal() -> anyhow::Result<ReloadSignal> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(ReloadSignal(
        signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    ))
}

#[cfg(unix)]
impl ReloadSignal {
    async fn next(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGUSR1: drain the node. Installed before the server says it is ready.
#[cfg(unix)]
fn drain_signal() -> anyhow::Result<ReloadSignal> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(ReloadSignal(
        signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?,
    ))
}

#[cfg(not(unix))]
fn drain_signal() -> anyhow::Result<ReloadSignal> {
    Ok(ReloadSignal)
}

#[cfg(not(unix))]
struct ReloadSignal;

#[cfg(not(unix))]
fn reload_signal() -> anyhow::Result<ReloadSignal> {
    Ok(ReloadSignal)
}

#[cfg(not(unix))]
impl ReloadSignal {
    async fn next(&mut self) {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

async fn run(args: Args, settings: Settings) -> anyhow::Result<()> {
    let filter = log_filter(&settings)?;
    if args.print_config {
        print!("{}", settings.to_toml());
        return Ok(());
    }
    if let Some(Command::Token { uid, ttl }) = args.command {
        anyhow::ensure!(
            !settings.auth.token_secret.is_empty(),
            "auth.token_secret is not set: tokens are off"
        );
        let ttl = ttl.unwrap_or(if settings.auth.token_ttl_secs > 0 {
            settings.auth.token_ttl_secs
        } else {
            86_400
        });
        println!(
            "{}",
            TokenSigner::new(&settings.auth.token_secret)
                .mint(&uid, now_secs().saturating_add(ttl))
        );
        return Ok(());
    }
    if let Some(Command::Health { timeout }) = args.command {
        return health(&settings, timeout).await;
    }
    init_logs(&settings, filter);
    let signal = shutdown_signal()?;
    let mut reload = reload_signal()?;
    let mut drain = drain_signal()?;
    let app = App::start(&settings)
        .await
        .map_err(|e| match settings.listener_keys(&e) {
            // The keys that set the address that could not be listened on.
            Some(keys) => anyhow::Error::from(e).context(keys),
            None => anyhow::Error::from(e),
        })?;
    for (protocol, addr) in app.addrs() {
        println!("cim-server: {protocol} listening on {addr}");
    }
    tokio::pin!(signal);
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    let window = Duration::from_millis(settings.shutdown.drain_ms);
    let mut draining = None;
    let signal = loop {
        tokio::select! {
            s = &mut signal => break Some(s),
            () = reload.next() => {
                tracing::info!("SIGHUP received: reloading TLS certificates");
                app.reload_tls();
            }
            () = drain.next(), if draining.is_none() => draining = Some("SIGUSR1 received"),
            () = app.drain_requested(), if draining.is_none() => {
                draining = Some("a drain was asked for (POST /api/v1/admin/drain)");
            }
        }
        if let Some(why) = draining {
            println!(
                "cim-server: {why}, draining: out of dispatch, closing the connections over {} \
                 ms (shutdown.drain_ms)",
                window.as_millis()
            );
            // A SIGINT or SIGTERM meanwhile cuts the drain short: the shutdown closes the rest.
            tokio::select! {
                s = &mut signal => break Some(s),
                report = app.drain(window, grace) => {
                    println!(
                        "cim-server: drained: {} connection(s) closed over {:.2} s, at most {} \
                         in any second{}",
                        report.connections,
                        report.closing_time.as_secs_f64(),
                        report.max_per_second,
                        if report.left_open > 0 {
                            format!(", {} still open at the deadline", report.left_open)
                        } else {
                            String::new()
                        }
                    );
                    break None;
                }
            }
        }
    };
    match signal {
        Some(signal) => println!("cim-server: {signal} received, shutting down"),
        None => println!("cim-server: shutting down"),
    }
    let clean = app.shutdown(grace).await;
    println!(
        "cim-server: stopped{}",
        if clean { "" } else { " (grace period ran out)" }
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Read before the runtime starts: `worker_threads` sizes it.
    let settings = match Settings::load(args.config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cim-server: {:#}", anyhow::Error::from(e));
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.worker_threads > 0 {
        builder.worker_threads(settings.worker_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cim-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cim-server: {e:#}");
            ExitCode::from(2)
        }
    }
}
