//! The heartbeat and idle rules of a connection (docs/protocol.md section 6) as a plain state
//! machine: it is told the time and answers what to do, so its behaviour is tested without
//! sleeping. The connection task is a thin driver around it.

use std::time::Duration;

use tokio::time::Instant;

/// Heartbeat and idle settings of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// With nothing written for this long, an unbound connection is closed and a bound one is
    /// sent a PING (default 45 s).
    pub write_idle: Duration,
    /// With nothing read for this long, the connection is closed if it has missed
    /// `max_pong_timeout` PINGs (default 60 s).
    pub read_idle: Duration,
    /// PINGs without an answer before the connection is dropped (default 3).
    pub max_pong_timeout: u32,
    /// Time allowed between connecting and binding (default 30 s).
    pub bind_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            write_idle: Duration::from_secs(45),
            read_idle: Duration::from_secs(60),
            max_pong_timeout: 3,
            bind_timeout: Duration::from_secs(30),
        }
    }
}

/// What the timers ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing is due.
    Nothing,
    /// Send a PING.
    Ping,
    /// Close the connection.
    Close(IdleReason),
}

/// Why the timers closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleReason {
    /// The connection did not bind in time.
    BindTimeout,
    /// Nothing was written to an unbound connection for `write_idle`.
    UnboundIdle,
    /// Nothing was read for `read_idle` after `missed` unanswered PINGs.
    NoPong {
        /// PINGs that went unanswered.
        missed: u32,
    },
}

impl std::fmt::Display for IdleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdleReason::BindTimeout => f.write_str("no bind within the bind timeout"),
            IdleReason::UnboundIdle => f.write_str("idle and never bound"),
            IdleReason::NoPong { missed } => write!(f, "no answer to {missed} heartbeats"),
        }
    }
}

/// One connection's heartbeat state.
///
/// It is one of the few parts every idle connection keeps, so it is compact: times are
/// milliseconds since the connection opened.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    opened: Instant,
    write_idle: u32,
    read_idle: u32,
    max_pong_timeout: u32,
    missed_pongs: u32,
    /// [`BOUND`] once the connection has bound.
    bind_deadline: u64,
    read_deadline: u64,
    write_deadline: u64,
    /// The last read or write.
    active: u64,
}

/// A deadline past what an `Instant` can hold is as good as never: a year on.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `bind_deadline` of a bound connection.
const BOUND: u64 = u64::MAX;

