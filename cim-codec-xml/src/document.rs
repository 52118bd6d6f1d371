//! One XML document to and from a [`Frame`].

use cim_core::protocol::{bind, key};
use cim_core::{CodecError, DataMap, Frame, Message, ReplyBody, SentBody};
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::escape::{is_name, push_cdata, push_text, resolve_ref};

const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const WHAT: &str = "XML document";

fn malformed(reason: impl std::fmt::Display) -> CodecError {
    CodecError::malformed(WHAT, reason)
}

enum Root {
    Sent(SentBody),
    Reply(ReplyBody),
    Message(Message),
}

impl Root {
    fn data(&mut self) -> Option<&mut DataMap> {
        match self {
            Root::Sent(s) => Some(&mut s.data),
            Root::Reply(r) => Some(&mut r.data),
            Root::Message(_) => None,
        }
    }

    /// Stores the text of the child element `field`. Unknown fields are ignored.
    fn assign(&mut self, field: &str, text: String) -> Result<(), CodecError> {
        match self {
            Root::Sent(s) => match field {
                "key" => s.key = text,
                "timestamp" => s.timestamp = int(field, &text)?,
                _ => {}
            },
            Root::Reply(r) => match field {
                "key" => r.key = text,
                "code" => r.code = text,
                "message" => r.message = text,
                "timestamp" => r.timestamp = int(field, &text)?,
                _ => {}
            },
            Root::Message(m) => match field {
                "id" => m.id = int(field, &text)?,
                // Legacy id, once a UUID: a non-numeric one reads as 0.
                "mid" => m.id = int(field, &text).unwrap_or(0),
                "action" | "type" => m.action = text,
                "title" => m.title = text,
                "content" => m.content = text,
                "sender" => m.sender = text,
                "receiver" => m.receiver = text,
                "format" => m.format = text,
                "extra" => m.extra = text,
                "file" => m.file = text,
                "fileType" => m.file_type = text,
                "timestamp" => m.timestamp = int(field, &text)?,
                _ => {}
            },
        }
        Ok(())
    }

    fn into_frame(self) -> Frame {
        match self {
            Root::Sent(mut s) => {
                if s.key == key::CLIENT_BIND {
                    legacy_bind_keys(&mut s.data);
                }
                Frame::Sent(s)
            }
            Root::Reply(r) => Frame::Reply(r),
            Root::Message(m) => Frame::Message(m),
        }
    }
}

/// CIM 2.x clients bind with `account`, `device` and `version`: add the 4.x names beside them
/// (a 4.x name the client sent itself is kept).
fn legacy_bind_keys(data: &mut DataMap) {
    for (new, old) in [
        (bind::UID, bind::LEGACY_ACCOUNT),
        (bind::DEVICE_NAME, bind::LEGACY_DEVICE),
        (bind::APP_VERSION, bind::LEGACY_VERSION),
    ] {
        if !data.contains_key(new)
            && let Some(v) = data.get(old).map(str::to_owned)
        {
            data.insert(new, v);
        }
    }
}

fn int(field: &str, text: &str) -> Result<i64, CodecError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    t.parse()
        .map_err(|_| malformed(format_args!("<{field}> is not an integer: {t:?}")))
}

