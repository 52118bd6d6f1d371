//! The Flash policy answer of an XML listener (`xml.flash_policy`): the first bytes of each
//! connection are read here, before the connection engine sees them. A Flash client's
//! `<policy-file-request/>` gets the policy document and the connection is closed; anything
//! else goes on, with the bytes already read, to the XML protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use cim_codec_xml::{FLASH_POLICY_ANSWER, PolicyProbe, XmlCodec, probe_flash_policy};
use cim_core::Hub;
use cim_core::engine::{ConnectionConfig, serve_connection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info};

use crate::transport::StreamTransport;

/// What the first bytes of a connection led to.
enum First {
    /// The policy request was answered; the connection is done.
    Answered,
    /// The peer left, or said nothing decisive within the bind timeout.
    Gone(&'static str),
    /// The protocol: these bytes were read and belong to it.
    Protocol(BytesMut),
}

/// Reads until the first bytes are the policy request or cannot become it. The wait is bounded
/// by the bind timeout (a connection that says nothing in that time would be closed anyway),
/// and the bytes held by the request's length plus one read.
async fn first_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    conf: &ConnectionConfig,
) -> std::io::Result<First> {
    let deadline = Instant::now() + conf.timers.bind_timeout;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match probe_flash_policy(&buf) {
            PolicyProbe::Other => return Ok(First::Protocol(buf)),
            PolicyProbe::Request => {
                let answer = async {
                    stream.write_all(FLASH_POLICY_ANSWER).await?;
                    stream.shutdown().await
                };
                timeout(conf.write_timeout, answer)
                    .await
                    .map_err(|_| std::io::ErrorKind::TimedOut)??;
                return Ok(First::Answered);
            }
            PolicyProbe::Undecided => {}
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Ok(First::Gone("nothing sent within the bind timeout")),
            Ok(Ok(0)) => return Ok(First::Gone("closed before sending anything")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
    }
}

/// Starts the task of one XML connection that may be a Flash policy request.
pub(crate) fn spawn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    hub: Arc<Hub>,
    mut stream: S,
    codec: XmlCodec,
    conf: ConnectionConfig,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        match first_bytes(&mut stream, &conf).await {
            Ok(First::Protocol(read)) => {
                let transport = StreamTransport::with_read(stream, codec, read);
                serve_connection(hub, transport, conf, peer).await;
            }
            Ok(First::Answered) => info!(%peer, "flash policy request answered"),
            Ok(First::Gone(why)) => debug!(%peer, why, "xml connection closed"),
            Err(e) => debug!(%peer, error = %e, "xml connection failed before its first document"),
        }
        drop(permit);
    });
}
