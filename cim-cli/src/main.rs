//! `cim`: a command-line client for cim-rs (and CIM) servers.
//!
//! ```sh
//! cim listen --uid 10000                  # print messages to 10000 as they arrive
//! cim send --to 10000 --content hello     # send over the socket (as account "cim-cli")
//! cim send --to 10000 --content hi --http http://127.0.0.1:8080
//! cim sessions                            # who is online (HTTP API)
//! cim ping                                # connect + bind round trips
//! cim listen --uid 10000 -s tls://push.example.com:23443          # over TLS, platform roots
//! cim ping -s wss://localhost:34443/ --ca ca.pem                   # trusting a CA of your own
//! cim listen --uid 10000 --dispatch http://127.0.0.1:8080          # the node dispatch names
//! cim listen --uid 10000 --dispatch http://127.0.0.1:8080 --protocol ws+json --ws-path /push
//! cim listen --uid 10000 --dispatch http://127.0.0.1:8080 --dispatch http://127.0.0.1:8081
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cim_client::http;
use cim_client::{
    BindInfo, Client, ClientConfig, ClientError, DispatchUrl, Endpoint, Event, Message, Protocol,
    Target,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cim",
    version,
    about = "A command-line client for cim-rs servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bind an account and print its messages as they arrive (Ctrl-C ends).
    Listen {
        #[command(flatten)]
        conn: ConnArgs,
        /// The account to bind.
        #[arg(long)]
        uid: String,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Ask for receipts: messages stay on the server until printed.
        #[arg(long)]
        receipts: bool,
    },
    /// Send a message to an account.
    Send {
        #[command(flatten)]
        conn: ConnArgs,
        /// The receiving account.
        #[arg(long)]
        to: String,
        /// The message text.
        #[arg(long)]
        content: String,
        /// The sending account (bound over the socket; the `sender` field over HTTP).
        #[arg(long, default_value = "cim-cli")]
        from: String,
        /// The message action.
        #[arg(long, default_value = "2")]
        action: String,
        /// The message title.
        #[arg(long, default_value = "")]
        title: String,
        /// The message format.
        #[arg(long, default_value = "txt")]
        format: String,
        /// The message's extra field.
        #[arg(long, default_value = "")]
        extra: String,
        /// Send through the HTTP API at this address instead of the socket.
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        /// The HTTP API key (also from CIM_API_KEY).
        #[arg(long, env = "CIM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// List the online sessions (HTTP API).
    Sessions {
        /// The HTTP API.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
        http: String,
        /// The HTTP API key (also from CIM_API_KEY).
        #[arg(long, env = "CIM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Only this account's sessions.
        #[arg(long)]
        uid: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Connect and bind, and report how long it took.
    Ping {
        #[command(flatten)]
        conn: ConnArgs,
        /// The account to bind.
        #[arg(long, default_value = "cim-ping")]
        uid: String,
        /// How many rounds.
        #[arg(long, short = 'c', default_value_t = 3)]
        count: u32,
    },
}

#[derive(Args)]
struct ConnArgs {
    /// The server: tcp://host:port, ws://host:port/path, ws+json://host:port/path,
    /// xml://host:port, or over TLS tls://host:port, wss://host:port/path,
    /// wss+json://host:port/path.
    #[arg(long, short = 's', default_value = "tcp://127.0.0.1:23456")]
    server: String,
    /// Instead of a fixed server: before every connect and reconnect, ask this dispatch URL
    /// (http://host:port, or a full URL) which node to connect to, and connect to it in
    /// --protocol. Give it more than once (several nodes' HTTP APIs) to ask the next when one
    /// cannot answer; when none can, reconnect to the last good address.
    #[arg(long, value_name = "URL", conflicts_with = "server")]
    dispatch: Vec<String>,
    /// With --dispatch: tcp, tls, xml, ws, ws+json, wss or wss+json.
    #[arg(long, default_value = "tcp", requires = "dispatch")]
    protocol: String,
    /// With --dispatch and a WebSocket protocol: the request path.
    #[arg(long, default_value = "/", requires = "dispatch")]
    ws_path: String,
    /// For tls:// and wss://: trust the CA certificates of this PEM file instead of the
    /// platform's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// A bind token, when the server requires one.
    #[arg(long)]
    token: Option<String>,
    /// The channel to bind on.
    #[arg(long, default_value = "cli")]
    channel: String,
    /// The device id to bind with (default: one of this process's own, so two `cim`
    /// processes are two devices to the multi-device rule).
    #[arg(long)]
    device_id: Option<String>,
}

impl ConnArgs {
    fn target(&self) -> anyhow::Result<Target> {
        if self.dispatch.is_empty() {
            return Ok(Target::Endpoint(self.server.parse::<Endpoint>()?));
        }
        let urls = self
            .dispatch
            .iter()
            .map(|u| u.parse::<DispatchUrl>())
            .collect::<Result<Vec<_>, _>>()?;
        let protocol: Protocol = self.protocol.parse()?;
        Ok(Target::Dispatch {
            urls,
            protocol: protocol.with_path(&self.ws_path)?,
        })
    }

    fn config(&self, uid: &str) -> anyhow::Result<ClientConfig> {
        let target = self.target()?;
        let mut bind = BindInfo::new(uid);
        bind.channel.clone_from(&self.channel);
        bind.device_id = self
            .device_id
            .clone()
            .unwrap_or_else(|| format!("{}-cim-{}", bind.device_id, std::process::id()));
        bind.token.clone_from(&self.token);
        let mut cfg = ClientConfig::with_target(target, bind);
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.ca_file.clone_from(&self.ca);
        Ok(cfg)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CIM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Listen {
            conn,
            uid,
            json,
            receipts,
        } => {
            let mut cfg = conn.config(&uid)?;
            cfg.receipts = receipts;
            listen(cfg, json).await
        }
        Command::Send {
            conn,
            to,
            content,
            from,
            action,
            title,
            format,
            extra,
            http,
            api_key,
        } => {
            let message = Message {
                action,
                title,
                content,
                format,
                extra,
                ..Message::default()
            };
            match http {
                Some(base) => {
                    let body = serde_json::json!({
                        "receiver": to, "sender": from, "action": message.action,
                        "title": message.title, "content": message.content,
                        "format": message.format, "extra": message.extra,
                    });
                    let v = http::call(
                        &base,
                        "POST",
                        "/api/v1/messages",
                        api_key.as_deref(),
                        Some(body),
                    )
                    .await?;
                    println!(
                        "sent {} (delivered to {} connection(s){})",
                        field(&v, "id").as_str().unwrap_or("?"),
                        field(&v, "delivered"),
                        if field(&v, "stored") == &serde_json::Value::Bool(true) {
                            ", stored for later"
                        } else {
                            ""
                        }
                    );
                }
                None => {
                    let (client, _events) = Client::connect(conn.config(&from)?).await?;
                    let id = client.send_message(&to, message).await?;
                    println!("sent {id}");
                    client.destroy().await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions {
            http: base,
            api_key,
            uid,
            json,
        } => {
            let path = match &uid {
                Some(u) => format!("/api/v1/accounts/{}/sessions", encode(u)),
                None => "/api/v1/sessions?limit=1000".to_owned(),
            };
            let v = http::call(&base, "GET", &path, api_key.as_deref(), None).await?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let sessions = v
                .get("sessions")
                .unwrap_or(&v)
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<20} {:<10} {:<24} {:<22} node",
                "uid", "channel", "device", "remote"
            );
            for s in &sessions {
                println!(
                    "{:<20} {:<10} {:<24} {:<22} {}",
                    field(s, "uid").as_str().unwrap_or(""),
                    field(s, "channel").as_str().unwrap_or(""),
                    field(s, "deviceName").as_str().unwrap_or(""),
                    field(s, "remoteAddr").as_str().unwrap_or(""),
                    field(s, "node").as_str().unwrap_or(""),
                );
            }
            let total = v.get("total").and_then(|t| t.as_u64());
            println!(
                "{} session(s){}",
                sessions.len(),
                total.map_or(String::new(), |t| format!(" of {t}"))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { conn, uid, count } => {
            let cfg = conn.config(&uid)?;
            let mut times = Vec::new();
            for i in 0..count.max(1) {
                let start = Instant::now();
                let (client, _events) = Client::connect(cfg.clone()).await?;
                let took = start.elapsed();
                let at = where_bound(&client, &cfg.target);
                client.destroy().await;
                println!(
                    "{at}: connected and bound in {:.2} ms",
                    took.as_secs_f64() * 1e3
                );
                times.push(took);
                if i + 1 < count {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
            let avg = times.iter().sum::<Duration>() / times.len().max(1) as u32;
            println!(
                "{} round(s): min {:.2} ms, avg {:.2} ms, max {:.2} ms",
                times.len(),
                ms(times.iter().min()),
                ms(Some(&avg)),
                ms(times.iter().max())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where `client` is bound: its endpoint, and with dispatch the node named.
fn where_bound(client: &Client, target: &Target) -> String {
    let endpoint = client
        .endpoint()
        .map_or_else(|| target.to_string(), |e| e.to_string());
    match (target, client.node(), client.dispatched_by()) {
        (Target::Dispatch { .. }, Some(node), Some(url)) => {
            format!("{endpoint} (node {node}, named by dispatch {url})")
        }
        (Target::Dispatch { .. }, _, _) => {
            format!("{endpoint} (the last good address: dispatch could not be asked)")
        }
        (Target::Endpoint(_), _, _) => endpoint,
    }
}

async fn listen(cfg: ClientConfig, json: bool) -> anyhow::Result<ExitCode> {
    let target = cfg.target.clone();
    let uid = cfg.bind.uid.clone();
    let (client, mut events) = Client::connect(cfg).await.map_err(|e| match e {
        ClientError::Refused(r) => anyhow::anyhow!(
            "the server refused the bind of {uid}: {} {}",
            r.code,
            r.message
        ),
        other => other.into(),
    })?;
    eprintln!(
        "cim: listening as {uid} on {} (Ctrl-C ends)",
        where_bound(&client, &target)
    );
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            e = events.recv() => e,
        };
        let Some(event) = event else { break };
        match event {
            Event::Message(m) => {
                if json {
                    // The id as a string, as the HTTP API gives it: JSON readers such as jq
                    // and JavaScript round integers above 2^53.
                    let mut v = serde_json::to_value(&m).context("encoding a message")?;
                    if let Some(id) = v.get_mut("id") {
                        *id = serde_json::Value::String(m.id.to_string());
                    }
                    println!("{v}");
                } else {
                    let title = if m.title.is_empty() {
                        String::new()
                    } else {
                        format!("[{}] ", m.title)
                    };
                    // A broadcast or a tag's push names no receiver.
                    if m.receiver.is_empty() {
                        println!("{}: {title}{}", m.sender, m.content);
                    } else {
                        println!("{} -> {}: {title}{}", m.sender, m.receiver, m.content);
                    }
                }
            }
            Event::Connected { rebound: true } => eprintln!(
                "cim: reconnected and bound again on {}",
                where_bound(&client, &target)
            ),
            Event::Connected { rebound: false } => {}
            Event::ConnectFailed { reason, retry_in } => {
                eprintln!("cim: connect failed ({reason}); retrying in {retry_in:.1?}");
            }
            Event::Closed { reason, .. } => eprintln!("cim: connection closed: {reason}"),
            Event::Kicked(m) => {
                client.destroy().await;
                // The notice names the new device; an operator's kick names the operator.
                if m.content == OPERATOR_KICK {
                    bail!("{uid} was kicked by the server's operator");
                }
                bail!("{uid} was bound on another device ({})", m.content);
            }
            Event::Refused(r) => {
                client.destroy().await;
                bail!("the server refused {uid}: {} {}", r.code, r.message);
            }
            Event::Reply(_) => {}
        }
    }
    client.destroy().await;
    Ok(ExitCode::SUCCESS)
}

/// What the kick notice of an operator's kick names as the new device (the server's
/// `cim_core::engine::OPERATOR`).
const OPERATOR_KICK: &str = "admin";

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A field of a JSON object (`null` when absent).
fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v.get(key).unwrap_or(&serde_json::Value::Null)
}