/// Parses one document (without its terminator) whose `data` has at most `max_entries` entries.
pub(crate) fn parse(doc: &str, max_entries: usize) -> Result<Frame, CodecError> {
    let mut reader = Reader::from_str(doc);
    reader.config_mut().expand_empty_elements = true;

    let mut depth = 0usize;
    let mut root: Option<Root> = None;
    let mut field = String::new();
    let mut data_key: Option<String> = None;
    let mut text = String::new();

    loop {
        let event = reader.read_event().map_err(malformed)?;
        // Text is kept only inside a field (depth 2) or a data entry (depth 3).
        let collecting = (depth == 2 && field != "data") || (depth == 3 && data_key.is_some());
        match event {
            Event::Start(e) => {
                depth += 1;
                let name = e.name();
                let name: &str = name.as_ref();
                match depth {
                    1 => {
                        if root.is_some() {
                            return Err(malformed("more than one root element"));
                        }
                        root = Some(match name {
                            "sent" => Root::Sent(SentBody::default()),
                            "reply" => Root::Reply(ReplyBody::default()),
                            "message" => Root::Message(Message::default()),
                            other => return Err(malformed(format_args!("unknown root <{other}>"))),
                        });
                    }
                    2 => {
                        field.clear();
                        field.push_str(name);
                        text.clear();
                    }
                    3 if field == "data" => {
                        data_key = Some(name.to_owned());
                        text.clear();
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                match depth {
                    2 if field != "data" => {
                        if let Some(root) = root.as_mut() {
                            root.assign(&field, std::mem::take(&mut text))?;
                        }
                    }
                    3 => {
                        if let (Some(k), Some(data)) =
                            (data_key.take(), root.as_mut().and_then(Root::data))
                        {
                            data.insert(k, std::mem::take(&mut text));
                            data.check_entries(max_entries)?;
                        }
                    }
                    _ => {}
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) if collecting => text.push_str(&t.xml10_content()),
            Event::CData(c) if collecting => text.push_str(&c.xml10_content()),
            Event::GeneralRef(r) => {
                let c = resolve_ref(&r)
                    .ok_or_else(|| malformed(format_args!("unknown reference &{};", &*r)))?;
                if collecting {
                    text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed("document ends inside an element"));
    }
    root.map(Root::into_frame)
        .ok_or_else(|| malformed("no root element"))
}

fn element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_text(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// An element only when its value is not empty, as CIM 2.x wrote them.
fn element_if(out: &mut String, name: &str, value: &str) {
    if !value.is_empty() {
        element(out, name, value);
    }
}

fn int_element(out: &mut String, name: &str, value: i64) {
    element(out, name, &value.to_string());
}

fn data_element(out: &mut String, data: &DataMap) -> Result<(), CodecError> {
    out.push_str("<data>");
    for (k, v) in data.iter() {
        if !is_name(k) {
            return Err(CodecError::Unencodable(format!(
                "data key {k:?} is not an XML name"
            )));
        }
        element(out, k, v);
    }
    out.push_str("</data>");
    Ok(())
}

/// Writes a message as CIM 2.x did: `<mid>` (the id) and `<type>` (the action), then the other
/// 2.x elements in 2.x's order, each only when it has a value. `extra`, which 2.x did not have,
/// comes last, where a 2.x client skips it.
fn write_message(m: &Message, out: &mut String) {
    out.push_str("<message>");
    int_element(out, "mid", m.id);
    element_if(out, "type", &m.action);
    element_if(out, "title", &m.title);
    if !m.content.is_empty() {
        out.push_str("<content>");
        push_cdata(out, &m.content);
        out.push_str("</content>");
    }
    element_if(out, "file", &m.file);
    element_if(out, "fileType", &m.file_type);
    element_if(out, "sender", &m.sender);
    element_if(out, "receiver", &m.receiver);
    element_if(out, "format", &m.format);
    if m.timestamp != 0 {
        int_element(out, "timestamp", m.timestamp);
    }
    element_if(out, "extra", &m.extra);
    out.push_str("</message>");
}

/// Writes `frame` as a document (without its terminator).
pub(crate) fn write(frame: &Frame, out: &mut String) -> Result<(), CodecError> {
    match frame {
        Frame::Ping => out.push_str(crate::SERVER_HEARTBEAT),
        Frame::Pong => out.push_str(crate::CLIENT_HEARTBEAT),
        Frame::Sent(s) => {
            out.push_str(DECL);
            out.push_str("<sent>");
            element(out, "key", &s.key);
            int_element(out, "timestamp", s.timestamp);
            data_element(out, &s.data)?;
            out.push_str("</sent>");
        }
        Frame::Reply(r) => {
            // As CIM 2.x wrote a reply: key, timestamp, code and data always (its clients look
            // each of them up), the message only when there is one.
            out.push_str(DECL);
            out.push_str("<reply>");
            element(out, "key", &r.key);
            int_element(out, "timestamp", r.timestamp);
            element(out, "code", &r.code);
            element_if(out, "message", &r.message);
            data_element(out, &r.data)?;
            out.push_str("</reply>");
        }
        Frame::Message(m) => {
            out.push_str(DECL);
            write_message(m, out);
        }
    }
    Ok(())
}
