//! [`SharedMessage`]: a message pushed to many connections, encoded once per wire format.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::codec::{CodecError, WireFormat};
use crate::frame::Frame;
use crate::message::Message;

/// A pushed message and its encodings, shared by every connection it goes to.
#[derive(Debug)]
pub struct SharedMessage {
    frame: Frame,
    encoded: [OnceLock<Result<Bytes, CodecError>>; WireFormat::COUNT],
}

impl SharedMessage {
    /// Wraps `message` for fan-out.
    pub fn new(message: Message) -> Self {
        Self {
            frame: Frame::Message(message),
            encoded: Default::default(),
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        match &self.frame {
            Frame::Message(m) => m,
            // `new` is the only constructor and always builds a `Frame::Message`.
            _ => unreachable!("SharedMessage holds a message frame"),
        }
    }

    /// The message as a frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The encoding of this message in `format`, made by `encode` on first use and shared after.
    pub fn encoded(
        &self,
        format: WireFormat,
        encode: impl FnOnce(&Frame) -> Result<Bytes, CodecError>,
    ) -> Result<Bytes, CodecError> {
        match self.encoded.get(format.slot()) {
            Some(cell) => cell.get_or_init(|| encode(&self.frame)).clone(),
            None => encode(&self.frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn encodes_once_per_format() {
        let m = SharedMessage::new(Message::default());
        let calls = AtomicUsize::new(0);
        let enc = |_: &Frame| {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(Bytes::from_static(b"x"))
        };
        for _ in 0..3 {
            m.encoded(WireFormat::BinaryStream, enc).unwrap();
        }
        m.encoded(WireFormat::XmlStream, enc).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
