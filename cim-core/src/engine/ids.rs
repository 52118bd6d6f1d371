//! [`MessageIds`]: the ids the server gives messages, every one at most 2^53 − 1 so that
//! JavaScript (`JSON.parse`, google-protobuf's `readInt64`) reads it exactly.
//!
//! # The scheme
//!
//! An id is a 45-bit logical clock above an 8-bit node number:
//!
//! ```text
//!  52                                         8 7        0
//! +--------------------------------------------+----------+
//! | clock: sixteenths of a millisecond since    |   node   |
//! | 2026-01-01T00:00:00Z (45 bits)              | (0-255)  |
//! +--------------------------------------------+----------+
//! ```
//!
//! - **Nodes**: 256 (`node_id` 0 to 255). Ids of two nodes never collide: they differ in the low
//!   8 bits.
//! - **Rate**: the clock has 16 values per millisecond, so a node gives 16 ids a millisecond
//!   (16 000 a second) in step with the wall clock. Each id takes the next clock value:
//!   `max(wall clock, last + 1)`, one compare-and-swap on an atomic, with no lock: about 12
//!   million ids a second from one caller on the project's machine (BENCHMARKS.md).
//! - **Outrunning it**: faster than 16 a millisecond, the clock runs ahead of the wall clock (a
//!   burst of a million ids puts it about a minute ahead) and comes back into step once the rate
//!   drops below 16 a millisecond. Ids stay unique and increasing; only the time they would
//!   suggest is early.
//! - **The clock stepping back** (NTP, a virtual machine resumed): ids carry on from the last
//!   one, one clock value apart, until the wall clock passes it again. They never go back.
//! - **Restarts**: with a high-water mark ([`MessageIds::open`]: a file `message-ids` in a
//!   directory, the store's in the server), the node writes down a clock value ahead of every id
//!   it has given (a minute ahead, written again as it draws near, off the hot path but for the
//!   one caller that writes it) and starts after it, so ids keep increasing across a restart or a
//!   crash even after running ahead or with the clock stepped back. Without one
//!   ([`MessageIds::new`]) a restart starts from the wall clock: increasing as long as the node
//!   had not run ahead and the clock has not stepped back meanwhile.
//! - **Limits**: 2^45 clock values last until 2095 at 16 a millisecond; a node that gives more
//!   than 16 000 ids a second on average uses them up sooner (at 100 000 a second, on average,
//!   in 11 years). Past 2^45 ids go on above 2^53 − 1, still unique and increasing but no longer
//!   exact in JavaScript, and an error is logged.
//!
//! Ids made by releases before this scheme (milliseconds shifted left by 22 bits) are larger than
//! every id it makes: compare ids of one scheme only.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{debug, error};

use crate::error::{Error, Result};

/// The largest id JavaScript reads exactly, 2^53 − 1: every id is at most this (until 2095).
pub const MAX_SAFE_ID: i64 = (1 << 53) - 1;

/// Bits of the node number.
pub const NODE_BITS: u32 = 8;

/// The largest node number.
pub const MAX_NODE: u8 = u8::MAX;

/// Clock values per millisecond: ids a node gives per millisecond in step with the wall clock.
pub const TICKS_PER_MS: u64 = 16;

/// The clock's zero, 2026-01-01T00:00:00Z, in milliseconds since the Unix epoch.
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// Bits of the clock: 45 + 8 = 53.
const CLOCK_BITS: u32 = 45;

/// How far ahead of the clock the high-water mark is written: a minute of clock values.
const WINDOW: u64 = 60_000 * TICKS_PER_MS;

/// The high-water mark's file name in its directory.
pub const MARK_FILE: &str = "message-ids";

/// Message ids of one node; see the [module docs](self) for the scheme and its limits.
#[derive(Debug)]
pub struct MessageIds {
    node: u64,
    /// The last clock value given.
    last: AtomicU64,
    /// Clock values below this are covered by the mark on disk (`u64::MAX` without a mark).
    reserved: AtomicU64,
    /// The mark, when there is one.
    mark: Option<Mutex<Mark>>,
    /// The wall clock in milliseconds since the Unix epoch (a parameter for tests).
    now_ms: fn() -> i64,
    /// Whether the end of the 53-bit range has been logged.
    overflow_logged: AtomicBool,
}

/// Where the high-water mark is kept.
#[derive(Debug)]
struct Mark {
    path: PathBuf,
    dir: PathBuf,
}

impl MessageIds {
    /// Ids for node `node`, with no high-water mark: after a restart they start from the wall
    /// clock.
    pub fn new(node: u8) -> Self {
        Self::with_clock(node, crate::now_ms)
    }

    /// Ids for node `node` with a high-water mark in `dir` (created if missing): they start
    /// above every id given before on this directory, whatever the wall clock says. Fails, naming
    /// the file, if the mark cannot be read or written.
    pub fn open(node: u8, dir: &Path) -> Result<Self> {
        Self::open_with_clock(node, dir, crate::now_ms)
    }

