//! [`FramedIo`]: the socket of one HTTP connection as hyper sees it. Bytes reach hyper only
//! once the [`Framer`] has passed them, so every request head hyper parses has been checked;
//! a head the framer refuses is answered with a JSON error when hyper closes the connection
//! (after answering the requests before it), which the connection's task asks it to do when
//! [`FramedIo::new`]'s receiver fires.
//!
//! Closing with request bytes unread makes the kernel reset the connection, and a reset can
//! destroy the answer before the client reads it. So a connection closed with a request
//! unfinished (refused, timed out, too large) lingers after its answer: its write side is shut
//! down, and what the client still sends is read and dropped until it closes, or for at most
//! the linger time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tracing::debug;

use super::error::error_response_bytes;
use super::framing::{Framer, HeadLimits, Step};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Where the close of the connection is.
enum Closing {
    /// Not closing.
    Open,
    /// Writing the answer to a refused head.
    Answer(Bytes),
    /// Shutting the write side down.
    Shutdown,
    /// Reading and dropping what the client still sends.
    Linger(Pin<Box<Sleep>>),
    /// Closed.
    Done,
}

/// One HTTP connection's socket, framed. See the module docs.
pub struct FramedIo {
    stream: TcpStream,
    framer: Framer,
    /// Received and not yet given to hyper.
    pending: BytesMut,
    /// Bytes at the front of `pending` that hyper may have.
    passed: usize,
    /// The framer refused a head or stopped: nothing more goes to hyper.
    halted: bool,
    /// The client's end of the stream was read.
    eof: bool,
    /// The answer to a refused head, written when hyper closes the connection.
    refusal: Option<Bytes>,
    on_refusal: Option<oneshot::Sender<()>>,
    linger: Duration,
    closing: Closing,
}

impl FramedIo {
    /// Frames `stream`; the receiver fires when a head is refused (the connection should then
    /// be shut down gracefully, so that hyper finishes what it has and closes).
    pub fn new(
        stream: TcpStream,
        limits: HeadLimits,
        linger: Duration,
    ) -> (FramedIo, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let io = FramedIo {
            stream,
            framer: Framer::new(limits),
            pending: BytesMut::new(),
            passed: 0,
            halted: false,
            eof: false,
            refusal: None,
            on_refusal: Some(tx),
            linger,
            closing: Closing::Open,
        };
        (io, rx)
    }

    fn should_linger(&self, answered: bool) -> bool {
        !self.eof && (answered || self.framer.in_body() || !self.pending.is_empty())
    }
}

impl AsyncRead for FramedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.passed > 0 {
                let n = this.passed.min(dst.remaining());
                // Copied and advanced past, not split off: a split would share the buffer
                // (an allocation) only to drop the part at once.
                dst.put_slice(this.pending.get(..n).unwrap_or_default());
                this.pending.advance(n);
                this.passed -= n;
                return Poll::Ready(Ok(()));
            }
            if this.halted {
                // The connection's task shuts hyper down; it reads nothing more.
                return Poll::Pending;
            }
            match this.framer.step(&this.pending) {
                Step::Pass(n) => this.passed = n,
                Step::Skip(n) => this.pending.advance(n),
                Step::Refuse(refusal) => {
                    debug!(status = refusal.status.as_u16(), reason = %refusal.reason, "http request refused");
                    this.refusal = Some(error_response_bytes(refusal.status, &refusal.reason));
                    this.halted = true;
                    if let Some(tx) = this.on_refusal.take() {
                        let _ = tx.send(());
                    }
                    return Poll::Pending;
                }
                Step::Stop => {
                    this.halted = true;
                    return Poll::Pending;
                }
                Step::More => {
                    if this.eof {
                        return Poll::Ready(Ok(()));
                    }
                    // Uninitialised: zeroing 8 KiB per poll is work no byte needs.
                    let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
                    let mut buf = ReadBuf::uninit(&mut chunk);
                    ready!(Pin::new(&mut this.stream).poll_read(cx, &mut buf))?;
                    if buf.filled().is_empty() {
                        this.eof = true;
                    }
                    this.pending.extend_from_slice(buf.filled());
                }
            }
        }
    }
}

impl AsyncWrite for FramedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    this.closing = match this.refusal.take() {
                        Some(answer) => Closing::Answer(answer),
                        None => Closing::Shutdown,
                    };
                }
                Closing::Answer(answer) => {
                    while !answer.is_empty() {
                        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, answer))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        answer.advance(n);
                    }
                    ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                    this.closing = if this.should_linger(true) {
                        Closing::Linger(Box::pin(tokio::time::sleep(this.linger)))
                    } else {
                        Closing::Done
                    };
                }
                Closing::Shutdown => {
                    ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                    this.closing = if this.should_linger(false) {
                        Closing::Linger(Box::pin(tokio::time::sleep(this.linger)))
                    } else {
                        Closing::Done
                    };
                }
                Closing::Linger(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Done;
                        continue;
                    }
                    // Uninitialised: zeroing 8 KiB per poll is work no byte needs.
                    let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
                    let mut buf = ReadBuf::uninit(&mut chunk);
                    match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                        Poll::Ready(_) => this.closing = Closing::Done,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
