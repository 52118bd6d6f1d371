//! Sizes every idle connection pays for, guarded: a change that makes one larger fails here, and
//! must say why in the figure it updates (BENCHMARKS.md has the idle memory they add up to).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use cim_codec_binary::BinaryCodec;
use cim_core::engine::{ConnectionConfig, serve_connection};
use cim_core::{Hub, Session};
use cim_server::transport::StreamTransport;
use tokio::net::{TcpListener, TcpStream};

/// The task of a TCP connection: its whole state while it idles. 448 bytes — the frame read is
/// boxed at once, requests and the write path run in boxed futures, the heartbeat's deadline
/// waits in the node's shared timer, and the read and write buffers are released when empty.
#[tokio::test]
async fn a_tcp_connection_task_is_448_bytes() {
    let hub = Arc::new(Hub::builder().build());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let transport = StreamTransport::new(stream, BinaryCodec::new());
    assert_eq!(std::mem::size_of_val(&transport), 112);
    let task = serve_connection(
        hub,
        transport,
        ConnectionConfig::default(),
        "127.0.0.1:1".parse().unwrap(),
    );
    assert_eq!(std::mem::size_of_val(&task), 448);
}

/// A bound connection's session (shared by its task and the session manager): ten strings (the
/// protocol's a borrowed `'static` name, allocated for none) and three words. 264 bytes.
#[test]
fn a_session_is_264_bytes() {
    assert_eq!(std::mem::size_of::<Session>(), 264);
}
