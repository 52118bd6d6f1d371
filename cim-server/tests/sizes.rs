//! Sizes every idle connection pays for, guarded: a change that makes one larger fails here, and
//! must say why in the figure it updates (BENCHMARKS.md has the idle memory they add up to).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use cim_codec_binary::BinaryCodec;
use cim_core::engine::{ConnectionConfig, serve_connection};
use cim_core::{Hub, Session};
use cim_server::transport::StreamTransport;
use tokio::net::{TcpListener, TcpStream};

/// The task of a TCP connection: its whole state while it runs (and while it idles, until it
/// parks: a parked one keeps the connection's state without the task's own). 360 bytes — the
/// frame read is boxed at once, requests and the write path run in boxed futures, the
/// heartbeat's deadline waits in the node's shared timer, the read buffer is released when
/// empty, a write's buffer is the write's own, and the listener's settings are shared. (With
/// tokio's header and trailer, a task cell of 512 bytes.)
#[tokio::test]
async fn a_tcp_connection_task_is_360_bytes() {
    let hub = Arc::new(Hub::builder().build());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let transport = StreamTransport::new(stream, BinaryCodec::new());
    assert_eq!(std::mem::size_of_val(&transport), 80);
    let task = serve_connection(
        hub,
        transport,
        ConnectionConfig::default(),
        "127.0.0.1:1".parse().unwrap(),
    );
    assert_eq!(std::mem::size_of_val(&task), 360);
    // The transport of the listeners' TCP connections, which can park: the same size.
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let parkable = cim_server::transport::TcpTransport::new(stream, BinaryCodec::new());
    assert_eq!(std::mem::size_of_val(&parkable), 80);
}

/// A bound connection's session (shared by its task and the session manager): ten
/// `EcoString`s of 16 bytes (a value of up to 15 bytes inline: no allocation for an account, a
/// terminal type, an IPv4 peer) and three words. 184 bytes, and with the `Arc`'s two counts a
/// 224-byte allocation (with a `String` each, 264 and 320).
#[test]
fn a_session_is_184_bytes() {
    assert_eq!(std::mem::size_of::<Session>(), 184);
}

/// The task of a TCP connection over TLS: the plain one plus the TLS stream's fields (the
/// socket, the boxed rustls connection, three buffers released when empty, two offsets and two
/// flags). rustls's own state is on the heap, behind the box: `tls_memory` measures it.
#[tokio::test]
async fn a_tls_connection_task_is_the_plain_one_plus_the_stream() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), stream)
            .await
            .unwrap()
    };
    let accept = async {
        let (stream, _) = listener.accept().await.unwrap();
        cim_server::tls::accept(stream, Arc::new(server))
            .await
            .unwrap()
    };
    let (_client, stream) = tokio::join!(connect, accept);
    let transport = StreamTransport::new(stream, BinaryCodec::new());
    assert_eq!(std::mem::size_of_val(&transport), 184);
    let task = serve_connection(
        Arc::new(Hub::builder().build()),
        transport,
        ConnectionConfig::default(),
        "127.0.0.1:1".parse().unwrap(),
    );
    assert_eq!(std::mem::size_of_val(&task), 464);
}
