//! Refusing connections over a limit cheaply: [`refuse_busy`] answers and closes without a
//! task, and [`RefusalLog`] counts refusals and logs the count at most every ten seconds, so a
//! flood of connections writes a few log lines rather than one per connection.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::warn;

/// How often refusals are logged at most (with their count).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts refused connections and logs the count at most once per ten seconds.
pub(crate) struct RefusalLog {
    what: &'static str,
    limit: usize,
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// A log of refusals described by `what`, over `limit`.
    pub(crate) fn new(what: &'static str, limit: usize) -> Self {
        Self {
            what,
            limit,
            last: None,
            unlogged: 0,
        }
    }

    /// One more refusal: logged with the count of those since the last line, when that was
    /// ten seconds ago or more (the first at once).
    pub(crate) fn refused(&mut self) {
        self.unlogged += 1;
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            warn!(refused = self.unlogged, limit = self.limit, "{}", self.what);
            self.unlogged = 0;
            self.last = Some(now);
        }
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
