//! End-to-end HTTP routing by VirtualService and DestinationRule through a real Envoy sidecar:
//! weighted splits, header and prefix matches, subsets chosen by pod labels, rewrites, redirects and
//! direct responses. Each case writes the Istio YAML a user would, waits until Envoy holds the
//! routes, then sends real requests and checks which backend answered and what it saw.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, ensure};
use sailplane_tests::fixtures::{fqdn, outbound_cluster};
use sailplane_tests::ports::free_port;
use sailplane_tests::traffic::{
    Backend, Call, Client, Mesh, expect_backend, expect_status, load_example, report, send, wait_virtual_host_with,
};
use sailplane_tests::{ConfigDir, EchoServer, EnvoyOptions, XdsApi};

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

/// `examples/canary` as its README walks through it: the tester override, then the 80/20 split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_example_splits_80_20_within_tolerance() -> anyhow::Result<()> {
    let stable = EchoServer::start("checkout").await?;
    let canary = EchoServer::start("checkout-canary").await?;
    let port = free_port()?;
    // The example's ports (README: listener 8080, pods on 8001 and 8002) moved to free ones.
    let dir = load_example("canary", &[(8080, port), (8001, stable.port()), (8002, canary.port())])?;
    let storefront = EnvoyOptions::sidecar("storefront", XdsApi::Sotw).in_namespace("shop");
    let mesh = Mesh::start(&dir, &[], &storefront).await?;
    let vhost = format!("{}:{port}", fqdn("checkout", "shop"));
    let vh = wait_virtual_host_with(&mesh.envoy, &vhost, "weighted_clusters").await?;

    const TESTER_REQUESTS: u32 = 20;
    for i in 0..TESTER_REQUESTS {
        expect_backend(
            &Call::new(port, "checkout", &format!("/who?tester={i}")).header("x-canary", "always"),
            "checkout-canary",
        )
        .await?;
    }

    let client = Client::keep_alive()?;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..SPLIT_REQUESTS {
        let call = Call::new(port, "checkout", &format!("/who?request={i}"));
        let r = client.send(&call).await?;
        let Some(backend) = r.backend().filter(|_| r.status == 200) else {
            bail!("{}", report(&call, "status 200 from checkout or checkout-canary", &r));
        };
        *counts.entry(backend).or_default() += 1;
    }
    let to_stable = counts.get("checkout").copied().unwrap_or(0);
    let to_canary = counts.get("checkout-canary").copied().unwrap_or(0);
    let canary_share = 100.0 * f64::from(to_canary) / f64::from(SPLIT_REQUESTS);
    ensure!(
        to_stable + to_canary == SPLIT_REQUESTS && (canary_share - 20.0).abs() <= SPLIT_TOLERANCE_POINTS,
        "\n  request:  {SPLIT_REQUESTS} x GET 127.0.0.1:{port}/who (Host: checkout)\n  expected: checkout-canary share 20 % +- \
         {SPLIT_TOLERANCE_POINTS} points, the rest checkout\n  got:      {counts:?} (canary share {canary_share:.1} %)\n  \
         Envoy virtual host: {vh}"
    );
    ensure!(
        stable.hits() == u64::from(to_stable) && canary.hits() == u64::from(to_canary + TESTER_REQUESTS),
        "backends' own counts disagree with the replies: checkout {} canary {}, replies {counts:?} plus {TESTER_REQUESTS} tester calls",
        stable.hits(),
        canary.hits()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_prefix_matches_pick_backends() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let web = Backend::start(&dir, "web").await?;
    let _api = Backend::start(&dir, "web-api").await?;
    let _beta = Backend::start(&dir, "web-beta").await?;
    dir.write(
        "web.vs.yaml",
        r#"
# Beta testers (by header) get the beta build of everything; API paths go to the API service;
# everything else to the web frontend. The first matching rule wins.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts:
  - web
  http:
  - name: beta-testers
    match:
    - headers:
        x-user-group:
          exact: beta
    route:
    - destination:
        host: web-beta
  - name: api
    match:
    - uri:
        prefix: /api/
    route:
    - destination:
        host: web-api
  - name: frontend
    route:
    - destination:
        host: web
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &web.vhost(), "\"name\":\"beta-testers\"").await?;

    let cases = [
        (web.call("/"), "web"),
        (web.call("/index.html"), "web"),
        (web.call("/api/orders"), "web-api"),
        (web.call("/api/"), "web-api"),
        // Prefix "/api/" does not take "/apiary" or "/api".
        (web.call("/apiary"), "web"),
        (web.call("/api"), "web"),
        (web.call("/api/orders").header("x-user-group", "beta"), "web-beta"),
        (web.call("/").header("x-user-group", "beta"), "web-beta"),
        // Exact header match: another value or a longer one is no match.
        (web.call("/").header("x-user-group", "alpha"), "web"),
        (web.call("/api/orders").header("x-user-group", "beta-2"), "web-api"),
    ];
    for (call, want) in &cases {
        expect_backend(call, want).await?;
    }
    // The backend sees the path unchanged.
    let r = expect_backend(&web.call("/api/orders?id=7"), "web-api").await?;
    ensure!(
        r.seen("path").as_deref() == Some("/api/orders?id=7"),
        "{}",
        report(&web.call("/api/orders?id=7"), "backend web-api sees path /api/orders?id=7", &r)
    );
    Ok(())
}

