//! End-to-end traffic at the edges of the mesh through real Envoy: an external service known by a
//! DNS ServiceEntry, the outbound traffic policy for hosts outside the registry (REGISTRY_ONLY
//! blocks, ALLOW_ANY passes through), and an ingress gateway routing two hosts to two backends.

use anyhow::ensure;
use rstest::rstest;
use sailplane_tests::fixtures::{fqdn, outbound_cluster};
use sailplane_tests::ports::free_port;
use sailplane_tests::traffic::{
    Backend, Call, Mesh, counter, expect_backend, report, send, wait_listener_port, wait_virtual_host_with,
};
use sailplane_tests::{ConfigDir, EchoServer, EnvoyOptions, XdsApi};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_dns_host_is_reached_through_envoy() -> anyhow::Result<()> {
    let provider = EchoServer::start("payments-provider").await?;
    let port = free_port()?;
    let dir = ConfigDir::new()?;
    dir.write(
        "payments-provider.yaml",
        &format!(
            r#"
# An external payments API the mesh calls by name. Envoy resolves the endpoint's address by DNS
# (here "localhost", which /etc/hosts resolves to the loopback address the provider listens on).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments-provider
  namespace: default
spec:
  hosts:
  - api.payments.example
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  endpoints:
  - address: localhost
    ports:
      http: {provider_port}
"#,
            provider_port = provider.port()
        ),
    )?;
    let mesh = Mesh::sidecar(&dir).await?;
    // The cluster names "localhost"; /clusters lists what Envoy's DNS resolution made of it.
    let cluster = outbound_cluster(port, "api.payments.example");
    mesh.envoy.wait_cluster_hosts(&cluster, &[provider.endpoint()]).await?;
    mesh.envoy.wait_listener(port).await?;
    for path in ["/v1/charges", "/v1/refunds?limit=3"] {
        let call = Call::new(port, "api.payments.example", path);
        let r = expect_backend(&call, "payments-provider").await?;
        ensure!(
            r.seen("path").as_deref() == Some(path) && r.seen("host").as_deref() == Some("api.payments.example"),
            "{}",
            report(&call, &format!("the provider sees path {path} and Host api.payments.example"), &r)
        );
    }
    Ok(())
}

/// How the outbound traffic policy is set in a case.
#[derive(Debug, Clone, Copy)]
enum PolicySource {
    /// Mesh default ALLOW_ANY; a Sidecar resource in the namespace switches to REGISTRY_ONLY.
    Sidecar,
    /// MeshConfig REGISTRY_ONLY (`--mesh-config`); a Sidecar resource opens the namespace again.
    MeshConfig,
}

fn sidecar_policy(mode: &str) -> String {
    format!(
        r#"
# The outbound traffic policy of every workload in namespace default.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: default
spec:
  outboundTrafficPolicy:
    mode: {mode}
"#
    )
}

