//! [`ListenerLimits`]: the server's door check — a message is refused before it is routed or
//! stored when none of the server's listeners could carry it, so nothing is accepted that could
//! never arrive. (A message that some listeners carry and a connection's own listener does not
//! is kept for the account instead of being written there: see the connection engine.)

use cim_codec_json::JsonCodec;
use cim_codec_xml::XmlCodec;
use cim_core::engine::Admission;
use cim_core::protocol::code;
use cim_core::{Error, Frame, Message, Result};

use crate::listener::{Listener, Protocol};
use crate::transport::WsMode;

/// How a listener encodes a pushed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// A TCP frame: the limit is on the body.
    BinaryFrame,
    /// A WebSocket binary packet.
    BinaryPacket,
    /// A WebSocket JSON text packet.
    Json,
    /// An XML document.
    Xml,
}

impl Form {
    /// How much larger than its fields a message can grow in this form (escaping), and a
    /// margin for the envelope: a message whose fields are small enough against this bound fits
    /// without being encoded to find out.
    fn growth(self) -> (usize, usize) {
        match self {
            Form::BinaryFrame | Form::BinaryPacket => (1, 0),
            // A control character becomes `\u00XX`, escaped again by the envelope.
            Form::Json => (12, 512),
            // `&` becomes `&amp;`, a control character a character reference.
            Form::Xml => (6, 512),
        }
    }

