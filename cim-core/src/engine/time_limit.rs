//! [`within`]: a time limit that costs nothing when the work is already done.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::error::Elapsed;

/// Runs `work` within `limit`, arming the timer only if `work` is not ready at its first poll.
/// Most writes and small request bodies complete at once, and a timer costs each of them a clock
/// read and a trip to the runtime's timer wheel; the work that has to wait is held to `limit`
/// from the moment it first waits.
///
/// The timer is boxed: held in place, it would make every future that holds this one (a
/// connection's write path) larger by its size, needed or not.
pub async fn within<F: Future>(limit: Duration, work: F) -> Result<F::Output, Elapsed> {
    let mut work = std::pin::pin!(work);
    match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => Box::pin(tokio::time::timeout(limit, work)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller holds the timer through a pointer: the limited future is smaller, by about a
    /// timer, than one that holds the timer in place.
    #[test]
    fn the_timer_is_not_held_in_place() {
        async fn in_place<F: Future>(limit: Duration, work: F) -> Result<F::Output, Elapsed> {
            let mut work = std::pin::pin!(work);
            match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
                Poll::Ready(done) => Ok(done),
                Poll::Pending => tokio::time::timeout(limit, work).await,
            }
        }
        let work = || async { 7 };
        let boxed = std::mem::size_of_val(&within(Duration::ZERO, work()));
        let held = std::mem::size_of_val(&in_place(Duration::ZERO, work()));
        let sleep = std::mem::size_of::<tokio::time::Sleep>();
        assert!(
            boxed + sleep <= held + 8,
            "{boxed} against {held}, a timer {sleep}"
        );
    }

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