/// Service `reviews` with two pods, `reviews-v1-*` (label version=v1, 127.0.0.11) and
/// `reviews-v2-*` (version=v2, 127.0.0.12), listed in an EndpointSlice that points at the pods, as
/// Kubernetes writes it.
fn reviews_with_pods(service_port: u16, target_port: u16) -> String {
    let pod = |name: &str, version: &str, ip: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    app: reviews
    version: {version}
spec:
  containers:
  - name: reviews
    image: docker.io/istio/examples-bookinfo-reviews-{version}:1.20.1
    ports:
    - containerPort: {target_port}
status:
  phase: Running
  podIP: {ip}
  conditions:
  - type: Ready
    status: "True"
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
  labels:
    app: reviews
spec:
  clusterIP: 10.96.{hi}.{lo}
  selector:
    app: reviews
  ports:
  - name: http
    port: {service_port}
    targetPort: {target_port}
---
{v1}---
{v2}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-h5k2x
  namespace: default
  labels:
    kubernetes.io/service-name: reviews
addressType: IPv4
ports:
- name: http
  port: {target_port}
  protocol: TCP
endpoints:
- addresses: ["127.0.0.11"]
  conditions:
    ready: true
  targetRef:
    kind: Pod
    name: reviews-v1-7f9c6b
    namespace: default
- addresses: ["127.0.0.12"]
  conditions:
    ready: true
  targetRef:
    kind: Pod
    name: reviews-v2-5d4b8c
    namespace: default
"#,
        hi = service_port / 256,
        lo = service_port % 256,
        v1 = pod("reviews-v1-7f9c6b", "v1", "127.0.0.11"),
        v2 = pod("reviews-v2-5d4b8c", "v2", "127.0.0.12"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsets_route_by_pod_labels() -> anyhow::Result<()> {
    // Two "pods" of one Service on one port, told apart by address (any 127.0.0.0/8 works).
    let target_port = free_port()?;
    let v1 = EchoServer::start_on("reviews-v1", Ipv4Addr::new(127, 0, 0, 11), target_port).await?;
    let v2 = EchoServer::start_on("reviews-v2", Ipv4Addr::new(127, 0, 0, 12), target_port).await?;
    let port = free_port()?;
    let dir = ConfigDir::new()?;
    dir.write("reviews.yaml", &reviews_with_pods(port, target_port))?;
    dir.write(
        "reviews.routing.yaml",
        r#"
# Version subsets by pod label; user jason tries v2, everybody else stays on v1.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - name: jason-on-v2
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - name: everyone-on-v1
    route:
    - destination:
        host: reviews
        subset: v1
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    let host = fqdn("reviews", "default");
    // Each subset cluster holds only the pod whose labels match.
    let subset = |name: &str| format!("outbound|{port}|{name}|{host}");
    mesh.envoy.wait_cluster_hosts(&subset("v1"), &[v1.endpoint()]).await?;
    mesh.envoy.wait_cluster_hosts(&subset("v2"), &[v2.endpoint()]).await?;
    mesh.envoy.wait_cluster_hosts(&outbound_cluster(port, &host), &[v1.endpoint(), v2.endpoint()]).await?;
    wait_virtual_host_with(&mesh.envoy, &format!("{host}:{port}"), "\"name\":\"jason-on-v2\"").await?;

    // Without a subset the two pods would share the load; 20 requests each way all land on one.
    for i in 0..20 {
        expect_backend(&Call::new(port, "reviews", &format!("/reviews/{i}")), "reviews-v1").await?;
        expect_backend(&Call::new(port, "reviews", &format!("/reviews/{i}")).header("end-user", "jason"), "reviews-v2")
            .await?;
    }
    ensure!(v1.hits() == 20 && v2.hits() == 20, "pods counted v1 {} v2 {}, expected 20 each", v1.hits(), v2.hits());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_change_what_the_backend_sees() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let web = Backend::start(&dir, "web").await?;
    dir.write(
        "web.vs.yaml",
        r#"
# The old /v1/ API is served by the /api/v2/ handlers; /legacy/ needs the virtual host name the
# backend was configured with; user profiles moved from /users/<id>/profile to /profiles/<id>.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  hosts:
  - web
  http:
  - name: v1-api
    match:
    - uri:
        prefix: /v1/
    rewrite:
      uri: /api/v2/
    route:
    - destination:
        host: web
  - name: legacy-host
    match:
    - uri:
        prefix: /legacy/
    rewrite:
      authority: internal.example.com
    route:
    - destination:
        host: web
  - name: profiles
    match:
    - uri:
        regex: /users/[0-9]+/profile
    rewrite:
      uriRegexRewrite:
        match: ^/users/([0-9]+)/profile$
        rewrite: /profiles/\1
    route:
    - destination:
        host: web
  - name: unchanged
    route:
    - destination:
        host: web
"#,
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    wait_virtual_host_with(&mesh.envoy, &web.vhost(), "\"name\":\"profiles\"").await?;

    // (request path, path the backend must see, Host the backend must see)
    let cases = [
        ("/v1/items?page=2", "/api/v2/items?page=2", "web"),
        ("/v1/", "/api/v2/", "web"),
        ("/legacy/report", "/legacy/report", "internal.example.com"),
        ("/users/42/profile", "/profiles/42", "web"),
        ("/users/42/settings", "/users/42/settings", "web"),
        ("/v2/items", "/v2/items", "web"),
    ];
    for (path, want_path, want_host) in cases {
        let call = web.call(path);
        let r = expect_backend(&call, "web").await?;
        let (seen_path, seen_host) = (r.seen("path"), r.seen("host"));
        ensure!(
            seen_path.as_deref() == Some(want_path) && seen_host.as_deref() == Some(want_host),
            "{}",
            report(&call, &format!("backend web sees path {want_path} and Host {want_host}"), &r)
        );
    }
    Ok(())
}

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

    let redirects = [("/old-page", 301, "http://www.example.com/new-page"), ("/catalog", 302, "http://web/v2/catalog")];
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
    ensure!(
        web.echo.hits() == 0,
        "the backend received {} requests; redirects and direct responses must not reach it",
        web.echo.hits()
    );
    // Anything else still reaches the backend.
    expect_backend(&web.call("/old-page/details"), "web").await?;
    Ok(())
}
