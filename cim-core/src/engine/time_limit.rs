//! [`within`]: a time limit that costs nothing when the work is already done.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::error::Elapsed;

/// Runs `work` within `limit`, arming the timer only if `work` is not ready at its first poll.
/// Most writes and small request bodies complete at once, and a timer costs each of them a clock
/// read and a trip to the runtime's timer wheel; the work that has to wait is held to `limit`
/// from the moment it first waits.
pub async fn within<F: Future>(limit: Duration, work: F) -> Result<F::Output, Elapsed> {
    let mut work = std::pin::pin!(work);
    match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout(limit, work).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_work_needs_no_time_and_waiting_work_is_held_to_the_limit() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await, Ok(7));
        let slow = within(
            Duration::from_secs(1),
            tokio::time::sleep(Duration::from_secs(5)),
        );
        assert!(slow.await.is_err());
        let in_time = within(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_secs(1)),
        );
        assert!(in_time.await.is_ok());
    }
}
