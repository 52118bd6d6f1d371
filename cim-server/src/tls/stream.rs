//! [`TlsStream`]: the server side of a TLS connection over any byte stream, on rustls's
//! unbuffered connection.
//!
//! rustls's buffered connection (what tokio-rustls wraps) keeps a 4 KiB read buffer for the
//! connection's whole life, even when nothing is in it. Here the stream owns the buffers: bytes
//! are read into the reader's own buffer when none are pending, only a record not yet whole is
//! kept, and ciphertext waiting to be written is dropped once written. An idle connection holds
//! rustls's state (keys, the key schedule) and no buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once while a record is incomplete.
const READ_CHUNK: usize = 8 * 1024;

/// The most ciphertext a handshake may leave unprocessed: a flight larger than this is refused.
const MAX_PENDING: usize = 64 * 1024;

/// Plaintext encrypted per write: at most four full records, so one write's ciphertext is
/// bounded whatever the caller hands over.
const MAX_WRITE: usize = 4 * 16 * 1024;

/// Record overhead allowed per record when sizing the ciphertext of a write (TLS 1.2 AES-GCM,
/// the largest of the suites offered, needs 29 bytes).
const RECORD_OVERHEAD: usize = 64;

/// A TLS connection, server side, over `S`.
pub struct TlsStream<S> {
    io: S,
    /// rustls's state, boxed: the connection task stays small, whatever rustls holds.
    conn: Box<UnbufferedServerConnection>,
    /// Ciphertext read and not processed yet (part of a record); unallocated when empty.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext not written yet, from `out_at` on; unallocated when empty.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer ended its side (close_notify, or the end of the stream).
    read_closed: bool,
    /// Our close_notify is queued.
    write_closed: bool,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.out_at))
            .finish_non_exhaustive()
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn other_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What processing the ciphertext read so far led to.
enum Step {
    /// Plaintext is ready (in the reader's buffer or in `plain`).
    Data,
    /// Records were handled with no plaintext (handshake or control messages): go on.
    Again,
    /// Nothing more can be done without more ciphertext.
    NeedMore,
    /// The peer sent close_notify.
    Closed,
}

/// Appends the handshake or alert bytes of `encode` to `outgoing`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    let need = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(other_error(e)),
    };
    let start = outgoing.len();
    outgoing.resize(start + need, 0);
    let slot = outgoing.get_mut(start..).unwrap_or_default();
    let n = encode.encode(slot).map_err(other_error)?;
    outgoing.truncate(start + n);
    Ok(())
}

/// Takes up to what `buf` has room for from `bytes`, and keeps the rest in `plain`.
fn deliver(bytes: &[u8], buf: &mut ReadBuf<'_>, plain: &mut Vec<u8>) {
    let n = bytes.len().min(buf.remaining());
    let (now, later) = bytes.split_at(n);
    buf.put_slice(now);
    plain.extend_from_slice(later);
}

