//! Dropping copies of messages seen before, by id, within a bounded window.

use std::collections::{HashSet, VecDeque};

/// Ids of recent messages, to drop the copies a reconnect can bring (a message sent again
/// because its receipt had not reached the server, or routed again after a cluster node died).
/// Holds the last `cap` ids (none with `cap` 0).
pub(super) struct Seen {
    ids: HashSet<i64>,
    order: VecDeque<i64>,
    cap: usize,
}

impl Seen {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Whether `id` is new (and remembers it).
    pub(super) fn first_time(&mut self, id: i64) -> bool {
        if self.cap == 0 {
            return true;
        }
        if id == 0 || !self.ids.insert(id) {
            return id == 0;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_the_last_ids_and_no_more() {
        let mut seen = Seen::new(3);
        for id in [1, 2, 3] {
            assert!(seen.first_time(id));
        }
        assert!(!seen.first_time(1), "within the window: a copy");
        assert!(seen.first_time(4), "pushes 1 out");
        assert!(seen.first_time(1), "beyond the window: new again");
        assert!(!seen.first_time(4));
        // Messages without an id are never taken for copies.
        assert!(seen.first_time(0) && seen.first_time(0));
        let mut off = Seen::new(0);
        assert!(
            off.first_time(7) && off.first_time(7),
            "a window of 0 drops nothing"
        );
        assert!(off.ids.is_empty());
    }
}
