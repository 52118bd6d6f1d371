//! Refusing connections cheaply: [`refuse_busy`] answers and closes without a task;
//! [`RefusalLog`] counts refusals and logs the count at most every ten seconds, so a flood of
//! connections writes a few log lines rather than one per connection; [`Refusals`] is one
//! listener's: the `cim_connections_refused_total{listener,reason}` counter of each reason
//! (registered once, when the listener starts) and a rate-limited log of each.

use std::fmt::Display;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::Counter;
use tokio::net::TcpStream;
use tracing::warn;

/// How often refusals are logged at most (with their count).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The name of the counter of refused connections.
pub(crate) const REFUSED_METRIC: &str = "cim_connections_refused_total";

/// Counts refused connections and logs the count at most once per ten seconds.
pub(crate) struct RefusalLog {
    what: String,
    limit: Option<usize>,
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// A log of refusals described by `what`, over `limit`.
    pub(crate) fn new(what: impl Into<String>, limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::of(what)
        }
    }

    /// A log of refusals described by `what`, with no limit to show.
    pub(crate) fn of(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            limit: None,
            last: None,
            unlogged: 0,
        }
    }

    /// Whether a line is due: one more refusal, logged when the last line was ten seconds ago
    /// or more (the first at once). Returns the count to log.
    fn due(&mut self) -> Option<u64> {
        self.unlogged += 1;
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            self.last = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            None
        }
    }

    /// One more refusal: logged with the count of those since the last line, when that was
    /// ten seconds ago or more (the first at once).
    pub(crate) fn refused(&mut self) {
        if let Some(refused) = self.due() {
            warn!(refused, limit = self.limit, "{}", self.what);
        }
    }

    /// One more refusal, of `peer` for `why`: logged as [`refused`](Self::refused) is, with
    /// the last refusal's address and reason.
    pub(crate) fn refused_because(&mut self, peer: SocketAddr, why: &dyn Display) {
        if let Some(refused) = self.due() {
            warn!(refused, last_peer = %peer, last_reason = %why, "{}", self.what);
        }
    }
}

/// Why a connection was refused: the `reason` label of the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No connection slot left.
    MaxConnections,
    /// The client's address is denied, or not allowed.
    Denied,
    /// A PROXY header from an address that is not a trusted proxy's.
    UntrustedProxy,
    /// A trusted proxy's connection without a usable PROXY header (missing, malformed,
    /// oversized, or not whole within the bind timeout).
    ProxyHeader,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::MaxConnections,
        Reason::Denied,
        Reason::UntrustedProxy,
        Reason::ProxyHeader,
    ];

    /// The label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections",
            Reason::Denied => "denied",
            Reason::UntrustedProxy => "untrusted_proxy",
            Reason::ProxyHeader => "proxy_header",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The refusals of one listener: a counter and a rate-limited log per reason.
pub(crate) struct Refusals {
    counters: [Counter; 4],
    /// The logs of every reason but `MaxConnections` (whose log is shared by the listeners
    /// that share the limit).
    logs: [Mutex<RefusalLog>; 3],
}

impl Refusals {
    /// The refusals of the listener named `listener` (`tcp`, `wss`, `http`, …), its counters
    /// registered with the metrics recorder installed now.
    pub(crate) fn new(listener: &'static str) -> Self {
        metrics::describe_counter!(
            REFUSED_METRIC,
            metrics::Unit::Count,
            "Connections closed before their protocol started, by listener and reason"
        );
        let log = |what: &str| Mutex::new(RefusalLog::of(format!("{listener}: {what}")));
        Self {
            counters: Reason::ALL.map(|r| {
                metrics::counter!(REFUSED_METRIC, "listener" => listener, "reason" => r.label())
            }),
            logs: [
                log("connections refused: the client's address is denied"),
                log("connections refused: a PROXY header from an address that is not a trusted proxy"),
                log("connections refused: no usable PROXY header from a trusted proxy"),
            ],
        }
    }

    /// Counts one refusal for `reason` (logged elsewhere).
    pub(crate) fn count(&self, reason: Reason) {
        if let Some(c) = self.counters.get(reason.index()) {
            c.increment(1);
        }
    }

    /// Counts and logs (rate-limited) one refusal of `peer` for `reason`, `why` in detail.
    pub(crate) fn refuse(&self, reason: Reason, peer: SocketAddr, why: &dyn Display) {
        self.count(reason);
        let Some(log) = reason.index().checked_sub(1).and_then(|i| self.logs.get(i)) else {
            return;
        };
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .refused_because(peer, why);
    }
}

/// Answers a connection over the limit with `answer` (empty: none) and closes it, without a
/// task: what has arrived of its request is read (so the close is less likely to reset the
/// connection before the client reads the answer), the answer is written to the empty send
/// buffer, and the socket closed.
pub(crate) fn refuse_busy(stream: TcpStream, answer: &[u8]) {
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let mut arrived = [0u8; 4096];
    let _ = stream.read(&mut arrived);
    if !answer.is_empty() {
        let _ = stream.write(answer);
    }
}
