//! End-to-end resilience features of VirtualService through a real Envoy sidecar: fault injection
//! (abort and delay), retries on 503 and `attempts: 0`, request timeouts, and traffic mirroring.
//! Backends misbehave on purpose (fail the next N requests, answer late) and count what they get.

use std::time::Duration;

use anyhow::{bail, ensure};
use sailplane_tests::traffic::{Backend, Mesh, expect_backend, report, send, wait_virtual_host_with};
use sailplane_tests::wait::CONVERGE;
use sailplane_tests::{ConfigDir, eventually};

/// The fault delay the VirtualService asks for.
const FAULT_DELAY: Duration = Duration::from_millis(500);
/// How much earlier than [`FAULT_DELAY`] a delayed reply may arrive: Envoy's timers work in whole
/// milliseconds and were seen firing a millisecond before the client's own clock said 500 ms.
const TIMER_SLACK: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_and_delay_are_injected() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let ratings = Backend::start(&dir, "ratings").await?;
    dir.write(
        "ratings.vs.yaml",
        r#"
# Chaos testing: /broken always fails with 418 without reaching ratings, /slow is held back half a
# second before it is forwarded, everything else is untouched.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: default
spec:
  hosts:
  - ratings
  http:
  - name: broken
    match:
    - uri:
        prefix: /broken
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: ratings
  - name: slow
    match:
    - uri:
        prefix: /slow
    fault:
      delay:
        fixedDelay: 500ms
        percentage:
          value: 100
    route:
    - destination:
        host: ratings
  - name: healthy
    route:
    - destination:
        host: ratings
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &ratings.vhost(), "\"name\":\"slow\"").await?;

    // Abort: Envoy answers itself, the backend never sees the request.
    for _ in 0..5 {
        let call = ratings.call("/broken/stars");
        let r = send(&call).await?;
        ensure!(
            r.status == 418 && r.backend().is_none(),
            "{}",
            report(&call, "status 418 from Envoy's fault filter", &r)
        );
    }
    ensure!(ratings.echo.hits() == 0, "aborted requests reached the backend: {} hits", ratings.echo.hits());

    // Delay: the backend answers, but not before the fixed delay; untouched routes are fast.
    let mut fastest_healthy = Duration::MAX;
    for _ in 0..3 {
        let r = expect_backend(&ratings.call("/stars"), "ratings").await?;
        fastest_healthy = fastest_healthy.min(r.elapsed);
    }
    for _ in 0..3 {
        let call = ratings.call("/slow/stars");
        let r = expect_backend(&call, "ratings").await?;
        ensure!(
            r.elapsed + TIMER_SLACK >= FAULT_DELAY && r.elapsed < FAULT_DELAY + Duration::from_secs(2),
            "{}",
            report(&call, &format!("status 200 from ratings after at least {} ms", FAULT_DELAY.as_millis()), &r)
        );
    }
    ensure!(
        fastest_healthy < Duration::from_millis(300),
        "requests without a fault should be fast, the fastest of 3 took {} ms",
        fastest_healthy.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_503s_unless_disabled() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let inventory = Backend::start(&dir, "inventory").await?;
    let payments = Backend::start(&dir, "payments").await?;
    dir.write(
        "resilience.vs.yaml",
        r#"
# inventory is idempotent: retry 5xx answers up to 3 times. payments is not: never retry.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: inventory
  namespace: default
spec:
  hosts:
  - inventory
  http:
  - name: retry-5xx
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx
    route:
    - destination:
        host: inventory
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: payments
  namespace: default
spec:
  hosts:
  - payments
  http:
  - name: no-retries
    retries:
      attempts: 0
    route:
    - destination:
        host: payments
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &inventory.vhost(), "\"num_retries\":3").await?;
    wait_virtual_host_with(&mesh.envoy, &payments.vhost(), "\"name\":\"no-retries\"").await?;

    // Two failures, then success: with 3 retries the caller never sees the failures.
    inventory.echo.fail_next(2, 503);
    let call = inventory.call("/stock/42");
    let r = send(&call).await?;
    ensure!(
        r.status == 200 && r.backend().as_deref() == Some("inventory") && inventory.echo.hits() == 3,
        "{}\n  backend inventory received {} requests (expected 3: two 503s, then 200)",
        report(&call, "status 200 from inventory after two retried 503s", &r),
        inventory.echo.hits()
    );

    // Without retries the first 503 is the answer, and the backend is asked once.
    payments.echo.fail_next(2, 503);
    let call = payments.call("/charge");
    let r = send(&call).await?;
    let failed = r.echo().and_then(|v| v["failed"].as_bool()) == Some(true);
    ensure!(
        r.status == 503 && failed && payments.echo.hits() == 1,
        "{}\n  backend payments received {} requests (expected 1)",
        report(&call, "status 503 from backend payments (its failure, not retried)", &r),
        payments.echo.hits()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_a_slow_request_with_504() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let reports = Backend::start(&dir, "reports").await?;
    reports.echo.set_delay(Duration::from_secs(2));
    dir.write(
        "reports.vs.yaml",
        r#"
# Callers of reports give up after half a second.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reports
  namespace: default
spec:
  hosts:
  - reports
  http:
  - name: bounded
    timeout: 0.5s
    route:
    - destination:
        host: reports
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &reports.vhost(), "\"name\":\"bounded\"").await?;

    let call = reports.call("/quarterly");
    let r = send(&call).await?;
    ensure!(
        r.status == 504
            && r.elapsed + TIMER_SLACK >= Duration::from_millis(500)
            && r.elapsed < Duration::from_millis(1500),
        "{}",
        report(&call, "status 504 from Envoy after 0.5-1.5 s (the backend needs 2 s)", &r)
    );
    ensure!(r.backend().is_none(), "{}", report(&call, "Envoy's timeout answer, not the backend's", &r));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_backend_receives_a_copy() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let orders = Backend::start(&dir, "orders").await?;
    let next = Backend::start(&dir, "orders-next").await?;
    dir.write(
        "orders.vs.yaml",
        r#"
# Dark launch: every call to orders is also sent to orders-next, whose answers are dropped.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: orders
  namespace: default
spec:
  hosts:
  - orders
  http:
  - name: shadow-next
    route:
    - destination:
        host: orders
    mirror:
      host: orders-next
    mirrorPercentage:
      value: 100.0
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &orders.vhost(), "request_mirror_policies").await?;

    const N: u64 = 10;
    for i in 0..N {
        // The caller only ever sees the primary's answer.
        expect_backend(&orders.call(&format!("/orders/{i}")), "orders").await?;
    }
    // Mirroring is fire-and-forget: the copies may land after the primary answered.
    eventually(&format!("orders-next to receive the {N} mirrored copies"), CONVERGE, || async {
        if next.echo.hits() == N { Ok(()) } else { bail!("orders-next received {} requests", next.echo.hits()) }
    })
    .await?;
    for (i, seen) in next.echo.requests().iter().enumerate() {
        let host = seen["host"].as_str().unwrap_or_default();
        let path = seen["path"].as_str().unwrap_or_default();
        // Envoy marks a shadowed request by suffixing its Host with "-shadow".
        ensure!(
            host == "orders-shadow" && path.starts_with("/orders/"),
            "mirrored copy {i}: expected Host orders-shadow and path /orders/<n>, got Host {host:?} path {path:?}"
        );
    }
    ensure!(orders.echo.hits() == N, "orders received {} requests, expected {N}", orders.echo.hits());
    Ok(())
}
