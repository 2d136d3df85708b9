//! The mesh lab's own plumbing, without Istio policy: kube-proxy-like service DNAT spreads requests
//! of a pod without sidecar over every replica, service names resolve in each pod's namespace, and
//! an external HTTPS app (outside the cluster, reached by a DNS name) requires client certificates.
//!
//! Needs root. Run: `cargo test -p sailplane-tests --test lab_harness -- --nocapture`.

use std::collections::BTreeSet;

use sailplane_tests::lab::{Expect, LabSpec, PodSpec, Report, ServiceSpec};
use sailplane_tests::tls_echo::Pki;

#[test]
fn services_spread_over_replicas_and_external_tls_requires_client_certs() -> anyhow::Result<()> {
    let enterprise = Pki::new("enterprise-ca")?;
    let server = enterprise.server_cert(&["ext.example.com"])?;
    let client = enterprise.client_cert("app-client", None)?;
    let lab = LabSpec::new()
        .pod(PodSpec::new("client", "shop"))
        .pod(PodSpec::new("web-0", "shop").label("app", "web"))
        .pod(PodSpec::new("web-1", "shop").label("app", "web"))
        .service(ServiceSpec::new("web", "shop").port("http", 80, 8080))
        .pod(PodSpec::new("ext", "outside").ports(&[]).tls(8443, server, Some(enterprise.ca_pem())).external())
        .dns("ext.example.com", "outside/ext")
        .start()?;
    let mut report = Report::new("lab harness: service DNAT and an external mTLS server");

    // Short name (same namespace), and the cluster-local FQDN; 40 requests reach both replicas.
    lab.check(&mut report, "short name", "client", "http://web/", Expect::Plaintext200)?;
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let r = lab.curl("client", "http://web.shop.svc.cluster.local/", &[])?;
        seen.extend(r.pod());
    }
    let want: BTreeSet<String> = ["web-0".to_string(), "web-1".to_string()].into();
    report.add("40 x client -> web.shop.svc.cluster.local", format!("{want:?}"), format!("{seen:?}"), seen == want);

    let dir = tempfile::tempdir()?;
    let ca = enterprise.write_ca(dir.path())?;
    let (cert, key) = client.write(dir.path(), "client")?;
    let url = "https://ext.example.com:8443/";
    let (ca, cert, key) = (ca.display().to_string(), cert.display().to_string(), key.display().to_string());
    let without = lab.curl("client", url, &["--cacert", &ca])?;
    report.add(
        format!("client -> {url} without a client certificate"),
        "TLS failure (curl exit != 0)",
        without.summary(),
        without.exit != 0,
    );
    let with = lab.curl("client", url, &["--cacert", &ca, "--cert", &cert, "--key", &key])?;
    let subject = with.json().and_then(|j| j["client"]["subject"].as_str().map(str::to_string)).unwrap_or_default();
    report.add(
        format!("client -> {url} with the enterprise client certificate"),
        "200, client CN=app-client",
        format!("{} (client subject {subject:?})", with.summary()),
        with.status == 200 && subject.contains("app-client"),
    );
    report.finish();
    Ok(())
}
