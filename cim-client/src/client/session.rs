//! A bound connection: binding, requests and replies, receipts, pushed messages, PINGs.

use std::sync::atomic::Ordering;

use cim_core::Frame;
use cim_core::SentBody;
use cim_core::protocol::{action, code, key};
use tracing::debug;

use super::pending::Pending;
use super::task::{End, Task};
use super::{Command, Event};
use crate::config::Endpoint;
use crate::error::{ClientError, Result};
use crate::transport::Conn;

impl Task {
    /// Connects to `endpoint` and binds.
    pub(super) async fn connect(&mut self, endpoint: &Endpoint) -> Result<Conn> {
        let mut conn = Conn::connect(endpoint, &self.config).await?;
        let bind = self.config.bind.request(self.config.receipts);
        conn.send(&Frame::Sent(bind)).await?;
        loop {
            match conn.recv().await? {
                None => {
                    return Err(ClientError::Protocol(
                        "the server closed the connection before the bind reply".into(),
                    ));
                }
                Some(Frame::Ping) => conn.send(&Frame::Pong).await?,
                Some(Frame::Reply(r)) if r.key == key::CLIENT_BIND => {
                    return if r.code == code::OK {
                        Ok(conn)
                    } else {
                        conn.close().await;
                        Err(ClientError::Refused(r))
                    };
                }
                Some(Frame::Reply(r)) if r.key == key::CLIENT_HANDSHAKE => {
                    conn.close().await;
                    return Err(ClientError::Refused(r));
                }
                Some(other) => {
                    debug!(?other, "before the bind reply; ignored");
                }
            }
        }
    }

    /// Runs a bound connection until it ends.
    pub(super) async fn session(&mut self, mut conn: Conn) -> End {
        let mut pending = Pending::default();
        let mut ack: Option<i64> = None;
        let end = loop {
            tokio::select! {
                biased;
                cmd = self.next_command() => match cmd {
                    None => break End::Abandoned,
                    Some(Command::Request { mut body, reply }) => {
                        if body.timestamp == 0 {
                            body.timestamp = cim_core::now_ms();
                        }
                        pending.add(&mut body, reply);
                        if let Err(e) = conn.send(&Frame::Sent(body)).await {
                            break End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Command::Ack(id)) => ack = Some(id),
                    Some(Command::Stop(done)) => {
                        let _ = self.flush_ack(&mut conn, &mut ack).await;
                        break End::Stopped(done);
                    }
                    Some(Command::Resume) => {}
                    Some(Command::Destroy(done)) => {
                        let _ = self.flush_ack(&mut conn, &mut ack).await;
                        break End::Destroyed(done);
                    }
                },
                frame = conn.recv() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.on_frame(&mut conn, &mut pending, frame).await {
                            break end;
                        }
                    }
                    Ok(None) => break End::Lost("closed by the server".into()),
                    Err(e) => break End::Lost(e.to_string()),
                },
                // Only when nothing else is ready: one receipt covers every message taken so far.
                () = std::future::ready(()), if ack.is_some() => {
                    if let Err(e) = self.flush_ack(&mut conn, &mut ack).await {
                        break End::Lost(format!("write failed: {e}"));
                    }
                }
            }
        };
        pending.fail_all();
        conn.close().await;
        end
    }

    async fn flush_ack(&self, conn: &mut Conn, ack: &mut Option<i64>) -> Result<()> {
        let Some(id) = ack.take() else {
            return Ok(());
        };
        let body = SentBody::new(key::CLIENT_ACK).with("id", id.to_string());
        conn.send(&Frame::Sent(body)).await
    }

    async fn on_frame(
        &mut self,
        conn: &mut Conn,
        pending: &mut Pending,
        frame: Frame,
    ) -> Option<End> {
        match frame {
            Frame::Ping => {
                if let Err(e) = conn.send(&Frame::Pong).await {
                    return Some(End::Lost(format!("write failed: {e}")));
                }
            }
            Frame::Message(m) if m.action == action::KICK => return Some(End::Kicked(m)),
            Frame::Message(m) => {
                if self.seen.first_time(m.id) {
                    self.emit(Event::Message(m)).await;
                } else {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(id = m.id, "a message seen before; dropped");
                }
            }
            Frame::Reply(r) if r.key == key::CLIENT_HANDSHAKE && r.code != code::OK => {
                return Some(End::Refused(r));
            }
            Frame::Reply(r) => {
                if let Some(r) = pending.answer(r) {
                    // The server's answers to receipts are of no interest.
                    if r.key != key::CLIENT_ACK {
                        self.emit(Event::Reply(r)).await;
                    }
                }
            }
            Frame::Pong | Frame::Sent(_) => {
                return Some(End::Lost(format!(
                    "the server sent a {:?} frame",
                    frame.frame_type()
                )));
            }
        }
        None
    }
}
