//! Bounded waits: poll a check until it yields a value, or fail with what it last saw.
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What one poll found: done with a value, or not yet (and why).
pub enum Poll<T> {
    Done(T),
    NotYet(String),
}

/// Polls `check` every `every` until it is done, fails, or `timeout` passes; the timeout error
/// names `what` and the last "not yet" reason.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(Poll::Done(v)) => return Ok(v),
            Ok(Poll::NotYet(why)) => why,
            // API hiccups (a restarting containerd, a leader change) are retried, not fatal.
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// [`until`] with a one-second poll.
pub async fn within<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    until(what, timeout, Duration::from_secs(1), check).await
}
