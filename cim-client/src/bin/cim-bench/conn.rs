//! A lean protocol client: one TCP connection with CIM's binary codec, no SDK machinery.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, SentBody, StreamCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A bound connection.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub codec: BinaryCodec,
}

/// Source addresses to spread connections over (127.0.0.1, 127.0.0.2, …): each pair of source
/// and destination address has its own ~28 000 ephemeral ports.
#[derive(Clone, Debug)]
pub struct Sources(Vec<IpAddr>);

impl Sources {
    pub fn loopback(n: u8) -> Sources {
        Sources(
            (1..=n.max(1))
                .map(|i| IpAddr::from([127, 0, 0, i]))
                .collect(),
        )
    }

    pub fn pick(&self, i: usize) -> Option<IpAddr> {
        if self.0.len() <= 1 {
            return None;
        }
        self.0.get(i % self.0.len()).copied()
    }
}

/// The bind of a bench client: the SDK's bind request, with only the fields a phone always
/// sends (so that the server's per-session memory is what a real client costs).
fn bind_request(uid: &str) -> SentBody {
    let bind = cim_client::BindInfo {
        uid: uid.to_owned(),
        channel: "android".into(),
        device_id: format!("bench-{uid}"),
        device_name: "cim-bench".into(),
        app_version: String::new(),
        os_version: String::new(),
        language: String::new(),
        token: None,
    };
    bind.request(false)
}

impl Conn {
    /// Connects from `source` (when given) and binds `uid`.
    pub async fn bind(
        server: SocketAddr,
        source: Option<IpAddr>,
        uid: &str,
    ) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            // Without this, bind() picks the port before the destination is known: it must be
            // free for every destination, is searched for among all the ports in use (slow
            // once thousands are), and a port in TIME_WAIT is never reused. Chosen at connect,
            // a port only has to make the address four-tuple unique.
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )
            .context("setting IP_BIND_ADDRESS_NO_PORT")?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding the source address {ip}"))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
            codec: BinaryCodec::default(),
        };
        conn.send(&Frame::Sent(bind_request(uid))).await?;
        loop {
            match conn.next().await? {
                Some(Frame::Reply(r)) if r.key == "client_bind" => {
                    if r.code != "200" {
                        bail!("bind of {uid} refused: {} {}", r.code, r.message);
                    }
                    // Give back the buffer an idle connection does not need.
                    if conn.buf.is_empty() {
                        conn.buf = BytesMut::new();
                    }
                    return Ok(conn);
                }
                Some(Frame::Ping) => conn.send(&Frame::Pong).await?,
                Some(_) => {}
                None => bail!("closed before the bind reply"),
            }
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next frame; `None` at the end of the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next whole frame among the bytes read so far, without reading.
    pub fn buffered(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(self.codec.decode(&mut self.buf)?)
    }

    /// Reads what has arrived (waiting for something); `false` at the end of the stream.
    pub async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? != 0)
    }
}

/// Binds with retries (for a storm, while the server comes back).
pub async fn bind_until_up(
    server: SocketAddr,
    source: Option<IpAddr>,
    uid: &str,
    give_up: tokio::time::Instant,
) -> anyhow::Result<Conn> {
    loop {
        match Conn::bind(server, source, uid).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50))).await;
            }
        }
    }
}
