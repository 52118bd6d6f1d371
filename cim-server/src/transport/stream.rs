//! [`StreamTransport`]: a [`StreamCodec`] over any byte stream (TCP, TLS, …).

use std::borrow::Cow;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use cim_core::engine::{Closing, Outbound, SharedMessage, Transport};
use cim_core::{CodecError, Error, Frame, Result, StreamCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::warn;

/// Bytes read at once when nothing is buffered. They are read into the stack of the polling
/// thread, not into the connection's own memory, and only what makes no whole frame yet is
/// kept: so an idle connection holds no read buffer, whatever the stream.
const READ_CHUNK: usize = 8 * 1024;

/// Frames of a [`StreamCodec`] over a byte stream `S`: a `TcpStream`, a TLS stream, anything
/// `AsyncRead + AsyncWrite + Unpin`.
///
/// Idle connections hold no buffers: a read waits with none (it polls the stream with a buffer
/// on the stack, and keeps only bytes of a frame not yet whole), and a write's buffer is the
/// write's own. Everything queued is written with one `write_all` per batch, and
/// a pushed message's encoding is shared with every other connection of the same wire format.
pub struct StreamTransport<S, C> {
    stream: S,
    codec: C,
    rbuf: BytesMut,
}

impl<S, C: StreamCodec> StreamTransport<S, C> {
    /// Wraps `stream`, framed by `codec`.
    pub fn new(stream: S, codec: C) -> Self {
        Self {
            stream,
            codec,
            rbuf: BytesMut::new(),
        }
    }

    /// Wraps `stream` whose first bytes, `read`, were already taken from it (by the listener,
    /// looking for something to answer before the protocol starts).
    pub fn with_read(stream: S, codec: C, read: BytesMut) -> Self {
        Self {
            rbuf: read,
            ..Self::new(stream, codec)
        }
    }

    /// The stream, for what the transport does not do itself (peer certificates, say).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    #[cfg(unix)]
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Whether no part of a frame is buffered.
    #[cfg(unix)]
    pub(crate) fn is_drained(&self) -> bool {
        self.rbuf.is_empty()
    }

    fn encode(
        &mut self,
        item: &Outbound,
        out: &mut BytesMut,
    ) -> std::result::Result<(), CodecError> {
        match item {
            Outbound::Frame(frame) => self.codec.encode(frame, out),
            Outbound::Message(shared) => match self.shared_encoding(shared) {
                Some(bytes) => {
                    out.extend_from_slice(&bytes?);
                    Ok(())
                }
                None => self.codec.encode(shared.frame(), out),
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

impl<S, C: StreamCodec> StreamTransport<S, C> {
    /// `items` encoded for one write, `None` when there is nothing to write. One pushed message
    /// (the usual case of a fan-out) is its shared encoding as it is, with no copy and no
    /// buffer; several are encoded into a buffer of the write's own, not the connection's. An
    /// item that cannot be encoded is skipped with a warning.
    pub(crate) fn encoded(&mut self, items: &[Outbound]) -> Option<Bytes> {
        if let [Outbound::Message(shared)] = items
            && let Some(encoded) = self.shared_encoding(shared)
        {
            return match encoded {
                Ok(bytes) => Some(bytes.into_owned()),
                Err(e) => {
                    warn!(error = %e, "cannot encode message {}; skipped", shared.message().id);
                    None
                }
            };
        }
        // Sized once for the whole write: grown an item at a time, a burst's buffer was copied
        // over and over (the publisher's replies, a batch of pushes).
        let mut out = BytesMut::with_capacity(self.write_len(items));
        for item in items {
            if let Err(e) = self.encode(item, &mut out) {
                warn!(error = %e, "cannot encode {}; skipped", describe(item));
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}

/// What a frame other than a pushed message (a reply, mostly) is expected to take in a write,
/// for sizing the write's buffer: a `client_message` reply takes some 60 bytes.
const FRAME_LEN_HINT: usize = 64;

impl<S, C: StreamCodec> StreamTransport<S, C> {
    /// About how many bytes `items` encode to: a pushed message's shared encoding as it is, a
    /// frame [`FRAME_LEN_HINT`].
    fn write_len(&mut self, items: &[Outbound]) -> usize {
        items
            .iter()
            .map(|item| match item {
                Outbound::Message(shared) => match self.shared_encoding(shared) {
                    Some(Ok(bytes)) => bytes.len(),
                    _ => FRAME_LEN_HINT,
                },
                Outbound::Frame(_) => FRAME_LEN_HINT,
            })
            .sum()
    }
}

impl<S: AsyncWrite + Unpin, C> StreamTransport<S, C> {
    /// Writes `bytes` as they are, then flushes.
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await.map_err(Error::from)
    }
}

impl<S: AsyncRead + Unpin, C> StreamTransport<S, C> {
    /// Reads what the stream has into the read buffer; `Ok(0)` at its end. Cancel-safe: a read
    /// that is not ready consumes nothing.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if !self.rbuf.is_empty() {
            // Part of a frame is here and the rest is expected soon: read straight into the
            // connection's buffer.
            self.rbuf.reserve(READ_CHUNK);
            return self.stream.read_buf(&mut self.rbuf).await;
        }
        std::future::poll_fn(|cx| {
            // Uninitialised: a connection woken for a write polls its read too, and zeroing
            // 8 KiB each time cost a third of the push path's instructions.
            let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            Pin::new(&mut self.stream)
                .poll_read(cx, &mut buf)
                .map_ok(|()| {
                    self.rbuf.extend_from_slice(buf.filled());
                    buf.filled().len()
                })
        })
        .await
    }
}

impl<S, C> Transport for StreamTransport<S, C>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: StreamCodec,
{
    async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.recv_buffered()? {
                return Ok(Some(frame));
            }
            // Cancel-safe: a read that is not ready consumes nothing, and one that is ready
            // moves its bytes into the read buffer before returning.
            match self.fill().await? {
                0 if self.rbuf.is_empty() => return Ok(None),
                0 => {
                    return Err(Error::Codec(CodecError::Truncated {
                        pending: self.rbuf.len(),
                    }));
                }
                _ => {}
            }
        }
    }

    fn can_carry(&mut self, message: &SharedMessage) -> bool {
        match self.shared_encoding(message) {
            Some(encoded) => encoded.is_ok(),
            None => self
                .codec
                .encode(message.frame(), &mut BytesMut::new())
                .is_ok(),
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
        match self.encoded(items) {
            Some(bytes) => self.write_raw(&bytes).await,
            None => Ok(()),
        }
    }

    async fn close(&mut self, _: Closing) {
        let _ = self.stream.shutdown().await;
    }
}

fn describe(item: &Outbound) -> String {
    match item {
        Outbound::Frame(f) => format!("{:?} frame", f.frame_type()),
        Outbound::Message(m) => format!("message {}", m.message().id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_codec_binary::BinaryCodec;
    use cim_core::{Message, ReplyBody};
    use std::sync::Arc;

    /// A write of pushed messages and replies is the items' encodings one after the other, in a
    /// buffer sized for it at once (a message's share exactly, a reply's by the hint).
    #[test]
    fn a_burst_is_encoded_into_one_buffer_sized_for_it() {
        let mut t = StreamTransport::new((), BinaryCodec::default());
        let pushed = |content: &str| {
            Outbound::Message(Arc::new(SharedMessage::new(Message {
                id: 7,
                receiver: "u1".into(),
                content: content.into(),
                ..Message::default()
            })))
        };
        let reply = || Outbound::Frame(Box::new(Frame::Reply(ReplyBody::ok("client_message"))));
        let items = vec![pushed("a"), reply(), pushed(&"b".repeat(300)), reply()];

        let mut one_by_one = Vec::new();
        for item in &items {
            let mut b = BytesMut::new();
            t.encode(item, &mut b).unwrap();
            one_by_one.extend_from_slice(&b);
        }
        let messages: usize = [&items[0], &items[2]]
            .iter()
            .map(|i| match i {
                Outbound::Message(m) => t.shared_encoding(m).unwrap().unwrap().len(),
                Outbound::Frame(_) => unreachable!(),
            })
            .sum();
        assert_eq!(t.write_len(&items), messages + 2 * FRAME_LEN_HINT);
        assert_eq!(t.encoded(&items).unwrap(), one_by_one);
    }
}
