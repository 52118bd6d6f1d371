//! [`Frame`]: one unit of the protocol, whatever the codec.

use crate::message::{Message, ReplyBody, SentBody};

/// One protocol packet: a heartbeat, a pushed message, a request or a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Heartbeat answer, client to server.
    Pong,
    /// Heartbeat request, server to client.
    Ping,
    /// A pushed message, server to client.
    Message(Message),
    /// A request, client to server.
    Sent(SentBody),
    /// A reply, server to client.
    Reply(ReplyBody),
}

impl Frame {
    /// This frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Pong => FrameType::Pong,
            Frame::Ping => FrameType::Ping,
            Frame::Message(_) => FrameType::Message,
            Frame::Sent(_) => FrameType::Sent,
            Frame::Reply(_) => FrameType::Reply,
        }
    }
}

impl From<Message> for Frame {
    fn from(m: Message) -> Self {
        Frame::Message(m)
    }
}
impl From<SentBody> for Frame {
    fn from(s: SentBody) -> Self {
        Frame::Sent(s)
    }
}
impl From<ReplyBody> for Frame {
    fn from(r: ReplyBody) -> Self {
        Frame::Reply(r)
    }
}

/// The type byte of a frame on the wire (binary and JSON codecs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// `0`: heartbeat answer.
    Pong = 0,
    /// `1`: heartbeat request.
    Ping = 1,
    /// `2`: pushed message.
    Message = 2,
    /// `3`: client request.
    Sent = 3,
    /// `4`: server reply.
    Reply = 4,
}

impl FrameType {
    /// The type byte.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// Whether a client may send this type to a server (PONG and SENT).
    pub const fn is_client_to_server(self) -> bool {
        matches!(self, FrameType::Pong | FrameType::Sent)
    }

    /// The type of a type byte, or `None` for an unknown one.
    pub const fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => FrameType::Pong,
            1 => FrameType::Ping,
            2 => FrameType::Message,
            3 => FrameType::Sent,
            4 => FrameType::Reply,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bytes_round_trip() {
        for b in 0..=255u8 {
            match FrameType::from_byte(b) {
                Some(t) => assert_eq!(t.byte(), b),
                None => assert!(b > 4),
            }
        }
        assert!(FrameType::Sent.is_client_to_server());
        assert!(!FrameType::Message.is_client_to_server());
        assert_eq!(Frame::Ping.frame_type(), FrameType::Ping);
    }
}
