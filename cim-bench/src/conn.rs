//! A lean protocol client: one TCP (or TLS) connection with CIM's binary codec, no SDK
//! machinery.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use cim_codec_binary::BinaryCodec;
use cim_core::{Frame, SentBody, StreamCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::tls::Tls;

/// A TCP stream, or TLS over one.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A bound connection.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
    pub codec: BinaryCodec,
}

/// Source addresses to spread connections over (127.0.0.1, 127.0.0.2, …), and source ports.
///
/// Connection `i` gets its own port below the kernel's ephemeral range when one is left there:
/// letting the kernel search its ephemeral range costs the generator more kernel time per
/// connect the fuller the range gets (most of a 50 000-connection run's CPU), and each pair of
/// source and destination address has only ~28 000 such ports. A port that turns out taken is
/// left to the kernel.
#[derive(Clone, Debug)]
pub struct Sources {
    ips: Vec<IpAddr>,
    /// Ports `FIRST_PORT .. ports_end` are handed out.
    ports_end: u16,
}

/// The first port handed out (the ones below are privileged).
const FIRST_PORT: u16 = 1025;

/// Where connection `i` connects from; port 0: the kernel's choice.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub ip: IpAddr,
    pub port: u16,
}

impl Sources {
    pub fn loopback(n: u8) -> Sources {
        // The kernel's ephemeral ports start here (Linux's default: 32768).
        let ports_end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        Sources {
            ips: (1..=n.max(1))
                .map(|i| IpAddr::from([127, 0, 0, i]))
                .collect(),
            ports_end,
        }
    }

    pub fn pick(&self, i: usize) -> Option<Source> {
        let n = self.ips.len().max(1);
        let ip = *self.ips.get(i % n)?;
        let port = u16::try_from(i / n)
            .ok()
            .and_then(|k| k.checked_add(FIRST_PORT))
            .filter(|&p| p < self.ports_end)
            .unwrap_or(0);
        Some(Source { ip, port })
    }
}

/// A socket bound to `source`: its own port if free, else one the kernel picks at connect.
fn socket_from(source: Source) -> anyhow::Result<TcpSocket> {
    if source.port != 0 {
        let socket = TcpSocket::new_v4()?;
        if socket.bind(SocketAddr::new(source.ip, source.port)).is_ok() {
            return Ok(socket);
        }
    }
    let socket = TcpSocket::new_v4()?;
    // Without this, bind() picks the port before the destination is known: it must be free
    // for every destination, is searched for among all the ports in use, and a port in
    // TIME_WAIT is never reused. Chosen at connect, it only has to make the four-tuple unique.
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .context("setting IP_BIND_ADDRESS_NO_PORT")?;
    socket
        .bind(SocketAddr::new(source.ip, 0))
        .with_context(|| format!("binding the source address {}", source.ip))?;
    Ok(socket)
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
    /// Connects from `source` (when given), over TLS with `tls`, and binds `uid`.
    pub async fn bind(
        server: SocketAddr,
        source: Option<Source>,
        tls: Option<&Tls>,
        uid: &str,
    ) -> anyhow::Result<Conn> {
        let socket = match source {
            Some(source) => socket_from(source)?,
            None => TcpSocket::new_v4()?,
        };
        // Closed with a reset: no TIME_WAIT on our side, so one run's ports do not crowd the
        // next run's connects (they would, on loopback, where both ends are ours).
        socket.set_zero_linger()?;
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            Some(tls) => Stream::Tls(Box::new(tls.connect(stream).await?)),
            None => Stream::Plain(stream),
        };
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
        self.stream.flush().await?;
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
        // Small: ten thousand connections each touching a larger buffer cost the generator
        // more page faults than reads.
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(2048);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? != 0)
    }
}

/// Binds with retries (for a storm, while the server comes back).
pub async fn bind_until_up(
    server: SocketAddr,
    source: Option<Source>,
    tls: Option<&Tls>,
    uid: &str,
    give_up: tokio::time::Instant,
) -> anyhow::Result<Conn> {
    loop {
        match Conn::bind(server, source, tls, uid).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_gets_its_own_source_port_below_the_ephemeral_range() {
        let s = Sources {
            ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])],
            ports_end: 1030,
        };
        let at = |i| s.pick(i).map(|p| (p.ip, p.port));
        assert_eq!(at(0), Some((IpAddr::from([127, 0, 0, 1]), 1025)));
        assert_eq!(at(1), Some((IpAddr::from([127, 0, 0, 2]), 1025)));
        assert_eq!(at(9), Some((IpAddr::from([127, 0, 0, 2]), 1029)));
        // Past the range: the kernel chooses.
        assert_eq!(at(10), Some((IpAddr::from([127, 0, 0, 1]), 0)));
    }

    #[tokio::test]
    async fn a_taken_source_port_is_left_to_the_kernel() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let source = Source {
            ip: IpAddr::from([127, 0, 0, 1]),
            port,
        };
        // The socket still binds (to another port) and connects.
        let stream = socket_from(source)
            .unwrap()
            .connect(taken.local_addr().unwrap())
            .await
            .unwrap();
        assert_ne!(stream.local_addr().unwrap().port(), port);
        // A free port is taken as asked.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        let socket = socket_from(Source {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: free_port,
        })
        .unwrap();
        assert_eq!(socket.local_addr().unwrap().port(), free_port);
    }
}
