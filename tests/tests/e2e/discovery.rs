//! End-to-end service discovery through a real Envoy, over state-of-the-world and Delta ADS:
//! a request reaches the backend, directory edits reach Envoy without a restart, and a resource
//! Envoy rejects is reported while traffic keeps flowing.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};

use anyhow::{bail, ensure};
use rstest::rstest;
use sailplane_tests::fixtures::{fqdn, mk_service_with_endpoints, outbound_cluster};
use sailplane_tests::http::{self, expect_echo};
use sailplane_tests::ports::free_port;
use sailplane_tests::wait::CONVERGE;
use sailplane_tests::{ConfigDir, ControlPlane, EchoServer, Envoy, EnvoyOptions, XdsApi, eventually};

/// The xDS types of this issue, as `/debug/syncz` names them.
const XDS_TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];

/// Service `hello` in `default` on a free port, backed by `echo`; returns the service port.
fn write_hello(dir: &ConfigDir, echo: &EchoServer, addresses: &[&str]) -> anyhow::Result<u16> {
    let port = free_port()?;
    dir.write("hello.yaml", &mk_service_with_endpoints("hello", "default", port, addresses, echo.port()))?;
    Ok(port)
}

#[rstest]
#[case::sotw(XdsApi::Sotw)]
#[case::delta(XdsApi::Delta)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reaches_backend_by_fqdn_and_short_names(#[case] api: XdsApi) -> anyhow::Result<()> {
    let echo = EchoServer::start("hello-1").await?;
    let dir = ConfigDir::new()?;
    let port = write_hello(&dir, &echo, &["127.0.0.1"])?;
    let cp = ControlPlane::start(dir.path()).await?;
    let envoy = Envoy::start(&cp, &EnvoyOptions::sidecar("client", api)).await?;
    envoy.wait_live().await?;

    let host = fqdn("hello", "default");
    let cluster = outbound_cluster(port, &host);
    envoy.wait_cluster_hosts(&cluster, &[echo.endpoint()]).await?;
    envoy.wait_listener(port).await?;

    for name in [host.as_str(), "hello", "hello.default", "hello.default.svc", &format!("{host}:{port}")] {
        let r = expect_echo(port, name, "/greet?who=envoy", "hello-1").await?;
        let path = r.json()?["path"].as_str().map(str::to_string);
        ensure!(path.as_deref() == Some("/greet?who=envoy"), "backend saw path {path:?}, expected /greet?who=envoy");
    }

    // The control plane's view agrees: the proxy is connected over the chosen API and every type is
    // acknowledged, and it was sent the cluster.
    eventually("syncz to show the proxy SYNCED for cds, eds, lds and rds", CONVERGE, || async {
        let entry = cp.syncz_entry(&envoy.node_id).await?.unwrap_or_default();
        let states: Vec<&str> = XDS_TYPES.iter().map(|t| entry[*t].as_str().unwrap_or("absent")).collect();
        if states.iter().all(|s| *s == "SYNCED") && entry["api"] == api.to_string() {
            Ok(())
        } else {
            bail!("expected api {api} and all SYNCED, got states {states:?}; entry: {entry}")
        }
    })
    .await?;
    let dump = cp.config_dump(&envoy.node_id).await?.to_string();
    ensure!(dump.contains(&cluster), "control plane config_dump for {} lacks {cluster}: {dump}", envoy.node_id);
    let connected = cp.metric_sum("pilot_xds").await?;
    ensure!(connected == Some(1.0), "metric pilot_xds: expected 1 connected proxy, got {connected:?}");
    Ok(())
}

