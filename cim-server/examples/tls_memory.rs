//! What rustls keeps per server connection once the handshake is done: the buffered connection
//! (what tokio-rustls wraps) against the unbuffered one the server drives, whose buffers are
//! the caller's and released when empty.
//!
//! N connections are made in memory (a rustls client, a handshake, one 120-byte message each
//! way), the server sides are kept and the clients dropped; the process's resident memory
//! before and after, divided by N, is the figure. One variant per run, so that neither reuses
//! the other's freed memory:
//!
//! ```sh
//! cargo run --release -p cim-server --example tls_memory -- buffered 10000
//! cargo run --release -p cim-server --example tls_memory -- unbuffered 10000
//! ```

use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ClientConnection, ServerConnection};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Everything the client has to send, written out.
fn client_out(c: &mut ClientConnection) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out)?;
    }
    Ok(out)
}

fn client_in(c: &mut ClientConnection, mut bytes: &[u8]) -> anyhow::Result<()> {
    while !bytes.is_empty() {
        c.read_tls(&mut bytes)?;
        c.process_new_packets()?;
    }
    Ok(())
}

/// Runs both sides until neither has anything to send.
fn buffered_pump(c: &mut ClientConnection, s: &mut ServerConnection) -> anyhow::Result<()> {
    for _ in 0..8 {
        let mut bytes = &client_out(c)?[..];
        while !bytes.is_empty() {
            s.read_tls(&mut bytes)?;
            s.process_new_packets()?;
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out)?;
        }
        client_in(c, &out)?;
    }
    Ok(())
}

/// Feeds the client's bytes to the unbuffered server through `incoming` (the caller's buffer)
/// and its answers back; returns the plaintext the server read.
fn unbuffered_pump(
    c: &mut ClientConnection,
    s: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut plain = Vec::new();
    for _ in 0..8 {
        incoming.extend_from_slice(&client_out(c)?);
        let mut out = Vec::new();
        loop {
            let status = s.process_tls_records(incoming);
            let discard = status.discard;
            let blocked = match status.state? {
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut chunk = vec![0u8; 16 * 1024];
                    match e.encode(&mut chunk) {
                        Ok(n) => out.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                        Err(EncodeError::InsufficientSize(s)) => {
                            bail!("a handshake message of {} bytes", s.required_size)
                        }
                        Err(e) => bail!("{e}"),
                    }
                    false
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    false
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => true,
                other => bail!("unexpected state {other:?}"),
            };
            incoming.drain(..discard);
            if blocked {
                break;
            }
        }
        client_in(c, &out)?;
    }
    if incoming.is_empty() {
        *incoming = Vec::new();
    }
    Ok(plain)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "unbuffered".into());
    let n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)?,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let name = ServerName::try_from("localhost")?;
    let message = [7u8; 120];
    let mut buffered = Vec::new();
    let mut unbuffered = Vec::new();
    let before = rss()?;
    for _ in 0..n {
        let mut client = ClientConnection::new(Arc::clone(&client_config), name.clone())?;
        client.writer().write_all(&message)?;
        match variant.as_str() {
            "buffered" => {
                let mut server = Box::new(ServerConnection::new(Arc::clone(&server_config))?);
                buffered_pump(&mut client, &mut server)?;
                let mut got = [0u8; 120];
                server.reader().read_exact(&mut got)?;
                server.writer().write_all(&message)?;
                buffered_pump(&mut client, &mut server)?;
                buffered.push(server);
            }
            "unbuffered" => {
                let mut server =
                    Box::new(UnbufferedServerConnection::new(Arc::clone(&server_config))?);
                let mut incoming = Vec::new();
                let got = unbuffered_pump(&mut client, &mut server, &mut incoming)?;
                anyhow::ensure!(got.len() == message.len(), "read {} bytes", got.len());
                unbuffered.push((server, incoming));
            }
            other => bail!("{other:?}: expected buffered or unbuffered"),
        }
    }
    let after = rss()?;
    println!(
        "{variant}: {n} server connections after the handshake, {:.0} bytes each \
         (size_of: ServerConnection {}, UnbufferedServerConnection {})",
        after.saturating_sub(before) as f64 / n as f64,
        size_of::<ServerConnection>(),
        size_of::<UnbufferedServerConnection>(),
    );
    Ok(())
}