    fn with_clock(node: u8, now_ms: fn() -> i64) -> Self {
        Self {
            node: u64::from(node),
            last: AtomicU64::new(0),
            reserved: AtomicU64::new(u64::MAX),
            mark: None,
            now_ms,
            overflow_logged: AtomicBool::new(false),
        }
    }

    fn open_with_clock(node: u8, dir: &Path, now_ms: fn() -> i64) -> Result<Self> {
        let mark = Mark {
            path: dir.join(MARK_FILE),
            dir: dir.to_owned(),
        };
        let floor = mark.read()?;
        let mut ids = Self::with_clock(node, now_ms);
        // Every clock value given before is below the floor; the first id is at the floor or
        // later.
        ids.last = AtomicU64::new(floor.saturating_sub(1));
        let reserve = floor.max(ids.clock()).saturating_add(WINDOW);
        fs::create_dir_all(dir).map_err(|e| mark.error("cannot create the directory of", &e))?;
        mark.write(reserve)?;
        ids.reserved = AtomicU64::new(reserve);
        ids.mark = Some(Mutex::new(mark));
        Ok(ids)
    }

    /// The next id: larger than every id this node gave before.
    pub fn next(&self) -> i64 {
        let now = self.clock();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev.saturating_add(1));
            let reserved = self.reserved.load(Ordering::Acquire);
            if next >= reserved {
                // Past the mark (rare: a long burst outran the early rewrite below): write the
                // mark further ahead before giving the id.
                self.reserve(next, true);
                prev = self.last.load(Ordering::Relaxed);
                continue;
            }
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if next.saturating_add(WINDOW / 2) >= reserved {
                        // Half the window left: whoever gets the mark first writes it further
                        // ahead; the others carry on.
                        self.reserve(next, false);
                    }
                    return self.compose(next);
                }
                Err(actual) => prev = actual,
            }
        }
    }

    /// The wall clock in clock values (0 before the epoch).
    fn clock(&self) -> u64 {
        let ms = (self.now_ms)().saturating_sub(EPOCH_MS);
        u64::try_from(ms).unwrap_or(0).saturating_mul(TICKS_PER_MS)
    }

    fn compose(&self, clock: u64) -> i64 {
        if clock >> CLOCK_BITS != 0 && !self.overflow_logged.swap(true, Ordering::Relaxed) {
            error!(
                "message ids have passed 2^53 - 1: they stay unique and increasing, but \
                 JavaScript no longer reads them exactly"
            );
        }
        i64::try_from((clock << NODE_BITS) | self.node).unwrap_or(i64::MAX)
    }

    /// Writes the mark a window ahead of `clock` (and of the wall clock), unless another caller
    /// has already. `wait`: whether to wait for a caller writing it meanwhile.
    fn reserve(&self, clock: u64, wait: bool) {
        let Some(mark) = &self.mark else {
            return;
        };
        let guard = if wait {
            crate::engine::locks::lock(mark)
        } else {
            match mark.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        };
        if clock.saturating_add(WINDOW / 2) < self.reserved.load(Ordering::Acquire) {
            return; // written meanwhile
        }
        let reserve = clock.max(self.clock()).saturating_add(WINDOW);
        match guard.write(reserve) {
            Ok(()) => debug!(reserve, "message id high-water mark written"),
            // Ids go on (they stay unique and increasing in this run); a restart before the
            // mark is written again may start below the ids given meanwhile.
            Err(e) => error!(error = %e, "message id high-water mark not written"),
        }
        self.reserved.store(reserve, Ordering::Release);
    }
}

