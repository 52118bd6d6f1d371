//! [`StreamTransport`]: a [`StreamCodec`] over a TCP socket.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use cim_core::engine::{Outbound, SharedMessage, Transport};
use cim_core::{CodecError, Error, Frame, Result, StreamCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::warn;

/// Bytes reserved for each read.
const READ_CHUNK: usize = 8 * 1024;

/// Frames of a [`StreamCodec`] over a TCP socket.
///
/// Idle connections hold no buffers: the read buffer is released whenever it holds no partial
/// frame, and the write buffer after every write. Everything queued is written with one
/// `write_all` per batch, and a pushed message's encoding is shared with every other connection
/// of the same wire format.
pub struct StreamTransport<C> {
    stream: TcpStream,
    codec: C,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<C: StreamCodec> StreamTransport<C> {
    /// Wraps `stream`, framed by `codec`.
    pub fn new(stream: TcpStream, codec: C) -> Self {
        Self {
            stream,
            codec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// Wraps `stream` whose first bytes, `read`, were already taken from it (by the listener,
    /// looking for something to answer before the protocol starts).
    pub fn with_read(stream: TcpStream, codec: C, read: BytesMut) -> Self {
        Self {
            rbuf: read,
            ..Self::new(stream, codec)
        }
    }

    fn encode(&mut self, item: &Outbound) -> std::result::Result<(), CodecError> {
        match item {
            Outbound::Frame(frame) => self.codec.encode(frame, &mut self.wbuf),
            Outbound::Message(shared) => match self.shared_encoding(shared) {
                Some(bytes) => {
                    self.wbuf.extend_from_slice(&bytes?);
                    Ok(())
                }
                None => self.codec.encode(shared.frame(), &mut self.wbuf),
            },
        }
    }

    /// The message's encoding shared by every connection of this wire format (borrowed from
    /// the message), or `None` for a codec without a shared encoding.
    fn shared_encoding<'a>(
        &mut self,
        shared: &'a SharedMessage,
    ) -> Option<std::result::Result<Cow<'a, Bytes>, CodecError>> {
        let format = self.codec.wire_format()?;
        let codec = &mut self.codec;
        Some(shared.encoded_ref(format, |frame| {
            let mut b = BytesMut::new();
            codec.encode(frame, &mut b)?;
            Ok(b.freeze())
        }))
    }
}

fn describe(item: &Outbound) -> String {
    match item {
        Outbound::Frame(f) => format!("{:?} frame", f.frame_type()),
        Outbound::Message(m) => format!("message {}", m.message().id),
    }
}

impl<C: StreamCodec> Transport for StreamTransport<C> {
    async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.recv_buffered()? {
                return Ok(Some(frame));
            }
            // Cancel-safe: waiting for readiness consumes nothing. (`poll_read_ready` keeps the
            // waker in tokio's registration, so the wait adds nothing to this future.)
            std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)).await?;
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) if self.rbuf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(Error::Codec(CodecError::Truncated {
                        pending: self.rbuf.len(),
                    }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv_buffered(&mut self) -> Result<Option<Frame>> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        let frame = self.codec.decode(&mut self.rbuf)?;
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        Ok(frame)
    }

    async fn send(&mut self, items: &[Outbound]) -> Result<()> {
        // One pushed message (the usual case of a fan-out): write its shared encoding as it
        // is, with no copy and no buffer.
        if let [Outbound::Message(shared)] = items
            && let Some(encoded) = self.shared_encoding(shared)
        {
            return match encoded {
                Ok(bytes) => self.stream.write_all(&bytes).await.map_err(Error::from),
                Err(e) => {
                    warn!(error = %e, "cannot encode message {}; skipped", shared.message().id);
                    Ok(())
                }
            };
        }
        for item in items {
            if let Err(e) = self.encode(item) {
                warn!(error = %e, "cannot encode {}; skipped", describe(item));
            }
        }
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.wbuf).await;
        self.wbuf = BytesMut::new();
        res.map_err(Error::from)
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