#[rstest]
#[case::sotw(XdsApi::Sotw)]
#[case::delta(XdsApi::Delta)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_edits_reach_envoy_without_restart(#[case] api: XdsApi) -> anyhow::Result<()> {
    let echo1 = EchoServer::start("hello-1").await?;
    // A second "pod" on another loopback address with the same port, as two pods of one service.
    let echo2 = EchoServer::start_on("hello-2", Ipv4Addr::new(127, 0, 0, 2), echo1.port()).await?;
    let dir = ConfigDir::new()?;
    let port = write_hello(&dir, &echo1, &["127.0.0.1"])?;
    let cp = ControlPlane::start(dir.path()).await?;
    let mut envoy = Envoy::start(&cp, &EnvoyOptions::sidecar("client", api)).await?;
    envoy.wait_live().await?;
    let host = fqdn("hello", "default");
    let cluster = outbound_cluster(port, &host);
    envoy.wait_cluster_hosts(&cluster, &[echo1.endpoint()]).await?;
    envoy.wait_listener(port).await?;
    expect_echo(port, &host, "/", "hello-1").await?;

    // A new endpoint: both backends answer.
    dir.write(
        "hello.yaml",
        &mk_service_with_endpoints("hello", "default", port, &["127.0.0.1", "127.0.0.2"], echo1.port()),
    )?;
    envoy.wait_cluster_hosts(&cluster, &[echo1.endpoint(), echo2.endpoint()]).await?;
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let r = http::get_via(port, &host, "/").await?;
        ensure!(r.status == 200, "expected 200 with two endpoints, got {}: {}", r.status, r.body);
        seen.insert(r.echo_name()?);
        if seen.len() == 2 {
            break;
        }
    }
    let want: BTreeSet<String> = ["hello-1".to_string(), "hello-2".to_string()].into();
    ensure!(seen == want, "after adding an endpoint, expected answers from {want:?} over 60 requests, got {seen:?}");

    // The service is deleted: its cluster and listener go, requests are refused.
    dir.remove("hello.yaml")?;
    envoy.wait_cluster_gone(&cluster).await?;
    envoy.wait_no_listener(port).await?;
    match http::get_via(port, &host, "/").await {
        Err(_) => {}
        Ok(r) => {
            bail!("expected the request to fail after the service was removed, got status {}: {}", r.status, r.body)
        }
    }
    ensure!(envoy.is_running(), "Envoy exited; the edits must apply without a restart");
    Ok(())
}

#[rstest]
#[case::sotw(XdsApi::Sotw)]
#[case::delta(XdsApi::Delta)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_listener_is_reported_and_traffic_keeps_flowing(#[case] api: XdsApi) -> anyhow::Result<()> {
    let echo = EchoServer::start("hello-1").await?;
    let dir = ConfigDir::new()?;
    let port = write_hello(&dir, &echo, &["127.0.0.1"])?;
    let mut cp = ControlPlane::start(dir.path()).await?;
    let envoy = Envoy::start(&cp, &EnvoyOptions::sidecar("client", api)).await?;
    envoy.wait_live().await?;
    let host = fqdn("hello", "default");
    envoy.wait_listener(port).await?;
    expect_echo(port, &host, "/", "hello-1").await?;

    // Valid Kubernetes input that Envoy cannot apply: without interception each service port is a
    // listener on 127.0.0.1:<port>, and this port is already taken by another program, so Envoy
    // rejects the listener (an LDS NACK) and keeps the rest.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port()?))?;
    let taken_port = taken.local_addr()?.port();
    dir.write("taken.yaml", &mk_service_with_endpoints("taken", "default", taken_port, &["127.0.0.1"], echo.port()))?;

    let error = eventually("syncz to report Envoy's LDS rejection as ERROR with its text", CONVERGE, || async {
        let entry = cp.syncz_entry(&envoy.node_id).await?.unwrap_or_default();
        let error = entry["types"]["lds"]["error"].as_str().unwrap_or_default().to_string();
        let envoy_text = error.contains("Address already in use") || error.contains("cannot bind");
        if entry["lds"] == "ERROR" && envoy_text {
            Ok(error)
        } else {
            bail!(
                "expected lds ERROR with Envoy's bind error, got lds {} error {error:?}; entry: {entry}",
                entry["lds"]
            )
        }
    })
    .await?;
    ensure!(error.contains(&taken_port.to_string()), "the NACK text should name port {taken_port}: {error}");
    let rejected = envoy.stat("listener_manager.lds.update_rejected").await?;
    ensure!(rejected.is_some_and(|n| n >= 1), "Envoy's lds.update_rejected: expected >= 1, got {rejected:?}");
    let rejects = cp.metric_sum("pilot_total_xds_rejects").await?;
    ensure!(rejects.is_some_and(|n| n >= 1.0), "metric pilot_total_xds_rejects: expected >= 1, got {rejects:?}");

    // The last good configuration keeps serving, and the control plane is up.
    for _ in 0..5 {
        expect_echo(port, &host, "/", "hello-1").await?;
    }
    ensure!(cp.is_running(), "the control plane exited after a NACK");
    let ready = cp.get("/ready").await?;
    ensure!(ready.status == 200, "control plane /ready after a NACK: expected 200, got {}", ready.status);

    // Fixing the input clears the error on the next accepted push.
    dir.remove("taken.yaml")?;
    eventually("syncz to show lds SYNCED again once the bad service is gone", CONVERGE, || async {
        let entry = cp.syncz_entry(&envoy.node_id).await?.unwrap_or_default();
        if entry["lds"] == "SYNCED" { Ok(()) } else { bail!("lds is {}; entry: {entry}", entry["lds"]) }
    })
    .await?;
    expect_echo(port, &host, "/", "hello-1").await?;
    drop(taken);
    Ok(())
}
