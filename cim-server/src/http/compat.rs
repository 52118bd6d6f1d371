//! CIM's own HTTP API (docs/protocol.md section 7), so existing back-ends keep working.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cim_core::Message;
use serde_json::json;

use super::HttpState;

/// A refusal in CIM's shape (`code`, `message`) that also carries the fields every error of
/// the API has (`error`, `status`).
fn cim_error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    let body = json!({
        "code": status.as_u16(),
        "message": message,
        "error": message,
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// Why the fields of a compatibility send were refused (answered `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(String);

/// Decodes `application/x-www-form-urlencoded` pairs: `&`-separated, empty pieces skipped, split
/// at the first `=`, `+` for a space, `%XX` for a byte (a `%` not followed by two hex digits is
/// kept as it is). A name or value that is not UTF-8 once decoded is refused, not patched.
fn form_pairs(input: &[u8], what: &str) -> Result<Vec<(String, String)>, FormError> {
    let text = |bytes: &[u8], part: &str| {
        String::from_utf8(percent_decode(bytes))
            .map_err(|_| FormError(format!("bad {what}: a field {part} is not valid UTF-8")))
    };
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(at) => (piece.get(..at), piece.get(at + 1..)),
                None => (Some(piece), None),
            };
            Ok((
                text(name.unwrap_or_default(), "name")?,
                text(value.unwrap_or_default(), "value")?,
            ))
        })
        .collect()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let escaped = match (b, input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex_digit(h).zip(hex_digit(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (b, escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The message of a compatibility send, from the raw query string and the form body: fields
/// `sender`, `receiver`, `action` (required), `title`, `content`, `format`, `extra`, `file`,
/// `fileType`; a field in the body wins over the same field in the query.
pub fn parse_send_form(query: &[u8], body: &[u8]) -> Result<Message, FormError> {
    let mut fields = form_pairs(query, "query string")?;
    fields.extend(form_pairs(body, "form body")?);
    let get = |name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for required in ["sender", "receiver", "action"] {
        if get(required).is_empty() {
            return Err(FormError(format!("{required} is required")));
        }
    }
    Ok(Message {
        sender: get("sender"),
        receiver: get("receiver"),
        action: get("action"),
        title: get("title"),
        content: get("content"),
        format: get("format"),
        extra: get("extra"),
        file: get("file"),
        file_type: get("fileType"),
        ..Message::default()
    })
}

/// `POST /api/message/send` with form or query fields `sender`, `receiver`, `action` (required),
/// `title`, `content`, `format`, `extra`, and the attachment `file`, `fileType`: answers
/// `{"code":200,"data":<message id>}`.
pub async fn send(
    State(st): State<Arc<HttpState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let message = match parse_send_form(query.as_bytes(), &body) {
        Ok(m) => m,
        Err(e) => return cim_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    for (field, account) in [("sender", &message.sender), ("receiver", &message.receiver)] {
        if let Err(e) = cim_core::check_uid(account, st.max_uid_bytes) {
            return cim_error(StatusCode::BAD_REQUEST, format!("{field} {e}"));
        }
    }
    match st.hub.send(message).await {
        Ok(sent) => Json(json!({ "code": 200, "data": sent.id })).into_response(),
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(query: &str, body: &[u8]) -> Result<Message, FormError> {
        parse_send_form(query.as_bytes(), body)
    }

    #[test]
    fn fields_from_query_and_body() {
        let m = form(
            "sender=sys&receiver=q&action=1&title=from+query",
            b"receiver=u%201&action=2&content=a+b%26c%3D&&extra",
        )
        .unwrap();
        assert_eq!(
            (
                m.sender.as_str(),
                m.receiver.as_str(),
                m.action.as_str(),
                m.title.as_str(),
                m.content.as_str(),
                m.extra.as_str()
            ),
            ("sys", "u 1", "2", "from query", "a b&c=", "")
        );
        // Percent signs that escape nothing stay; UTF-8 escapes decode.
        let m = form("sender=s&receiver=r&action=2&content=100%&title=%zz%4", b"").unwrap();
        assert_eq!((m.content.as_str(), m.title.as_str()), ("100%", "%zz%4"));
        let m = form("sender=s&receiver=r&action=2&content=%E4%B8%AD", b"").unwrap();
        assert_eq!(m.content, "中");
    }

    #[test]
    fn missing_fields_and_invalid_utf8_are_refused() {
        assert_eq!(
            form("sender=s&action=2", b""),
            Err(FormError("receiver is required".into()))
        );
        assert_eq!(
            form("sender=s&receiver=r&action=2", b"content=%ff%fe"),
            Err(FormError(
                "bad form body: a field value is not valid UTF-8".into()
            ))
        );
        assert_eq!(
            form("sender=s&receiver=r&action=2&%c3=x", b""),
            Err(FormError(
                "bad query string: a field name is not valid UTF-8".into()
            ))
        );
        // Raw bytes that are not UTF-8, unescaped, too.
        let raw = parse_send_form(b"sender=s&receiver=r&action=2", "content=中".as_bytes());
        assert_eq!(raw.unwrap().content, "中");
        assert!(parse_send_form(b"sender=s&receiver=r&action=2", b"content=\xff").is_err());
        assert!(parse_send_form(b"sender=s&receiver=r&action=2", b"content=\xc3").is_err());
    }

    /// For input that decodes to UTF-8, the pairs are what serde_urlencoded (the form
    /// extractor's decoder) makes of it.
    #[test]
    fn pairs_agree_with_serde_urlencoded() {
        for input in [
            "a=1&b=2",
            "a=1&&a=2&=x&y=&z",
            "sp+ace=%20%2B+&pct=%&pct2=%4&bad=%g1",
            "k=%E4%B8%AD%E6%96%87&e=%F0%9F%92%AC",
            "==&a==b&%3D=%26",
        ] {
            let ours = form_pairs(input.as_bytes(), "t").unwrap();
            let theirs: Vec<(String, String)> = serde_urlencoded::from_str(input).unwrap();
            assert_eq!(ours, theirs, "{input}");
        }
    }
}
