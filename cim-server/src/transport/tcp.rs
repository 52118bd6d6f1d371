//! [`TcpTransport`]: a [`StreamTransport`] over plain TCP whose idle connections can park
//! (see [`ConnectionConfig::park_after`](cim_core::engine::ConnectionConfig::park_after)).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

#[cfg(unix)]
use cim_core::engine::ParkedSend;
use cim_core::engine::{Closing, Outbound, SharedMessage, Transport};
use cim_core::{Frame, Result, StreamCodec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::StreamTransport;

/// Frames of a [`StreamCodec`] over a TCP stream, as [`StreamTransport`] carries them, for
/// connections that can park while idle: parked, the socket gives up its registration with the
/// runtime, and the connection's task ends, until the engine resumes it.
pub struct TcpTransport<C> {
    inner: StreamTransport<Socket, C>,
}

impl<C: StreamCodec> TcpTransport<C> {
    /// Encodes `items` and writes what `write` takes of them at once.
    #[cfg(unix)]
    fn send_at_once(
        &mut self,
        items: &[Outbound],
        write: impl FnOnce(&mut Socket, &[u8]) -> usize,
    ) -> ParkedSend {
        let Some(bytes) = self.inner.encoded(items) else {
            return ParkedSend::Written;
        };
        match write(self.inner.get_mut(), &bytes) {
            0 => ParkedSend::Unwritten,
            n if n >= bytes.len() => ParkedSend::Written,
            n => ParkedSend::Rest(bytes.slice(n..)),
        }
    }

    /// Wraps `stream`, framed by `codec`.
    pub fn new(stream: TcpStream, codec: C) -> Self {
        Self {
            inner: StreamTransport::new(Socket(Io::Live(stream)), codec),
        }
    }
}

/// A TCP socket, registered with the runtime or parked.
pub struct Socket(Io);

enum Io {
    Live(TcpStream),
    /// Not registered: the engine watches it.
    #[cfg(unix)]
    Parked(std::net::TcpStream),
    /// Lost in a failed change of registration.
    Gone,
}

impl Socket {
    fn live(&mut self) -> io::Result<&mut TcpStream> {
        match &mut self.0 {
            Io::Live(s) => Ok(s),
            #[cfg(unix)]
            Io::Parked(_) => Err(io::Error::new(io::ErrorKind::NotConnected, "socket parked")),
            Io::Gone => Err(io::Error::new(io::ErrorKind::NotConnected, "socket gone")),
        }
    }

    #[cfg(unix)]
    fn park(&mut self) -> io::Result<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match std::mem::replace(&mut self.0, Io::Gone) {
            Io::Live(s) => {
                // Non-blocking still, as the runtime left it.
                let s = s.into_std()?;
                let fd = s.as_raw_fd();
                self.0 = Io::Parked(s);
                Ok(fd)
            }
            other => {
                self.0 = other;
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "socket not live",
                ))
            }
        }
    }

    /// Parked: writes what of `bytes` the socket takes without waiting, and says how much. An
    /// error ends the writing as a full socket does: the connection's task meets it again.
    #[cfg(unix)]
    fn write_parked(&mut self, bytes: &[u8]) -> usize {
        use std::io::Write;
        let Io::Parked(s) = &mut self.0 else {
            return 0;
        };
        write_at_once(bytes, |b| s.write(b))
    }

    /// Live: writes what of `bytes` the socket takes without waiting (as far as the runtime
    /// knows it writable), and says how much; as [`write_parked`](Self::write_parked) does.
    #[cfg(unix)]
    fn write_live(&mut self, bytes: &[u8]) -> usize {
        let Io::Live(s) = &mut self.0 else {
            return 0;
        };
        write_at_once(bytes, |b| s.try_write(b))
    }

    #[cfg(unix)]
    fn unpark(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.0, Io::Gone) {
            Io::Parked(s) => {
                self.0 = Io::Live(TcpStream::from_std(s)?);
                Ok(())
            }
            other => {
                self.0 = other;
                Ok(())
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Writes what of `bytes` `write` takes before it would block (or fails), and says how much.
/// An error ends the writing as a full socket does: the connection's task meets it again.
#[cfg(unix)]
fn write_at_once(bytes: &[u8], mut write: impl FnMut(&[u8]) -> io::Result<usize>) -> usize {
    let mut written = 0;
    while let Some(left) = bytes.get(written..).filter(|l| !l.is_empty()) {
        match write(left) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    written
}

impl<C: StreamCodec> Transport for TcpTransport<C> {
    async fn recv(&mut self) -> Result<Option<Frame>> {
        self.inner.recv().await
    }

    async fn send(&mut self, items: &[Outbound]) -> Result<()> {
        self.inner.send(items).await
    }

    async fn close(&mut self, why: Closing) {
        self.inner.close(why).await;
    }

    fn can_carry(&mut self, message: &SharedMessage) -> bool {
        self.inner.can_carry(message)
    }

    fn recv_buffered(&mut self) -> Result<Option<Frame>> {
        self.inner.recv_buffered()
    }

    #[cfg(unix)]
    fn parks(&self) -> bool {
        true
    }

    #[cfg(unix)]
    fn park(&mut self) -> io::Result<Option<std::os::fd::RawFd>> {
        // Part of a frame read: not idle.
        if !self.inner.is_drained() {
            return Ok(None);
        }
        self.inner.get_mut().park().map(Some)
    }

    #[cfg(unix)]
    fn unpark(&mut self) -> io::Result<()> {
        self.inner.get_mut().unpark()
    }

    #[cfg(unix)]
    fn send_parked(&mut self, items: &[Outbound]) -> ParkedSend {
        self.send_at_once(items, Socket::write_parked)
    }

    #[cfg(unix)]
    fn send_now(&mut self, items: &[Outbound]) -> ParkedSend {
        self.send_at_once(items, Socket::write_live)
    }

    #[cfg(unix)]
    async fn send_rest(&mut self, rest: bytes::Bytes) -> Result<()> {
        self.inner.write_raw(&rest).await
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::BytesMut;
    use cim_codec_binary::BinaryCodec;
    use cim_core::Message;
    use cim_core::engine::ParkedSend;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// A connected transport and its peer, whose receive buffer is small (4 KiB).
    async fn small_reader() -> (TcpStream, TcpTransport<BinaryCodec>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let (peer, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let t = TcpTransport::new(accepted.unwrap().0, BinaryCodec::new());
        (peer.unwrap(), t)
    }

    /// `n` messages of some `size` bytes of content, their encoding appended to `expected`.
    fn messages(n: usize, size: usize, expected: &mut BytesMut) -> Vec<Outbound> {
        (0..n)
            .map(|i| {
                let frame = Frame::Message(Message {
                    content: format!("{i:05}{}", "y".repeat(size)),
                    ..Message::default()
                });
                StreamCodec::encode(&mut BinaryCodec::new(), &frame, expected).unwrap();
                Outbound::Frame(Box::new(frame))
            })
            .collect()
    }

    /// Writes `rest` with `send_rest` while `peer` reads: it reads `expected`, in order.
    async fn rest_reaches(
        t: &mut TcpTransport<BinaryCodec>,
        mut peer: TcpStream,
        rest: bytes::Bytes,
        expected: BytesMut,
    ) {
        let reader = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            peer.read_exact(&mut got).await.unwrap();
            got == expected
        });
        t.send_rest(rest).await.unwrap();
        assert!(
            reader.await.unwrap(),
            "the peer read what was encoded, in order"
        );
    }

    /// Parked, the transport writes what its socket takes at once and hands back the rest,
    /// which it writes once live again: the peer, which read nothing meanwhile, then reads every
    /// byte, in order. (6 MB in one write: more than the sockets hold, a send buffer being 4 MB
    /// at the most by default and the peer's receive buffer a few KB.)
    #[tokio::test]
    async fn a_parked_write_hands_back_what_the_socket_does_not_take() {
        let (peer, mut t) = small_reader().await;
        assert!(t.park().unwrap().is_some());
        let mut expected = BytesMut::new();
        let items = messages(100, 60_000, &mut expected);
        let rest = match t.send_parked(&items) {
            ParkedSend::Rest(rest) => rest,
            other => panic!("6 MB taken at once, or none of it: {other:?}"),
        };
        assert!(!rest.is_empty() && rest.len() < expected.len());
        t.unpark().unwrap();
        rest_reaches(&mut t, peer, rest, expected).await;
    }

    /// Live, the transport writes what its socket takes at once: a small write whole, a large
    /// one in part (the rest handed back, then nothing more while the socket is full), and a
    /// parked one nothing; the peer reads every byte, in order.
    #[tokio::test]
    async fn a_live_write_at_once_hands_back_what_the_socket_does_not_take() {
        let (peer, mut t) = small_reader().await;
        let mut expected = BytesMut::new();
        let small = messages(1, 10, &mut expected);
        assert!(matches!(t.send_now(&small), ParkedSend::Written));
        let large = messages(100, 60_000, &mut expected);
        let rest = match t.send_now(&large) {
            ParkedSend::Rest(rest) => rest,
            other => panic!("6 MB taken at once, or none of it: {other:?}"),
        };
        assert!(!rest.is_empty());
        assert!(
            matches!(t.send_now(&small), ParkedSend::Unwritten),
            "a full socket takes nothing more"
        );
        rest_reaches(&mut t, peer, rest, expected).await;
        assert!(t.park().unwrap().is_some());
        assert!(matches!(t.send_now(&small), ParkedSend::Unwritten));
    }

    /// A transport that is not parked writes nothing from `send_parked`.
    #[tokio::test]
    async fn a_live_transport_does_not_write_parked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut t = TcpTransport::new(accepted.unwrap().0, BinaryCodec::new());
        assert!(matches!(
            t.send_parked(&[Outbound::Frame(Box::new(Frame::Ping))]),
            ParkedSend::Unwritten
        ));
    }
}
