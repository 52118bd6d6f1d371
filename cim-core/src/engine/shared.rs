//! [`SharedMessage`]: a message pushed to many connections, encoded once per wire format.

use std::borrow::Cow;
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
        self.encoded_ref(format, encode).map(Cow::into_owned)
    }

    /// [`encoded`](Self::encoded), borrowed: a connection that writes the bytes from here
    /// touches no reference count shared with every other connection the message goes to.
    pub fn encoded_ref(
        &self,
        format: WireFormat,
        encode: impl FnOnce(&Frame) -> Result<Bytes, CodecError>,
    ) -> Result<Cow<'_, Bytes>, CodecError> {
        match self.encoded.get(format.slot()) {
            Some(cell) => match cell.get_or_init(|| encode(&self.frame)) {
                Ok(bytes) => Ok(Cow::Borrowed(bytes)),
                Err(e) => Err(e.clone()),
            },
            None => encode(&self.frame).map(Cow::Owned),
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
        let a = m.encoded_ref(WireFormat::BinaryStream, enc).unwrap();
        let b = m.encoded_ref(WireFormat::BinaryStream, enc).unwrap();
        assert!(matches!((&a, &b), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
