//! End-to-end HTTP routing by VirtualService and DestinationRule through a real Envoy sidecar:
//! weighted splits, header and prefix matches, subsets chosen by pod labels, rewrites, redirects and
//! direct responses. Each case writes the Istio YAML a user would, waits until Envoy holds the
//! routes, then sends real requests and checks which backend answered and what it saw.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, ensure};
use sailplane_tests::fixtures::{fqdn, outbound_cluster};
use sailplane_tests::ports::free_port;
use sailplane_tests::traffic::{Backend, Call, Client, Mesh, expect_backend, expect_status, report, send, wait_virtual_host_with};
use sailplane_tests::{ConfigDir, EchoServer};

/// Requests of the weighted-split case.
const SPLIT_REQUESTS: u32 = 500;
/// Allowed distance of the observed canary share from 20 %, in percentage points.
///
/// Envoy draws a weighted cluster per request independently, so the canary count over n = 500
/// requests is Binomial(500, 0.2): mean 100, standard deviation sqrt(500 * 0.2 * 0.8) = 8.9
/// requests = 1.8 points. +-6 points is +-30 requests = 3.35 standard deviations, so a correct split
/// fails this check with probability about 0.08 % per run, while a split that ignores weights (50/50)
/// or drops them (100/0) is far outside it.
const SPLIT_TOLERANCE_POINTS: f64 = 6.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_responses_answer_without_the_backend() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let web = Backend::start(&dir, "web").await?;
    dir.write(
        "web.vs.yaml",
        r#"
# A page that moved to another site (301, the default), a page that moved on this site (302),
# an endpoint answered by the proxy itself, and everything else to the backend.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts:
  - web
  http:
  - name: moved-away
    match:
    - uri:
        exact: /old-page
    redirect:
      uri: /new-page
      authority: www.example.com
  - name: moved-here
    match:
    - uri:
        exact: /catalog
    redirect:
      uri: /v2/catalog
      redirectCode: 302
  - name: teapot
    match:
    - uri:
        prefix: /coffee
    directResponse:
      status: 418
      body:
        string: "I'm a teapot"
  - name: backend
    route:
    - destination:
        host: web
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &web.vhost(), "\"name\":\"teapot\"").await?;

    let redirects = [
        ("/old-page", 301, "http://www.example.com/new-page"),
        ("/catalog", 302, "http://web/v2/catalog"),
    ];
    for (path, code, location) in redirects {
        let call = web.call(path);
        let r = send(&call).await?;
        ensure!(
            r.status == code && r.header("location") == Some(location) && r.backend().is_none(),
            "{}",
            report(&call, &format!("status {code} with location {location}, from Envoy"), &r)
        );
    }
    let call = web.call("/coffee/espresso");
    let r = expect_status(&call, 418).await?;
    ensure!(r.body == "I'm a teapot", "{}", report(&call, "status 418 with body \"I'm a teapot\"", &r));
    ensure!(web.echo.hits() == 0, "the backend received {} requests; redirects and direct responses must not reach it", web.echo.hits());
    // Anything else still reaches the backend.
    expect_backend(&web.call("/old-page/details"), "web").await?;
    Ok(())
}