/// A duration in whole milliseconds (at most `u32::MAX`, about 49 days).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Heartbeat {
    /// The state of a connection opened at `now`.
    pub fn new(timers: Timers, now: Instant) -> Self {
        Self {
            opened: now,
            write_idle: millis(timers.write_idle),
            read_idle: millis(timers.read_idle),
            max_pong_timeout: timers.max_pong_timeout,
            missed_pongs: 0,
            bind_deadline: u64::from(millis(timers.bind_timeout)),
            read_deadline: u64::from(millis(timers.read_idle)),
            write_deadline: u64::from(millis(timers.write_idle)),
            active: 0,
        }
    }

    /// `now` in milliseconds since the connection opened, rounded down.
    pub(crate) fn millis_at(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.opened).as_millis();
        u64::try_from(ms).unwrap_or(BOUND - 1)
    }

    /// Something was read at `now`: the missed-PING count starts again.
    pub fn on_read(&mut self, now: Instant) {
        self.active = self.millis_at(now);
        self.read_deadline = self.active.saturating_add(u64::from(self.read_idle));
        self.missed_pongs = 0;
    }

    /// Something was written at `now`.
    pub fn on_write(&mut self, now: Instant) {
        self.active = self.millis_at(now);
        self.write_deadline = self.active.saturating_add(u64::from(self.write_idle));
    }

    /// The instant `ms` milliseconds after the connection opened (a year on at the most, as
    /// [`next_deadline`](Self::next_deadline)).
    pub(crate) fn instant(&self, ms: u64) -> Instant {
        let wait = Duration::from_millis(ms).min(FAR);
        self.opened.checked_add(wait).unwrap_or(self.opened)
    }

    /// How long nothing has been read or written, at `now` (since the connection opened, if
    /// nothing ever was).
    pub fn idle_for(&self, now: Instant) -> Duration {
        Duration::from_millis(self.millis_at(now).saturating_sub(self.active))
    }

    /// The connection bound: the bind timeout no longer applies, and idle means PING.
    pub fn on_bound(&mut self) {
        self.bind_deadline = BOUND;
    }

    /// Whether the connection has bound.
    pub fn is_bound(&self) -> bool {
        self.bind_deadline == BOUND
    }

    /// PINGs sent since the last read.
    pub fn missed_pongs(&self) -> u32 {
        self.missed_pongs
    }

    /// When [`poll`](Self::poll) next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let ms = self
            .read_deadline
            .min(self.write_deadline)
            .min(self.bind_deadline);
        self.instant(ms)
    }

    /// What is due at `now`. A returned [`TimerAction::Ping`] counts as sent; the caller
    /// writes it (and reports the write with [`on_write`](Self::on_write)).
    pub fn poll(&mut self, now: Instant) -> TimerAction {
        let now = self.millis_at(now);
        if !self.is_bound() && now >= self.bind_deadline {
            return TimerAction::Close(IdleReason::BindTimeout);
        }
        if now >= self.read_deadline {
            if self.missed_pongs >= self.max_pong_timeout {
                return TimerAction::Close(IdleReason::NoPong {
                    missed: self.missed_pongs,
                });
            }
            self.read_deadline = now.saturating_add(u64::from(self.read_idle));
        }
        if now >= self.write_deadline {
            if !self.is_bound() {
                return TimerAction::Close(IdleReason::UnboundIdle);
            }
            self.missed_pongs = self.missed_pongs.saturating_add(1);
            self.write_deadline = now.saturating_add(u64::from(self.write_idle));
            return TimerAction::Ping;
        }
        TimerAction::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task holds one: the opening instant, three `u32` settings and the
    /// missed count, three `u64` deadlines and the last read or write in milliseconds since
    /// opening. 64 bytes.
    #[test]
    fn a_heartbeat_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Heartbeat>(), 64);
    }

    #[test]
    fn idle_for_counts_from_the_last_read_or_write() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Timers::default(), t0);
        assert_eq!(hb.idle_for(t0 + secs(3)), secs(3));
        hb.on_read(t0 + secs(5));
        assert_eq!(hb.idle_for(t0 + secs(7)), secs(2));
        hb.on_write(t0 + secs(8));
        assert_eq!(hb.idle_for(t0 + secs(8)), Duration::ZERO);
        // A PING the timers ask for is not counted until it is written.
        let _ = hb.poll(t0 + secs(60));
        assert_eq!(hb.idle_for(t0 + secs(60)), secs(52));
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs the state machine second by second until it closes, answering nothing.
    fn run_silent(
        hb: &mut Heartbeat,
        t0: Instant,
        limit: u64,
    ) -> (Vec<u64>, Option<(u64, IdleReason)>) {
        let mut pings = Vec::new();
        for s in 1..=limit {
            let now = t0 + secs(s);
            loop {
                match hb.poll(now) {
                    TimerAction::Nothing => break,
                    TimerAction::Ping => {
                        pings.push(s);
                        hb.on_write(now);
                    }
                    TimerAction::Close(r) => return (pings, Some((s, r))),
                }
            }
        }
        (pings, None)
    }

    #[test]
    fn defaults_ping_three_times_then_close() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Timers::default(), t0);
        hb.on_bound();
        let (pings, closed) = run_silent(&mut hb, t0, 600);
        assert_eq!(pings, [45, 90, 135]);
        assert_eq!(closed, Some((180, IdleReason::NoPong { missed: 3 })));
    }

    #[test]
    fn answers_keep_it_open() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Timers::default(), t0);
        hb.on_bound();
        for s in 1..=1000 {
            let now = t0 + secs(s);
            match hb.poll(now) {
                TimerAction::Ping => {
                    hb.on_write(now);
                    hb.on_read(now); // the PONG
                }
                TimerAction::Close(r) => panic!("closed at {s}: {r}"),
                TimerAction::Nothing => {}
            }
        }
        assert_eq!(hb.missed_pongs(), 0);
    }

    #[test]
    fn unbound_connections_close() {
        let t0 = Instant::now();
        let timers = Timers {
            bind_timeout: secs(100),
            ..Timers::default()
        };
        let mut hb = Heartbeat::new(timers, t0);
        assert_eq!(
            run_silent(&mut hb, t0, 600).1,
            Some((45, IdleReason::UnboundIdle))
        );
        let mut hb = Heartbeat::new(Timers::default(), t0);
        assert_eq!(
            run_silent(&mut hb, t0, 600).1,
            Some((30, IdleReason::BindTimeout))
        );
    }

    #[test]
    fn writes_postpone_pings() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Timers::default(), t0);
        hb.on_bound();
        hb.on_write(t0 + secs(40));
        assert_eq!(hb.poll(t0 + secs(45)), TimerAction::Nothing);
        assert_eq!(hb.next_deadline(), t0 + secs(60));
        assert_eq!(hb.poll(t0 + secs(85)), TimerAction::Ping);
    }

    #[test]
    fn huge_timers_never_overflow() {
        let t0 = Instant::now();
        let timers = Timers {
            write_idle: Duration::MAX,
            read_idle: Duration::MAX,
            max_pong_timeout: 3,
            bind_timeout: Duration::MAX,
        };
        let mut hb = Heartbeat::new(timers, t0);
        assert!(hb.next_deadline() > t0 + secs(3600));
        assert_eq!(hb.poll(t0 + secs(86_400)), TimerAction::Nothing);
        hb.on_bound();
        hb.on_write(t0 + secs(10));
        hb.on_read(t0 + secs(10));
        assert!(hb.next_deadline() > t0 + secs(3600));
    }
}
