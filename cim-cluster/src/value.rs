//! Reading Redis replies ([`redis::Value`]) without panics: every shape a script or a command
//! answers is checked, and anything else is an error naming what was expected.

use redis::Value;

use crate::error::ClusterError;

/// The elements of an array reply (nil is an empty array).
pub(crate) fn array(v: Value) -> Result<Vec<Value>, ClusterError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(ClusterError::reply("an array", &other)),
    }
}

/// A string reply's bytes (nil and integers are read as their text).
pub(crate) fn bytes(v: Value) -> Result<Vec<u8>, ClusterError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        other => Err(ClusterError::reply("a string", &other)),
    }
}

/// A string reply as text.
pub(crate) fn text(v: Value) -> Result<String, ClusterError> {
    String::from_utf8(bytes(v)?).map_err(|_| ClusterError::Reply("a reply is not UTF-8".into()))
}

/// An integer reply (or a string holding one; nil is 0).
pub(crate) fn int(v: Value) -> Result<i64, ClusterError> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Nil => Ok(0),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClusterError::Reply("a number was expected".into())),
        Value::SimpleString(s) => s
            .parse()
            .map_err(|_| ClusterError::Reply("a number was expected".into())),
        other => Err(ClusterError::reply("a number", &other)),
    }
}

/// A non-negative integer reply.
pub(crate) fn count(v: Value) -> Result<usize, ClusterError> {
    usize::try_from(int(v)?.max(0)).map_err(|_| ClusterError::Reply("a count overflows".into()))
}