impl Mark {
    /// The clock value stored, 0 when there is no mark yet.
    fn read(&self) -> Result<u64> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.error("cannot read", &e)),
        };
        text.trim().parse().map_err(|e| {
            self.error(
                "cannot read",
                &format!("{:?} is not a clock value: {e}", text.trim()),
            )
        })
    }

    /// Replaces the stored clock value with `clock`, durably: a temporary file, synced, renamed
    /// over the mark, and the directory synced.
    fn write(&self, clock: u64) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let written = (|| {
            let mut file = File::create(&tmp)?;
            writeln!(file, "{clock}")?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        })();
        written.map_err(|e| self.error("cannot write", &e))
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        Error::unavailable(
            "message id high-water mark",
            format!("{what} {}: {e}", self.path.display()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;

    use super::*;

    fn node_of(id: i64) -> i64 {
        id & ((1 << NODE_BITS) - 1)
    }

    fn clock_of(id: i64) -> u64 {
        u64::try_from(id >> NODE_BITS).unwrap()
    }

    fn wall_clock() -> u64 {
        u64::try_from(crate::now_ms() - EPOCH_MS).unwrap() * TICKS_PER_MS
    }

    #[test]
    fn ids_are_javascript_safe_increasing_and_keep_the_node() {
        for node in [0, 5, MAX_NODE] {
            let ids = MessageIds::new(node);
            let mut prev = 0;
            for _ in 0..100_000 {
                let id = ids.next();
                assert!(id > prev, "{id} after {prev}");
                assert!(id <= MAX_SAFE_ID, "{id}");
                assert_eq!(node_of(id), i64::from(node));
                prev = id;
            }
        }
        // The layout's own bound: the largest clock value and node number make 2^53 - 1.
        assert_eq!(
            ((1i64 << CLOCK_BITS) - 1) << NODE_BITS | i64::from(MAX_NODE),
            MAX_SAFE_ID
        );
    }

    #[test]
    fn ids_follow_the_wall_clock_when_not_outrun() {
        let before = wall_clock();
        let id = MessageIds::new(1).next();
        let after = wall_clock();
        assert!((before..=after).contains(&clock_of(id)), "{id}");
    }

    #[test]
    fn two_nodes_never_collide() {
        let a = Arc::new(MessageIds::new(1));
        let b = Arc::new(MessageIds::new(2));
        // Both at once, so their clocks overlap.
        let draw = |ids: Arc<MessageIds>| {
            std::thread::spawn(move || -> Vec<i64> { (0..200_000).map(|_| ids.next()).collect() })
        };
        let (ta, tb) = (draw(Arc::clone(&a)), draw(Arc::clone(&b)));
        let (a_ids, b_ids) = (ta.join().unwrap(), tb.join().unwrap());
        let mut all: std::collections::HashSet<i64> = a_ids.iter().copied().collect();
        let overlap_low = a_ids[0].max(b_ids[0]) >> NODE_BITS;
        let overlap_high = a_ids[a_ids.len() - 1].min(b_ids[b_ids.len() - 1]) >> NODE_BITS;
        assert!(overlap_low < overlap_high, "the two ranges did not overlap");
        for id in &b_ids {
            assert!(all.insert(*id), "{id} given by both nodes");
        }
        assert_eq!(all.len(), 400_000);
    }

    #[test]
    fn concurrent_callers_get_distinct_increasing_ids() {
        let ids = Arc::new(MessageIds::new(3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || (0..50_000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let got = t.join().unwrap();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "not increasing per caller"
            );
            for id in got {
                assert!(all.insert(id), "{id} given twice");
            }
        }
        assert_eq!(all.len(), 200_000);
    }

    /// The wall clock of `a_clock_stepping_back_does_not_take_ids_back` (each test that steps
    /// the clock has its own, as tests run at once).
    static STEPPED: AtomicI64 = AtomicI64::new(0);

    fn stepped() -> i64 {
        STEPPED.load(Ordering::Relaxed)
    }

    #[test]
    fn a_clock_stepping_back_does_not_take_ids_back() {
        STEPPED.store(EPOCH_MS + 10_000_000, Ordering::Relaxed);
        let ids = MessageIds::with_clock(7, stepped);
        let first = ids.next();
        // An hour back.
        STEPPED.store(EPOCH_MS + 10_000_000 - 3_600_000, Ordering::Relaxed);
        let second = ids.next();
        let third = ids.next();
        assert_eq!(clock_of(second), clock_of(first) + 1);
        assert_eq!(clock_of(third), clock_of(first) + 2);
        assert_eq!(node_of(third), 7);
    }

    fn an_hour_ago() -> i64 {
        crate::now_ms() - 3_600_000
    }

    #[test]
    fn a_restart_after_running_ahead_starts_above_the_last_id() {
        let dir = tempfile::tempdir().unwrap();
        // Two million ids at once: far more than 16 a millisecond, so the clock runs ahead of
        // the wall clock by about two minutes, and the mark is rewritten on the way.
        let (last, ahead) = {
            let ids = MessageIds::open(4, dir.path()).unwrap();
            let mut last = 0;
            for _ in 0..2_000_000 {
                last = ids.next();
            }
            (last, clock_of(last).saturating_sub(wall_clock()))
        };
        assert!(
            ahead > 60_000 * TICKS_PER_MS,
            "the clock did not run a minute ahead ({ahead})"
        );
        // Without the mark, a restart now would go back.
        assert!(MessageIds::new(4).next() < last);
        // With it, the restarted node goes on above its last id, on the same node.
        let reopened = MessageIds::open(4, dir.path()).unwrap();
        let first = reopened.next();
        assert!(first > last, "{first} after {last}");
        assert!(first <= MAX_SAFE_ID);
        assert_eq!(node_of(first), 4);
        // And so does the next restart, with the clock an hour back.
        drop(reopened);
        let stepped_back = MessageIds::open_with_clock(4, dir.path(), an_hour_ago).unwrap();
        assert!(stepped_back.next() > first);
    }

    #[test]
    fn a_mark_that_is_not_a_number_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARK_FILE), "garbage\n").unwrap();
        let err = MessageIds::open(0, dir.path()).unwrap_err().to_string();
        assert!(err.contains(MARK_FILE) && err.contains("garbage"), "{err}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = MessageIds::open(0, &file).unwrap_err().to_string();
        assert!(err.contains("not-a-dir"), "{err}");
    }
}
