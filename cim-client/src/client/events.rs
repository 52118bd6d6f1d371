//! [`Event`]: what happens on a client's connection; [`Events`]: the stream of them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cim_core::{Message, ReplyBody};
use tokio::sync::mpsc;

use super::Command;

/// Something that happened on the client's connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Connected and bound. `rebound` is true when this is a reconnect after an earlier bind.
    Connected {
        /// Whether the account was bound before on this client (a reconnect).
        rebound: bool,
    },
    /// A connect or bind attempt failed; the next comes after `retry_in`.
    ConnectFailed {
        /// Why.
        reason: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// A message pushed to the account.
    Message(Message),
    /// A reply that no request of this client waits for.
    Reply(ReplyBody),
    /// The account bound on another device, or an operator kicked it: the server sent the kick
    /// notice (action `999`, its content the new device's name, `admin` for an operator's kick)
    /// and closes this connection. The client does not reconnect by itself (call
    /// [`Client::resume`](super::Client::resume) to take the account back).
    Kicked(Message),
    /// The server refused the bind (`401`: a missing or wrong token) or the WebSocket
    /// handshake. The client does not reconnect by itself.
    Refused(ReplyBody),
    /// The connection closed. The client reconnects unless it was stopped, destroyed, kicked or
    /// refused.
    Closed {
        /// Why.
        reason: String,
        /// The delay before the client reconnects; `None` when it does not by itself.
        retry_in: Option<Duration>,
    },
}

/// The client's events, in order. Also a [`Stream`](futures_util::Stream).
///
/// With receipts on, a message is acknowledged to the server when it is taken from here; the
/// server keeps (and re-sends after a reconnect) any message not taken yet. Keep taking events:
/// when [`ClientConfig::event_capacity`](crate::ClientConfig::event_capacity) of them wait, the
/// client stops reading its socket.
pub struct Events {
    pub(super) rx: mpsc::Receiver<Event>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) receipts: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("waiting", &self.rx.len())
            .field("receipts", &self.receipts)
            .finish()
    }
}

impl Events {
    /// The next event; `None` once the client is destroyed.
    pub async fn recv(&mut self) -> Option<Event> {
        let e = self.rx.recv().await;
        self.taken(e)
    }

    fn taken(&self, e: Option<Event>) -> Option<Event> {
        if self.receipts
            && let Some(Event::Message(m)) = &e
        {
            let _ = self.commands.send(Command::Ack(m.id));
        }
        e
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(e) => Poll::Ready(self.taken(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
