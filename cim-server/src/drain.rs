//! Draining a node (lame duck): how the closes are paced, what a drain reports, and the switch
//! that the HTTP API (`POST /api/v1/admin/drain`) flips for the binary to act on.
//!
//! A drain closes the node's connections spread evenly over a window (`shutdown.drain_ms`), so
//! that their clients come back — on other nodes, through dispatch — at a steady rate instead of
//! all at once. The closes run in rounds, each closing a fixed share, with a pause of a tick (at
//! least [`MIN_TICK`]) after each: rounds are never closer than a tick, so a stalled process
//! closes no faster than planned afterwards — it only takes a little longer.

use std::time::Duration;

use cim_core::ConnectionHandle;
use cim_core::engine::CloseRequest;
use tokio::sync::watch;
use tokio::time::Instant;

/// The shortest time between two rounds of closes.
pub const MIN_TICK: Duration = Duration::from_millis(10);

/// How `n` closes are spread over `window`: every `tick`, `per_tick` of them (the last round
/// may close fewer). A zero window, or nothing to close, is one round.
pub fn pace(n: usize, window: Duration) -> (Duration, usize) {
    if n == 0 || window.is_zero() {
        return (Duration::ZERO, n.max(1));
    }
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let tick = (window / n32).max(MIN_TICK);
    // ceil(n · tick / window): enough per round to be done within the window.
    let per_tick = (n as u128 * tick.as_nanos()).div_ceil(window.as_nanos().max(1));
    (tick, usize::try_from(per_tick).unwrap_or(n).clamp(1, n))
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when the drain began (each was asked to close).
    pub connections: usize,
    /// From the first close to the last.
    pub closing_time: Duration,
    /// The most closes within any one second (a window of one second anywhere in the drain).
    pub max_per_second: usize,
    /// Connections still open when the node gave up waiting (the deadline passed).
    pub left_open: usize,
}

impl DrainReport {
    /// The closes per second the window allows at most: rounds of [`pace`] a tick apart, as
    /// many as fit in one second (about `connections / window`, rounded up to whole rounds).
    pub fn allowed_per_second(connections: usize, window: Duration) -> usize {
        let (tick, per_tick) = pace(connections, window);
        if tick.is_zero() {
            return connections;
        }
        let ticks = Duration::from_secs(1).as_nanos().div_ceil(tick.as_nanos());
        per_tick.saturating_mul(usize::try_from(ticks).unwrap_or(usize::MAX))
    }
}

/// The most events within any window of one second, given when each round happened and how
/// many events it had (in order).
pub fn max_per_second(rounds: &[(Duration, usize)]) -> usize {
    let second = Duration::from_secs(1);
    let (mut best, mut sum, mut first) = (0, 0, 0);
    for (i, &(at, n)) in rounds.iter().enumerate() {
        sum += n;
        // Keep rounds within [at - 1 s, at]: a half-open window of one second ending after `at`.
        while let Some(&(old, k)) = rounds.get(first) {
            if first < i && at.saturating_sub(old) >= second {
                sum -= k;
                first += 1;
            } else {
                break;
            }
        }
        best = best.max(sum);
    }
    best
}

/// Closes `handles` spread over `window` (see [`pace`]): each writes what is queued, then
/// closes. Returns when every close was asked for, with when each round happened (rounds at
/// least a tick apart).
pub async fn close_spread(
    handles: Vec<ConnectionHandle>,
    window: Duration,
) -> Vec<(Duration, usize)> {
    let (tick, per_tick) = pace(handles.len(), window);
    let start = Instant::now();
    let mut rounds: Vec<(Duration, usize)> = Vec::new();
    for chunk in handles.chunks(per_tick) {
        if !rounds.is_empty() {
            // A pause after every round, not a schedule: a late round is never made up for
            // by a quicker one after it.
            tokio::time::sleep(tick).await;
        }
        for h in chunk {
            h.close(CloseRequest::Shutdown);
        }
        rounds.push((start.elapsed(), chunk.len()));
    }
    rounds
}

