//! The codec seams: [`StreamCodec`] for byte streams, [`PacketCodec`] for message-framed
//! transports, and [`CodecError`], the one error type of every codec.
//!
//! Codecs are sans-IO: bytes in, frames out, no sockets and no async, so they are tested and
//! fuzzed in isolation and reused by servers, clients and tools alike.

use bytes::{Bytes, BytesMut};

use crate::frame::Frame;

/// The wire formats whose encodings are cached for fan-out. A codec names its format through
/// [`crate::StreamCodec::wire_format`] or [`crate::PacketCodec::wire_format`]; a codec without
/// one encodes each delivery afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireFormat {
    /// TCP binary frames.
    BinaryStream,
    /// WebSocket binary packets.
    BinaryPacket,
    /// WebSocket JSON text packets.
    JsonPacket,
    /// XML documents.
    XmlStream,
}

#[cfg_attr(not(feature = "engine"), allow(dead_code))] // the fan-out cache is the engine's
impl WireFormat {
    pub(crate) const COUNT: usize = 4;

    pub(crate) fn slot(self) -> usize {
        match self {
            WireFormat::BinaryStream => 0,
            WireFormat::BinaryPacket => 1,
            WireFormat::JsonPacket => 2,
            WireFormat::XmlStream => 3,
        }
    }
}

/// Frames on a byte stream (TCP, TLS): one codec value per connection, so it may keep scanning
/// state between calls, as tokio-util's `Decoder` does.
pub trait StreamCodec: Send + 'static {
    /// Takes one whole frame off the front of `src`. `Ok(None)` means more bytes are needed;
    /// `src` then still holds everything not yet consumed. An error means the stream is broken
    /// and the connection should be closed. Length limits are checked before anything is
    /// allocated for a frame.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError>;

    /// Appends the encoding of `frame` to `dst`. On error `dst` is left as it was.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError>;

    /// The wire format this codec writes, if its encodings of pushed messages may be shared
    /// with other connections of the same format. `None` (the default) encodes every delivery.
    fn wire_format(&self) -> Option<WireFormat> {
        None
    }

    /// Like [`decode`](Self::decode), at the end of the stream: bytes that do not make a whole
    /// frame are an error ([`CodecError::Truncated`]).
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated { pending: src.len() }),
        }
    }
}

/// One packet of a message-framed transport (WebSocket), borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A binary packet.
    Binary(&'a [u8]),
    /// A text packet.
    Text(&'a str),
}

/// One encoded packet, owned. The payload is shared, so a message fanned out to many
/// connections is encoded once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedPacket {
    /// A binary packet.
    Binary(Bytes),
    /// A text packet.
    Text(String),
}

impl OwnedPacket {
    /// The packet, borrowed.
    pub fn as_packet(&self) -> Packet<'_> {
        match self {
            OwnedPacket::Binary(b) => Packet::Binary(b),
            OwnedPacket::Text(t) => Packet::Text(t),
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            OwnedPacket::Binary(b) => b.len(),
            OwnedPacket::Text(t) => t.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frames on a message-framed transport: each packet is one frame. Stateless, so one value
/// serves every connection.
pub trait PacketCodec: Send + Sync + 'static {
    /// Decodes one packet.
    fn decode(&self, packet: Packet<'_>) -> Result<Frame, CodecError>;
    /// Encodes one frame as one packet.
    fn encode(&self, frame: &Frame) -> Result<OwnedPacket, CodecError>;

    /// The wire format this codec writes, if its encodings may be shared; see
    /// [`StreamCodec::wire_format`].
    fn wire_format(&self) -> Option<WireFormat> {
        None
    }
}

/// Why a codec refused bytes or a frame. Each variant says enough to log a useful reason when a
/// connection is closed for it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame (or document) is longer than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its length (for a stream without a length field: the bytes seen so far).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The type byte names no frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded (`"message body"`, `"JSON envelope"`, ...).
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({pending} bytes pending)")]
    Truncated {
        /// Bytes left over.
        pending: usize,
    },
    /// A packet of the wrong kind (text to a binary codec or the reverse).
    #[error("expected a {expected} packet")]
    WrongPacketKind {
        /// The kind the codec takes.
        expected: &'static str,
    },
    /// A `data` map with more entries than the codec accepts (see
    /// [`DataMap::DEFAULT_MAX_ENTRIES`](crate::DataMap::DEFAULT_MAX_ENTRIES)).
    #[error("data map exceeds the limit of {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// The frame cannot be represented in this codec.
    #[error("cannot encode: {0}")]
    Unencodable(String),
}

impl CodecError {
    /// A [`CodecError::Malformed`].
    pub fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Self {
        CodecError::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}