impl<S> TlsStream<S> {
    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Handles the records read so far, until plaintext is ready or more ciphertext is needed.
    fn process(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<Step> {
        let Self {
            conn,
            incoming,
            plain,
            outgoing,
            ..
        } = self;
        let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
        let step = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    deliver(record.map_err(tls_error)?.payload, buf, plain);
                }
                Step::Data
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, outgoing)?;
                Step::Again
            }
            // The bytes are in `outgoing`, which is written before anything is read.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Step::Again
            }
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => Step::NeedMore,
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
            ConnectionState::ReadEarlyData(_) => {
                return Err(other_error("early data, which this server does not take"));
            }
            other => return Err(other_error(format!("unexpected TLS state {other:?}"))),
        };
        incoming.drain(..discard.min(incoming.len()));
        if incoming.is_empty() && incoming.capacity() > 0 {
            *incoming = Vec::new();
        }
        Ok(step)
    }

    /// Makes room and queues `data` encrypted, or, with `data` `None`, our close_notify.
    fn encrypt(&mut self, data: Option<&[u8]>) -> io::Result<()> {
        loop {
            let Self {
                conn,
                plain,
                outgoing,
                read_closed,
                ..
            } = self;
            let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut write) => {
                    let len = data.map_or(0, <[u8]>::len);
                    let mut need = len + RECORD_OVERHEAD * (len / (16 * 1024) + 2);
                    loop {
                        let start = outgoing.len();
                        outgoing.resize(start + need, 0);
                        let slot = outgoing.get_mut(start..).unwrap_or_default();
                        let res = match data {
                            Some(data) => write.encrypt(data, slot),
                            None => write.queue_close_notify(slot),
                        };
                        match res {
                            Ok(n) => {
                                outgoing.truncate(start + n);
                                return Ok(());
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => {
                                outgoing.truncate(start);
                                need = required_size;
                            }
                            Err(e) => {
                                outgoing.truncate(start);
                                return Err(other_error(e));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, outgoing)?,
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::ReadTraffic(mut records) => {
                    // Plaintext the reader has not seen: keep it for the reader.
                    while let Some(record) = records.next_record() {
                        plain.extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                }
                ConnectionState::PeerClosed => *read_closed = true,
                ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    ));
                }
                other => return Err(other_error(format!("cannot write in TLS state {other:?}"))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes the queued ciphertext; the buffer is released once it is all written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.outgoing.get(self.out_at..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext: into the reader's own buffer when nothing is pending (so an idle
    /// connection waits with no buffer of its own), else after the partial record. `Ok(0)` at
    /// the end of the stream.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.incoming.is_empty() && buf.remaining() > 0 {
            // The reader's buffer only lends its room: what it holds is unchanged.
            let mut scratch = buf.take(buf.remaining());
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut scratch))?;
            let read = scratch.filled();
            self.incoming.extend_from_slice(read);
            return Poll::Ready(Ok(read.len()));
        }
        if self.incoming.len() >= MAX_PENDING {
            return Poll::Ready(Err(other_error("a TLS record larger than allowed")));
        }
        let start = self.incoming.len();
        self.incoming.resize(start + READ_CHUNK, 0);
        let mut room = ReadBuf::new(self.incoming.get_mut(start..).unwrap_or_default());
        let res = Pin::new(&mut self.io).poll_read(cx, &mut room);
        let n = room.filled().len();
        self.incoming.truncate(start + n);
        ready!(res)?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Answers rustls owes the peer (a key update, an alert) go out as soon as they can.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            if let Some(rest) = this.plain.get(this.plain_at..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                this.plain_at += n;
                if this.plain_at >= this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match this.process(buf)? {
                Step::Data if buf.filled().len() > before || !this.plain.is_empty() => {
                    return Poll::Ready(Ok(()));
                }
                Step::Data | Step::Again => continue,
                Step::Closed => this.read_closed = true,
                Step::NeedMore => {
                    if ready!(this.poll_fill(cx, buf))? == 0 {
                        this.read_closed = true;
                        if !this.incoming.is_empty() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the connection ended inside a TLS record",
                            )));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One batch of ciphertext at a time: what was queued goes out before more is taken.
        ready!(this.poll_write_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = data.get(..MAX_WRITE).unwrap_or(data);
        this.encrypt(Some(data))?;
        // Written now if the socket takes it; otherwise by the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            // A connection rustls already closed has nothing more to say.
            let _ = this.encrypt(None);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Performs the server side of a TLS handshake on `io`. The caller bounds the time it may take.
/// On a failure, the alert rustls has for the peer is sent (when the socket takes it at once)
/// and the error says what went wrong.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream<S>> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn: Box::new(conn),
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        read_closed: false,
        write_closed: false,
    };
    match handshake(&mut stream).await {
        Ok(()) => {
            if stream.incoming.is_empty() {
                stream.incoming = Vec::new();
            } else {
                stream.incoming.shrink_to_fit();
            }
            Ok(stream)
        }
        Err(e) => {
            send_alert(&mut stream);
            Err(e)
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut TlsStream<S>) -> io::Result<()> {
    enum Next {
        Process,
        Transmit,
        Read,
        Writable,
        Done,
    }
    loop {
        let TlsStream {
            conn,
            incoming,
            outgoing,
            ..
        } = s;
        let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
        let next = match state.map_err(tls_error)? {
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, outgoing)?;
                Next::Process
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                Next::Transmit
            }
            ConnectionState::BlockedHandshake => Next::Read,
            // A TLS 1.3 server may write before the client's Finished: the handshake is done
            // only once both directions are open.
            ConnectionState::WriteTraffic(_) => Next::Writable,
            // The client's first records came with its Finished: they wait in rustls for the
            // first read.
            ConnectionState::ReadTraffic(_) => Next::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed during the TLS handshake",
                ));
            }
            other => {
                return Err(other_error(format!(
                    "unexpected TLS state {other:?} in the handshake"
                )));
            }
        };
        incoming.drain(..discard.min(incoming.len()));
        let next = match next {
            Next::Writable if s.conn.is_handshaking() => Next::Read,
            Next::Writable => Next::Done,
            other => other,
        };
        match next {
            Next::Process | Next::Writable => {}
            Next::Transmit => std::future::poll_fn(|cx| s.poll_write_out(cx)).await?,
            Next::Done => {
                // Whatever is still queued (session tickets) goes out before the first write.
                std::future::poll_fn(|cx| s.poll_write_out(cx)).await?;
                return Ok(());
            }
            Next::Read => {
                if s.incoming.len() >= MAX_PENDING {
                    return Err(other_error("a TLS handshake flight larger than 64 KiB"));
                }
                let n = std::future::poll_fn(|cx| {
                    let start = s.incoming.len();
                    s.incoming.resize(start + READ_CHUNK, 0);
                    let mut room = ReadBuf::new(s.incoming.get_mut(start..).unwrap_or_default());
                    let res = Pin::new(&mut s.io).poll_read(cx, &mut room);
                    let n = room.filled().len();
                    s.incoming.truncate(start + n);
                    res.map_ok(|()| n)
                })
                .await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    ));
                }
            }
        }
    }
}