/// What a request for a host outside the registry meets under each policy.
///
/// REGISTRY_ONLY: the catch-all virtual host `block_all` answers 502 itself.
///
/// ALLOW_ANY: the catch-all virtual host `allow_any` forwards to `PassthroughCluster`, an
/// ORIGINAL_DST cluster that sends the request on to the address the client originally dialled.
/// With iptables interception that is the external server. These tests run without interception
/// (every Envoy listener is a real socket on 127.0.0.1), so the connection was never redirected and
/// Envoy has no original destination to restore: the passthrough is taken, finds no host, and Envoy
/// answers 503 "no healthy upstream" while counting the attempt in
/// `cluster.PassthroughCluster;.upstream_cx_none_healthy`. That counter is the observable proof the
/// request was passed through rather than blocked; the block never touches the cluster.
#[rstest]
#[case::sidecar_resource(PolicySource::Sidecar)]
#[case::mesh_config(PolicySource::MeshConfig)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_blocks_unknown_hosts_and_allow_any_passes_them(
    #[case] source: PolicySource,
) -> anyhow::Result<()> {
    // istiod gives the cluster the delimited stat name `PassthroughCluster;` (as Sailplane does).
    const PASSTHROUGH_TAKEN: &str = "cluster.PassthroughCluster;.upstream_cx_none_healthy";
    let dir = ConfigDir::new()?;
    let catalog = Backend::start(&dir, "catalog").await?;
    let mesh_config = tempfile::Builder::new().prefix("sailplane-mesh-").tempdir()?;
    let mesh_file = mesh_config.path().join("mesh.yaml");
    std::fs::write(&mesh_file, "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")?;
    let mesh_flag = mesh_file.to_string_lossy().into_owned();
    let (flags, first_blocked): (Vec<&str>, bool) = match source {
        PolicySource::Sidecar => (vec![], false),
        PolicySource::MeshConfig => (vec!["--mesh-config", &mesh_flag], true),
    };
    let mesh = Mesh::start(&dir, &flags, &EnvoyOptions::sidecar("client", XdsApi::Sotw)).await?;
    let route_config = catalog.port.to_string();
    let unknown = Call::new(catalog.port, "unknown.example.com", "/anything");

    // Step 1 is the starting policy, step 2 the one the Sidecar resource switches to.
    for (step, blocked) in [(1, first_blocked), (2, !first_blocked)] {
        if step == 2 {
            let mode = if blocked { "REGISTRY_ONLY" } else { "ALLOW_ANY" };
            dir.write("sidecar.yaml", &sidecar_policy(mode))?;
        }
        let catch_all = if blocked { "block_all" } else { "allow_any" };
        let vh = wait_virtual_host_with(&mesh.envoy, catch_all, "\"domains\":[\"*\"]").await.map_err(|e| {
            anyhow::anyhow!(
                "step {step} ({source:?}): route configuration {route_config} should end in {catch_all}: {e:#}"
            )
        })?;
        let before = counter(&mesh.envoy, PASSTHROUGH_TAKEN).await?;
        let r = send(&unknown).await?;
        let after = counter(&mesh.envoy, PASSTHROUGH_TAKEN).await?;
        if blocked {
            ensure!(
                r.status == 502 && r.backend().is_none() && after == before,
                "step {step} ({source:?}, REGISTRY_ONLY){}\n  {PASSTHROUGH_TAKEN}: {before} -> {after} (expected unchanged)\n  Envoy virtual host: {vh}",
                report(&unknown, "status 502 from the block_all virtual host", &r)
            );
        } else {
            ensure!(
                r.status != 502 && r.backend().is_none() && after == before + 1,
                "step {step} ({source:?}, ALLOW_ANY){}\n  {PASSTHROUGH_TAKEN}: {before} -> {after} (expected +1)\n  Envoy virtual host: {vh}\n  Envoy stats:\n{}",
                report(&unknown, "not blocked: passed to PassthroughCluster (503 without interception)", &r),
                mesh.envoy.admin_get("/stats?filter=PassthroughCluster").await?.body
            );
        }
        // Services in the registry are reachable under either policy.
        expect_backend(&catalog.call("/items"), "catalog").await?;
    }
    ensure!(
        catalog.echo.hits() == 2,
        "catalog received {} requests, expected exactly the 2 for it",
        catalog.echo.hits()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_gateway_routes_two_hosts_to_two_backends() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let shop = Backend::start(&dir, "shop").await?;
    let blog = Backend::start(&dir, "blog").await?;
    // The gateway's Service exposes port 80 and sends it to the gateway pod's listener port, which
    // the test picks free (Istio's own ingress gateway uses 8080).
    let listen_port = free_port()?;
    dir.write(
        "ingress.yaml",
        &format!(
            r#"
# The ingress gateway deployment's Service, as the Istio chart installs it (the gateway pods
# carry the label istio=ingressgateway).
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels:
    istio: ingressgateway
spec:
  clusterIP: 10.96.200.1
  selector:
    istio: ingressgateway
  ports:
  - name: http2
    port: 80
    targetPort: {listen_port}
    protocol: TCP
---
# Public HTTP entry for two sites.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: public
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - shop.example.com
    - blog.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: default
spec:
  hosts:
  - shop.example.com
  gateways:
  - public
  http:
  - name: storefront
    route:
    - destination:
        host: shop
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: blog
  namespace: default
spec:
  hosts:
  - blog.example.com
  gateways:
  - public
  http:
  - name: articles
    route:
    - destination:
        host: blog
"#
        ),
    )?;
    let gateway = EnvoyOptions {
        xds_api: XdsApi::Sotw,
        node_type: "router".into(),
        pod: "istio-ingressgateway-5c9d7b8f6-k2x4p".into(),
        namespace: "istio-system".into(),
        labels: vec![("istio".into(), "ingressgateway".into()), ("app".into(), "istio-ingressgateway".into())],
        interception_mode: "NONE".into(),
    };
    let mesh = Mesh::start(&dir, &[], &gateway).await?;
    let bound = wait_listener_port(&mesh.envoy, listen_port).await?;
    ensure!(bound == format!("0.0.0.0:{listen_port}"), "gateway listener: expected 0.0.0.0:{listen_port}, got {bound}");
    wait_virtual_host_with(&mesh.envoy, "shop.example.com:80", "\"name\":\"storefront\"").await?;
    wait_virtual_host_with(&mesh.envoy, "blog.example.com:80", "\"name\":\"articles\"").await?;

    for path in ["/", "/cart", "/products/42"] {
        let r = expect_backend(&Call::new(listen_port, "shop.example.com", path), "shop").await?;
        ensure!(r.seen("path").as_deref() == Some(path), "shop saw path {:?}, expected {path}", r.seen("path"));
        expect_backend(&Call::new(listen_port, "blog.example.com", path), "blog").await?;
    }
    // Clients such as curl put the port they dialled into Host; istiod has gateways ignore it.
    expect_backend(&Call::new(listen_port, &format!("shop.example.com:{listen_port}"), "/"), "shop").await?;
    // A host the Gateway does not serve finds no virtual host.
    let call = Call::new(listen_port, "admin.example.com", "/");
    let r = send(&call).await?;
    ensure!(r.status == 404 && r.backend().is_none(), "{}", report(&call, "status 404 from the gateway", &r));
    // The gateway does not serve the mesh's own service names.
    let call = Call::new(listen_port, &fqdn("shop", "default"), "/");
    let r = send(&call).await?;
    ensure!(r.status == 404, "{}", report(&call, "status 404: the gateway only serves its Gateway's hosts", &r));
    ensure!(
        shop.echo.hits() == 4 && blog.echo.hits() == 3,
        "backends counted shop {} blog {}, expected 4 and 3",
        shop.echo.hits(),
        blog.echo.hits()
    );
    Ok(())
}
