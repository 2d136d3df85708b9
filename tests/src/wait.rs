//! Waiting for a condition that becomes true asynchronously (configuration reaching Envoy).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;

/// How long configuration may take to reach Envoy before a test fails. Generous for 2 busy cores;
/// convergence is normally well under a second.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Polls `check` every 50 ms until it returns `Ok`, or fails after `timeout` with `what` and the
/// last error `check` gave (which should say what it saw instead).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(anyhow!("timed out after {timeout:?} waiting for {what}; last check: {e:#}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