/// After a failed handshake: the alert rustls queued for the peer, written if the socket takes
/// it at once (the connection is dropped next either way).
fn send_alert<S: AsyncRead + AsyncWrite + Unpin>(s: &mut TlsStream<S>) {
    let TlsStream { conn, outgoing, .. } = s;
    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state
        && encode_into(&mut encode, outgoing).is_ok()
    {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let _ = s.poll_write_out(&mut cx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    struct Pair {
        server: TlsStream<DuplexStream>,
        client: tokio_rustls::client::TlsStream<DuplexStream>,
    }

    async fn pair() -> Pair {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) =
            tokio::join!(accept(a, Arc::new(server)), connector.connect(name, b));
        Pair {
            server: server.unwrap(),
            client: client.unwrap(),
        }
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_idle_buffers_are_released() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        client.write_all(b"hello server").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 12];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello server");
        server.write_all(b"hello client").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0u8; 12];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello client");
        assert_eq!(server.incoming.capacity(), 0);
        assert_eq!(server.outgoing.capacity(), 0);
        assert_eq!(server.plain.capacity(), 0);
    }

    #[tokio::test]
    async fn large_writes_and_many_small_records_arrive_whole() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&big).await.unwrap();
            for i in 0..1000u32 {
                server.write_all(&i.to_le_bytes()).await.unwrap();
            }
            server.shutdown().await.unwrap();
            server
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len() + 4000);
        assert_eq!(&got[..expected.len()], &expected[..]);
        for (i, chunk) in got[expected.len()..].chunks(4).enumerate() {
            assert_eq!(chunk, (i as u32).to_le_bytes());
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_small_read_buffer_takes_a_record_in_pieces() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 7];
        loop {
            let n = server.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, data);
    }
}
