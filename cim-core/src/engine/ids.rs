//! [`MessageIds`]: the ids the server gives messages.

use std::sync::atomic::{AtomicI64, Ordering};

/// Message ids: milliseconds since the Unix epoch in the high bits, a 10-bit node number and a
/// 12-bit counter below, strictly increasing within a node even if the clock steps back.
#[derive(Debug)]
pub struct MessageIds {
    last: AtomicI64,
    node: i64,
}

impl MessageIds {
    /// Ids for node number `node` (its low 10 bits are used).
    pub fn new(node: u16) -> Self {
        Self {
            last: AtomicI64::new(0),
            node: i64::from(node & 0x3ff),
        }
    }

    /// The next id.
    pub fn next(&self) -> i64 {
        let floor = (crate::now_ms() << 22) | (self.node << 12);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            // Within one millisecond (or after a clock step back) count up from the last id;
            // the node bits are kept by stepping over them.
            let mut next = floor.max(prev + 1);
            if (next >> 12) & 0x3ff != self.node {
                next = ((next >> 22) + 1) << 22 | (self.node << 12);
            }
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_keep_the_node() {
        let ids = MessageIds::new(5);
        let mut prev = 0;
        for _ in 0..100_000 {
            let id = ids.next();
            assert!(id > prev);
            assert_eq!((id >> 12) & 0x3ff, 5);
            prev = id;
        }
    }
}