/// Whether a drain was asked for (by the HTTP API); the binary waits on it beside its signals.
#[derive(Clone, Debug)]
pub struct DrainSwitch {
    tx: watch::Sender<bool>,
    /// `shutdown.drain_ms`, for the API's answer.
    window: Duration,
}

impl DrainSwitch {
    /// A switch for drains over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            tx: watch::channel(false).0,
            window,
        }
    }

    /// Asks for a drain; returns whether this was the first request.
    pub fn request(&self) -> bool {
        !self.tx.send_replace(true)
    }

    /// Whether a drain was asked for.
    pub fn requested(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once a drain is asked for.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|on| *on).await;
    }

    /// The window the drain's closes are spread over.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cim_core::engine::ConnId;

    #[test]
    fn closes_are_spread_over_the_window_in_rounds_of_at_least_the_minimum_tick() {
        let ms = Duration::from_millis;
        // 30 over 3 s: one every 100 ms.
        assert_eq!(pace(30, ms(3000)), (ms(100), 1));
        // 100 000 over 30 s: rounds of 34 every 10 ms.
        assert_eq!(pace(100_000, ms(30_000)), (ms(10), 34));
        // Fewer than the window has ticks: one at a time, further apart.
        assert_eq!(pace(4, ms(1000)), (ms(250), 1));
        // A zero window, or nothing to close: one round.
        assert_eq!(pace(500, Duration::ZERO), (Duration::ZERO, 500));
        assert_eq!(pace(0, ms(1000)), (Duration::ZERO, 1));
        for (n, w) in [(1, 1), (7, 1000), (999, 50), (12_345, 30_000), (3, 0)] {
            let (tick, per) = pace(n, ms(w));
            let rounds = n.div_ceil(per) as u32;
            // Done within the window (the first round closes at once).
            assert!(
                tick * rounds.saturating_sub(1) <= ms(w).max(tick),
                "{n} {w}"
            );
        }
    }

    #[test]
    fn the_busiest_second_is_counted_over_a_sliding_window() {
        let ms = Duration::from_millis;
        assert_eq!(max_per_second(&[]), 0);
        assert_eq!(max_per_second(&[(ms(0), 5)]), 5);
        let even: Vec<_> = (0..30).map(|i| (ms(i * 100), 1)).collect();
        assert_eq!(max_per_second(&even), 10);
        // A burst in the middle counts, whatever the second it straddles.
        let burst = [
            (ms(0), 1),
            (ms(1500), 3),
            (ms(2300), 4),
            (ms(2400), 1),
            (ms(2600), 2),
        ];
        assert_eq!(max_per_second(&burst), 8);
        assert_eq!(DrainReport::allowed_per_second(30, ms(3000)), 10);
        assert_eq!(DrainReport::allowed_per_second(100_000, ms(30_000)), 3400);
        assert_eq!(DrainReport::allowed_per_second(50, Duration::ZERO), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn closes_follow_the_pace() {
        let mut handles = Vec::new();
        let mut queues = Vec::new();
        for i in 0..30 {
            let (h, rx) = ConnectionHandle::new(ConnId(i), 4);
            handles.push(h);
            queues.push(rx);
        }
        let rounds = close_spread(handles.clone(), Duration::from_millis(3000)).await;
        assert_eq!(rounds.len(), 30);
        assert!(handles.iter().all(ConnectionHandle::is_closed));
        assert_eq!(rounds.first().unwrap().0, Duration::ZERO);
        assert_eq!(rounds.last().unwrap().0, Duration::from_millis(2900));
        assert_eq!(max_per_second(&rounds), 10);
        assert!(
            close_spread(Vec::new(), Duration::from_secs(1))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn the_switch_flips_once() {
        let s = DrainSwitch::new(Duration::from_secs(3));
        assert!(!s.requested());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        assert!(s.request());
        assert!(!s.request(), "a second request is not the first");
        waiter.await.unwrap();
        assert!(s.requested());
        assert_eq!(s.window(), Duration::from_secs(3));
    }
}
