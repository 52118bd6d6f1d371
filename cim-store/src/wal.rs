//! The write-ahead log of [`RedbStore`](crate::RedbStore) under `Durability::Always`: each batch
//! of writes is appended here with one `fdatasync` (a small sequential write) instead of a
//! durable B-tree commit (which rewrites every touched page), and the database is made durable
//! now and then (a checkpoint), after which the log starts again. On open, whatever the log
//! holds is applied again; every record is idempotent.
//!
//! A record is `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`. A torn or corrupt
//! record ends the log: it was never acknowledged, since its batch's sync had not returned.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use cim_core::engine::Seq;

/// One logged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `value` stored as message `seq` of `uid`.
    Append {
        /// Account.
        uid: String,
        /// Sequence.
        seq: Seq,
        /// Encoded value.
        value: Vec<u8>,
    },
    /// `uid`'s messages up to `upto` deleted (`u64::MAX`: all).
    Ack {
        /// Account.
        uid: String,
        /// Last sequence deleted.
        upto: Seq,
    },
    /// Messages stored before `older_than_ms` deleted.
    Expire {
        /// Cut-off, Unix milliseconds.
        older_than_ms: i64,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Frames the body that `write` appends to `out`.
fn framed(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    write(out);
    let body = out.get(start + 8..).unwrap_or_default();
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    let header: Vec<u8> = len
        .to_le_bytes()
        .into_iter()
        .chain(crc.to_le_bytes())
        .collect();
    if let Some(head) = out.get_mut(start..start + 8) {
        head.copy_from_slice(&header);
    }
}

/// Appends an [`Record::Append`] to `out`.
pub fn encode_append(out: &mut Vec<u8>, uid: &str, seq: Seq, value: &[u8]) {
    framed(out, |b| {
        b.push(1);
        put_str(b, uid);
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&(value.len() as u32).to_le_bytes());
        b.extend_from_slice(value);
    });
}

/// Appends an [`Record::Ack`] to `out`.
pub fn encode_ack(out: &mut Vec<u8>, uid: &str, upto: Seq) {
    framed(out, |b| {
        b.push(2);
        put_str(b, uid);
        b.extend_from_slice(&upto.to_le_bytes());
    });
}

/// Appends an [`Record::Expire`] to `out`.
pub fn encode_expire(out: &mut Vec<u8>, older_than_ms: i64) {
    framed(out, |b| {
        b.push(3);
        b.extend_from_slice(&older_than_ms.to_le_bytes());
    });
}

impl Record {
    /// Appends the framed record to `out`.
    #[cfg(test)]
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Append { uid, seq, value } => encode_append(out, uid, *seq, value),
            Record::Ack { uid, upto } => encode_ack(out, uid, *upto),
            Record::Expire { older_than_ms } => encode_expire(out, *older_than_ms),
        }
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let rec = match r.u8()? {
            1 => Record::Append {
                uid: r.string()?,
                seq: r.u64()?,
                value: {
                    let n = r.u32()? as usize;
                    r.take(n)?.to_vec()
                },
            },
            2 => Record::Ack {
                uid: r.string()?,
                upto: r.u64()?,
            },
            3 => Record::Expire {
                older_than_ms: r.u64()? as i64,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Every whole, intact record at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut r = Reader(bytes);
    while let (Some(len), Some(crc)) = (r.u32(), r.u32()) {
        let Some(body) = r.take(len as usize) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        match Record::decode(body) {
            Some(rec) => out.push(rec),
            None => break,
        }
    }
    out
}

/// The log file.
pub struct Wal {
    file: File,
    len: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns it with the records it holds.
    pub fn open(path: &Path) -> io::Result<(Wal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let records = parse(&bytes);
        let len = bytes.len() as u64;
        file.seek(SeekFrom::End(0))?;
        Ok((Wal { file, len }, records))
    }

    /// Appends `bytes` (framed records) and waits until they are on disk.
    pub fn append_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log (after a durable checkpoint).
    pub fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let recs = vec![
            Record::Append {
                uid: "u".into(),
                seq: 7,
                value: vec![1, 2, 3],
            },
            Record::Ack {
                uid: "中".into(),
                upto: u64::MAX,
            },
            Record::Expire { older_than_ms: -5 },
        ];
        let mut bytes = Vec::new();
        for r in &recs {
            r.encode(&mut bytes);
        }
        assert_eq!(parse(&bytes), recs);
        for cut in 0..bytes.len() {
            let got = parse(&bytes[..cut]);
            assert!(
                got.len() < recs.len() && recs.starts_with(&got),
                "cut {cut}"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(parse(&flipped), recs[..2]);
    }
}