    /// How the refusal names this form beside its listener: a WebSocket listener in both modes
    /// has a limit for each.
    fn mode(self) -> &'static str {
        match self {
            Form::BinaryPacket => " in protobuf",
            Form::Json => " in JSON",
            Form::BinaryFrame | Form::Xml => "",
        }
    }

    /// The length of `frame` in this form, or `None` when it exceeds `max` (the XML codec stops
    /// at its limit).
    fn len(self, frame: &Frame, max: usize) -> Option<usize> {
        match self {
            Form::BinaryFrame => Some(cim_codec_binary::body_len(frame)),
            Form::BinaryPacket => Some(1 + cim_codec_binary::body_len(frame)),
            Form::Json => JsonCodec.encode_text(frame).ok().map(|t| t.len()),
            Form::Xml => {
                let mut scratch = bytes::BytesMut::new();
                XmlCodec::with_max_document(max)
                    .encode_frame(frame, &mut scratch)
                    .ok()
                    .map(|()| scratch.len().saturating_sub(1))
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Limit {
    listener: &'static str,
    form: Form,
    max: usize,
}

/// The largest message each listener of a server takes; [`Admission`] refuses one that fits
/// none of them with `413`, naming each listener's limit.
#[derive(Clone, Debug, Default)]
pub struct ListenerLimits {
    limits: Vec<Limit>,
}

impl ListenerLimits {
    /// The limits of `listeners`.
    pub fn of<'a>(listeners: impl IntoIterator<Item = &'a Listener>) -> Self {
        let mut limits = Vec::new();
        for l in listeners {
            let name = l.protocol.name();
            let mut add = |form, max| {
                limits.push(Limit {
                    listener: name,
                    form,
                    max,
                })
            };
            match &l.protocol {
                Protocol::Binary { max_frame } => add(Form::BinaryFrame, *max_frame),
                Protocol::Xml { max_document, .. } => add(Form::Xml, *max_document),
                Protocol::WebSocket(ws) => {
                    if ws.mode != WsMode::Json {
                        add(Form::BinaryPacket, ws.max_message);
                    }
                    if ws.mode != WsMode::Protobuf {
                        add(Form::Json, ws.max_message);
                    }
                }
            }
        }
        Self { limits }
    }
}

/// The bytes of a message's fields.
fn fields_len(m: &Message) -> usize {
    [
        &m.action,
        &m.title,
        &m.content,
        &m.sender,
        &m.receiver,
        &m.format,
        &m.extra,
        &m.file,
        &m.file_type,
    ]
    .iter()
    .map(|f| f.len())
    .sum::<usize>()
        + 64
}

impl Admission for ListenerLimits {
    fn admit(&self, message: &Message) -> Result<()> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let raw = fields_len(message);
        let mut frame = None;
        let mut refused = Vec::new();
        for limit in &self.limits {
            let (factor, margin) = limit.form.growth();
            if raw.saturating_mul(factor).saturating_add(margin) <= limit.max {
                return Ok(());
            }
            let frame = frame.get_or_insert_with(|| Frame::Message(message.clone()));
            match limit.form.len(frame, limit.max) {
                Some(len) if len <= limit.max => return Ok(()),
                found => refused.push(format!(
                    "{} bytes for the {} listener{}, whose limit is {} ({}.max_frame)",
                    found.map_or_else(|| "more".to_owned(), |n| n.to_string()),
                    limit.listener,
                    limit.form.mode(),
                    limit.max,
                    limit.listener
                )),
            }
        }
        Err(Error::reply(
            code::TOO_LARGE,
            format!(
                "the message is too large for every listener: it encodes to {}",
                refused.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(content: usize) -> Message {
        Message {
            receiver: "u".into(),
            content: "x".repeat(content),
            ..Message::default()
        }
    }

    #[test]
    fn a_tcp_listener_at_the_edge() {
        let limits = ListenerLimits::of(&[Listener::binary("127.0.0.1:0".parse().unwrap())]);
        // The TCP body: field 3's tag, a 3-byte length and the content; field 5's 3 bytes.
        let fits = 65535 - 4 - 3;
        assert!(limits.admit(&message(fits)).is_ok());
        let e = limits.admit(&message(fits + 1)).unwrap_err().to_string();
        assert!(
            e.contains("413") && e.contains("tcp.max_frame") && e.contains("65535"),
            "{e}"
        );
    }

    /// A WebSocket listener in JSON mode sends JSON, whose envelope and double escaping make a
    /// message larger than its fields: that is measured, not guessed.
    #[test]
    fn a_websocket_listener_measures_its_json() {
        let mut json = Listener::websocket("127.0.0.1:0".parse().unwrap());
        if let Protocol::WebSocket(ws) = &mut json.protocol {
            ws.mode = WsMode::Json;
        }
        let limits = ListenerLimits::of(&[json]);
        assert!(limits.admit(&message(60_000)).is_ok());
        let e = limits.admit(&message(65_500)).unwrap_err().to_string();
        assert!(e.contains("websocket.max_frame"), "{e}");
        let escaped = Message {
            content: "\u{1}".repeat(10_000),
            ..message(0)
        };
        let e = limits.admit(&escaped).unwrap_err().to_string();
        assert!(e.contains("websocket"), "{e}");
        // Plain text of the same length fits.
        assert!(limits.admit(&message(10_000)).is_ok());
    }

    /// Refused only when no listener takes it; the refusal names every limit.
    #[test]
    fn any_listener_that_carries_it_is_enough() {
        let small_xml = Listener {
            protocol: Protocol::Xml {
                max_document: 200,
                flash_policy: false,
            },
            ..Listener::xml("127.0.0.1:0".parse().unwrap())
        };
        let limits =
            ListenerLimits::of(&[Listener::binary("127.0.0.1:0".parse().unwrap()), small_xml]);
        assert!(limits.admit(&message(1000)).is_ok());
        let e = limits.admit(&message(70_000)).unwrap_err().to_string();
        assert!(
            e.contains("tcp.max_frame") && e.contains("xml.max_frame") && e.contains("200"),
            "{e}"
        );
    }

    /// A WebSocket listener in `auto` mode has a limit for each form, and the refusal says
    /// which is which.
    #[test]
    fn a_websocket_listener_in_auto_mode_names_each_form() {
        let mut both = Listener::websocket("127.0.0.1:0".parse().unwrap());
        if let Protocol::WebSocket(ws) = &mut both.protocol {
            ws.mode = WsMode::Auto;
        }
        let e = ListenerLimits::of(&[both])
            .admit(&message(70_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("for the websocket listener in protobuf, whose limit")
                && e.contains("for the websocket listener in JSON, whose limit"),
            "{e}"
        );
    }
}
