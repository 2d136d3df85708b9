//! Waiting for a condition that becomes true asynchronously (configuration reaching Envoy, a store
//! catching up with the fake API server, a stream's state being recorded): the one [`eventually`].
//!
//! The check is an async closure returning `anyhow::Result`; its last error says what it saw instead
//! and goes into the timeout's message. Checks that answer `Option` adapt with [`some`] (a
//! synchronous closure) or [`some_async`] (an async one); a `bool` with [`holds`].

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::FutureExt;
use futures::future::{Map, Ready, ready};

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

/// `Ok(())` if `cond`, else an error saying the condition does not hold yet (for boolean checks in
/// [`eventually`]).
pub fn holds(cond: bool) -> anyhow::Result<()> {
    if cond { Ok(()) } else { Err(anyhow!("condition not met yet")) }
}

fn not_yet<T>(v: Option<T>) -> anyhow::Result<T> {
    v.ok_or_else(|| anyhow!("not there yet"))
}

/// A synchronous check answering `Some(value)` once the condition holds, as an [`eventually`] check:
/// `eventually("the object", WAIT, some(|| store.get(key))).await`.
pub fn some<T>(mut check: impl FnMut() -> Option<T>) -> impl FnMut() -> Ready<anyhow::Result<T>> {
    move || ready(not_yet(check()))
}

/// An async check answering `Some(value)` once the condition holds, as an [`eventually`] check:
/// `eventually("the port", WAIT, some_async(|| raw_get(port, "/ready"))).await`.
#[allow(clippy::type_complexity)]
pub fn some_async<T, F, Fut>(mut check: F) -> impl FnMut() -> Map<Fut, fn(Option<T>) -> anyhow::Result<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    move || check().map(not_yet as fn(Option<T>) -> anyhow::Result<T>)
}
