//! Publishers: `client_message` over a bound connection, or `POST /api/v1/messages` over
//! keep-alive HTTP connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use cim_core::{Frame, SentBody, StreamCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::Conn;
use crate::pool::Counters;
use cim_client::http::Api;

/// What to send.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Subscribers `s0` … `s{n-1}`, round robin.
    pub n: usize,
    /// Messages in all.
    pub m: u64,
    /// Messages per second; 0 for as fast as they are taken.
    pub per_sec: u64,
    /// Content bytes.
    pub size: usize,
    /// Messages per HTTP request (more than 1: `POST /api/v1/messages/batch`).
    pub batch: usize,
}

impl Plan {
    /// The plan the command line asks for: contents of at least 20 bytes (room for the send
    /// time), at least one message per request.
    pub fn new(n: usize, m: u64, per_sec: u64, size: usize, batch: usize) -> Self {
        Self {
            n,
            m,
            per_sec,
            size: size.max(20),
            batch: batch.max(1),
        }
    }
}

/// Frames written per write when unpaced.
const BATCH: u64 = 128;

/// Sends over one bound connection; replies are read (and dropped) by a task of their own.
/// Returns how many were sent.
pub async fn socket(
    server: SocketAddr,
    tls: Option<crate::tls::Tls>,
    plan: Plan,
    counters: Arc<Counters>,
) -> anyhow::Result<u64> {
    let conn = Conn::bind(server, None, tls.as_ref(), "bench-publisher").await?;
    let Conn {
        stream,
        mut buf,
        mut codec,
    } = conn;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut reply_codec = codec.clone();
    let reply_counters = Arc::clone(&counters);
    let replies = tokio::spawn(async move {
        loop {
            while let Ok(Some(frame)) = reply_codec.decode(&mut buf) {
                if matches!(frame, Frame::Reply(_)) {
                    reply_counters
                        .replies
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = tokio::time::Instant::now();
    while sent < plan.m {
        let batch = if plan.per_sec == 0 {
            BATCH.min(plan.m - sent)
        } else {
            tick.tick().await;
            let due =
                u64::try_from(u128::from(plan.per_sec) * started.elapsed().as_micros() / 1_000_000)
                    .unwrap_or(u64::MAX)
                    .min(plan.m);
            due.saturating_sub(sent)
        };
        if batch == 0 {
            continue;
        }
        out.clear();
        for i in sent..sent + batch {
            let to = format!("s{}", i % plan.n.max(1) as u64);
            let body = SentBody::new("client_message")
                .with("receiver", to)
                .with("action", "2")
                .with("format", "txt")
                .with("content", counters.clock.stamp(plan.size));
            codec.encode(&Frame::Sent(body), &mut out)?;
        }
        wr.write_all(&out).await.context("writing to the server")?;
        wr.flush().await.context("writing to the server")?;
        sent += batch;
    }
    wr.flush().await?;
    // The server handles a connection's requests in order, so it has taken every message once
    // it has answered the last; then the connection can go.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while counters.replies.load(std::sync::atomic::Ordering::Acquire) < sent {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(wr);
    replies.abort();
    Ok(sent)
}

/// Sends through the HTTP API over `conns` keep-alive connections.
pub async fn http(
    addr: SocketAddr,
    conns: usize,
    plan: Plan,
    counters: Arc<Counters>,
) -> anyhow::Result<u64> {
    let conns = conns.max(1) as u64;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let counters = Arc::clone(&counters);
        // Connection c sends messages c, c + conns, c + 2·conns, …
        let mine = (plan.m + conns - 1 - c) / conns;
        let per_sec = plan.per_sec / conns;
        tasks.push(tokio::spawn(async move {
            let mut api = Api::connect(addr)
                .await
                .with_context(|| format!("connecting to the HTTP API at {addr}"))?;
            let started = tokio::time::Instant::now();
            let message = |k: u64| {
                let i = c + k * conns;
                serde_json::json!({
                    "receiver": format!("s{}", i % plan.n.max(1) as u64),
                    "action": "2", "format": "txt",
                    "content": counters.clock.stamp(plan.size),
                })
            };
            let batch = plan.batch.max(1) as u64;
            let mut k = 0;
            while k < mine {
                if let Some(us) = (k * 1_000_000).checked_div(per_sec) {
                    let at = started + Duration::from_micros(us);
                    tokio::time::sleep_until(at).await;
                }
                if batch == 1 {
                    api.request("POST", "/api/v1/messages", None, Some(&message(k)))
                        .await?;
                    k += 1;
                } else {
                    let end = (k + batch).min(mine);
                    let messages: Vec<_> = (k..end).map(message).collect();
                    let body = serde_json::json!({ "messages": messages });
                    api.request("POST", "/api/v1/messages/batch", None, Some(&body))
                        .await?;
                    k = end;
                }
            }
            anyhow::Ok(mine)
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    Ok(sent)
}
