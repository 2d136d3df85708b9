//! Seed 003, securing egress traffic with mTLS, in the mesh lab, from the YAML in
//! `examples/egress-mtls/`. The app (`default/curl-0`, with a sidecar) only speaks plain HTTP on
//! port 80; external HTTPS servers outside the cluster (network namespaces with no Pod object,
//! reached by DNS names) require client certificates:
//!
//! (a) common CA: the server's certificate and client CA are the mesh's; ServiceEntry port 80 ->
//!     targetPort 8443 alone fails, with the DestinationRule ISTIO_MUTUAL the app gets 200 and the
//!     server saw the app's SPIFFE certificate;
//! (c) different (enterprise) CA, per-app client certificate mounted into the sidecar: MUTUAL with
//!     `clientCertificate`/`privateKey`/`caCertificates` files, 200 with the app's enterprise cert;
//! (b) different CA through an egress gateway (node type router in istio-system): sidecar ->
//!     gateway ISTIO_MUTUAL with SNI, gateway -> server MUTUAL with a `credentialName` Secret, 200
//!     with the gateway's enterprise cert;
//! (d) REGISTRY_ONLY (a Sidecar resource): a host without a ServiceEntry gets 502 from the sidecar,
//!     the ServiceEntry host still 200.
//!
//! The examples name the external servers' addresses `10.1.1.4` and `10.1.1.5` (as the seed does)
//! and the mounted files `/etc/certs/...`: the test replaces them with the lab's pod IPs and the
//! directory where it mounted the files for the sidecar.
//!
//! Needs root. Run: `cargo test -p sailplane-tests --test lab_egress -- --nocapture`.

use std::path::Path;
use std::time::{Duration, Instant};

use sailplane_tests::lab::{Expect, Lab, LabSpec, PodSpec, Reply, Report};
use sailplane_tests::paths::workspace_root;
use sailplane_tests::tls_echo::Pki;
use serde_json::Value;

const APP: &str = "default/curl-0";
const GATEWAY: &str = "istio-system/istio-egressgateway-0";
const COMMON: &str = "external/nginx-mtls-common-ca";
const DIFF: &str = "external/nginx-mtls-diff-ca";
const PLAIN: &str = "external/plain-http";
const COMMON_URL: &str = "http://nginx-mtls.common-ca.local/";
const PER_APP_URL: &str = "http://nginx-mtls.per-app.local/";
const DIFF_URL: &str = "http://nginx-mtls.diff-ca.local/";
const PLAIN_URL: &str = "http://plain.example.com/";

/// The client certificate the external TLS server reports it saw (subject, URI SANs), as text.
fn client_seen(r: &Reply) -> String {
    match r.json() {
        Some(j) if j["tls"] == true => format!("server {} saw client {}", j["name"], j["client"]),
        _ => String::new(),
    }
}

/// Sends `curl url` from the app until `ok(reply)` (at most 8 s: the configuration may still be
/// warming in Envoy after the ACK) and records a row.
fn check(
    lab: &Lab,
    report: &mut Report,
    what: &str,
    url: &str,
    expected: &str,
    ok: impl Fn(&Reply) -> bool,
) -> anyhow::Result<Reply> {
    let deadline = Instant::now() + Duration::from_secs(8);
    let reply = loop {
        let r = lab.curl(APP, url, &[])?;
        if ok(&r) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let passed = ok(&reply);
    report.add(
        format!("{what}: {APP} -> {url}"),
        expected,
        format!("{} {}", reply.summary(), client_seen(&reply)),
        passed,
    );
    Ok(reply)
}

/// A 200 from the external TLS server `server` (not from a pod's plain app) that saw a client
/// certificate whose subject or URI SANs contain `client`.
fn tls_200(r: &Reply, server: &str, client: &str) -> bool {
    let Some(j) = r.json() else { return false };
    r.exit == 0
        && r.status == 200
        && j["tls"] == true
        && j["name"] == server
        && j["client"].to_string().contains(client)
}

/// An example file with the seed's placeholders replaced by the lab's addresses and paths.
fn example(lab: &Lab, dir: &Path, file: &str, certs: Option<&Path>) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(dir.join(file))?;
    let mut text =
        text.replace("10.1.1.4", &lab.pod_ip(COMMON)?.to_string()).replace("10.1.1.5", &lab.pod_ip(DIFF)?.to_string());
    if let Some(certs) = certs {
        text = text.replace("/etc/certs/", &format!("{}/", certs.display()));
    }
    Ok(text)
}

/// The transport socket (JSON text) of cluster `name` in pod `pod`'s Envoy config dump.
fn transport_socket(lab: &Lab, pod: &str, name: &str) -> anyhow::Result<String> {
    fn find<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
        match v {
            Value::Object(m) if m.get("name").and_then(Value::as_str) == Some(name) && m.contains_key("type") => {
                Some(v)
            }
            Value::Object(m) => m.values().find_map(|x| find(x, name)),
            Value::Array(a) => a.iter().find_map(|x| find(x, name)),
            _ => None,
        }
    }
    let dump = lab.config_dump(pod)?;
    Ok(find(&dump, name).map(|c| c["transport_socket"].to_string()).unwrap_or_else(|| format!("no cluster {name}")))
}

/// Records whether cluster `cluster` of `pod` takes its TLS certificates from the SDS secrets `names`.
fn check_sds(
    lab: &Lab,
    report: &mut Report,
    what: &str,
    pod: &str,
    cluster: &str,
    names: &[String],
) -> anyhow::Result<()> {
    let socket = transport_socket(lab, pod, cluster)?;
    let ok = names.iter().all(|n| socket.contains(&format!("\"name\":{}", Value::String(n.clone()))));
    let got = if ok { format!("{names:?}") } else { socket };
    report.add(format!("{what}: {pod} cluster {cluster} SDS secrets"), format!("{names:?}"), got, ok);
    Ok(())
}

fn dump_on_failure(lab: &Lab, report: &Report) {
    if report.rows().iter().all(|r| r.ok) {
        return;
    }
    // What the proxies held and counted, for whoever routes the failure.
    for (pod, prefix) in [(APP, "cluster.outbound|"), (GATEWAY, "cluster.outbound|")] {
        let stats = lab.envoy_admin(pod, "/stats").unwrap_or_default();
        let lines: Vec<&str> = stats
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter(|l| {
                ["ssl.", "upstream_cx_connect_fail", "upstream_cx_total", "upstream_rq_"].iter().any(|s| l.contains(s))
            })
            .filter(|l| !l.ends_with(": 0"))
            .collect();
        eprintln!("--- {pod} stats ---\n{}", lines.join("\n"));
        eprintln!("--- {pod} clusters ---\n{}", lab.envoy_admin(pod, "/clusters").unwrap_or_default());
        eprintln!("--- {pod} log ---\n{}", lab.sidecar_log(pod, 40));
    }
}

#[test]
fn seed_003_egress_mtls() -> anyhow::Result<()> {
    let dir = workspace_root().join("examples/egress-mtls");
    let enterprise = Pki::new("enterprise-root-ca")?;
    let diff_server = enterprise.server_cert(&["nginx-mtls.diff-ca.local", "nginx-mtls.per-app.local"])?;
    let mut lab = LabSpec::new()
        .manifest_file(&dir.join("01-app.yaml"))?
        .manifest_file(&dir.join("05-egress-gateway.yaml"))?
        // Outside the cluster: no Pod objects, reached by name through /etc/hosts as DNS would.
        .pod(PodSpec::new("nginx-mtls-common-ca", "external").external())
        .pod(
            PodSpec::new("nginx-mtls-diff-ca", "external").tls(9443, diff_server, Some(enterprise.ca_pem())).external(),
        )
        .pod(PodSpec::new("plain-http", "external").ports(&[80]).external())
        .dns("nginx-mtls.common-ca.local", COMMON)
        .dns("nginx-mtls.diff-ca.local", DIFF)
        .dns("nginx-mtls.per-app.local", DIFF)
        .dns("plain.example.com", PLAIN)
        .start()?;
    let mut report = Report::new("seed 003: egress mTLS");
    let app_id = lab.identity(APP)?;

    // (a) Common CA. The mesh CA exists once the control plane runs: the external server gets its
    // certificate from it now, and trusts the mesh root for clients.
    let server_cert = lab.mesh_cert("external", "nginx-mtls")?;
    let root = lab.mesh_root_pem()?;
    lab.serve_tls(COMMON, 8443, &server_cert, Some(&root))?;
    lab.apply("02-common-ca-service-entry.yaml", &example(&lab, &dir, "02-common-ca-service-entry.yaml", None)?)?;
    lab.converge(&mut report, "(a) ServiceEntry only");
    // The sidecar speaks plain HTTP to the TLS port; the server's TLS alert is no HTTP response.
    check(&lab, &mut report, "(a) ServiceEntry only", COMMON_URL, "502, reset reason: protocol error", |r| {
        r.exit == 0 && r.status == 502 && r.body.contains("protocol error")
    })?;
    lab.apply("03-common-ca-destination-rule.yaml", &example(&lab, &dir, "03-common-ca-destination-rule.yaml", None)?)?;
    lab.converge(&mut report, "(a) + DestinationRule ISTIO_MUTUAL");
    check(
        &lab,
        &mut report,
        "(a) + DestinationRule ISTIO_MUTUAL",
        COMMON_URL,
        &format!("200, server saw {app_id}"),
        |r| tls_200(r, "nginx-mtls-common-ca", &app_id),
    )?;

    // (c) Per-app client certificate from files mounted into the sidecar.
    let app_client = enterprise.client_cert("curl-app-client", None)?;
    let certs = lab.mount_files(
        APP,
        "etc-certs",
        &[("tls.crt", &app_client.chain_pem), ("tls.key", &app_client.key_pem), ("ca.crt", enterprise.ca_pem())],
    )?;
    lab.apply("04-per-app-client-certs.yaml", &example(&lab, &dir, "04-per-app-client-certs.yaml", Some(&certs))?)?;
    lab.converge(&mut report, "(c) MUTUAL with mounted files");
    check(
        &lab,
        &mut report,
        "(c) MUTUAL with mounted files",
        PER_APP_URL,
        "200, server saw CN=curl-app-client",
        |r| tls_200(r, "nginx-mtls-diff-ca", "curl-app-client"),
    )?;

    let (crt, key, ca) = (certs.join("tls.crt"), certs.join("tls.key"), certs.join("ca.crt"));
    check_sds(
        &lab,
        &mut report,
        "(c)",
        APP,
        "outbound|80||nginx-mtls.per-app.local",
        &[format!("file-cert:{}~{}", crt.display(), key.display()), format!("file-root:{}", ca.display())],
    )?;

    // (b) Different CA through the egress gateway, the client certificate from a Secret.
    let gw_client = enterprise.client_cert("egress-gateway-client", None)?;
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: nginx-mtls-external\n  namespace: istio-system\ntype: Opaque\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        indent(&gw_client.chain_pem),
        indent(&gw_client.key_pem),
        indent(enterprise.ca_pem())
    );
    lab.apply("secret-nginx-mtls-external.yaml", &secret)?;
    lab.apply("06-egress-gateway-mtls.yaml", &example(&lab, &dir, "06-egress-gateway-mtls.yaml", None)?)?;
    lab.converge(&mut report, "(b) egress gateway");
    // The gateway terminated the sidecar's mTLS: it forwards the app's identity in XFCC.
    check(
        &lab,
        &mut report,
        "(b) egress gateway",
        DIFF_URL,
        &format!("200, server saw CN=egress-gateway-client, XFCC {app_id}"),
        |r| {
            tls_200(r, "nginx-mtls-diff-ca", "egress-gateway-client")
                && r.peer_identity().as_deref() == Some(app_id.as_str())
        },
    )?;
    check_sds(
        &lab,
        &mut report,
        "(b)",
        GATEWAY,
        "outbound|9443||nginx-mtls.diff-ca.local",
        &["kubernetes://nginx-mtls-external".to_string(), "kubernetes://nginx-mtls-external-cacert".to_string()],
    )?;
    let gw_handshakes = lab.envoy_stat_sum(GATEWAY, "listener.0.0.0.0_8443.", "ssl.handshake")?;
    report.add(
        "(b) egress gateway: mTLS handshakes from sidecars on 8443",
        "> 0",
        gw_handshakes.to_string(),
        gw_handshakes > 0,
    );

    // (d) REGISTRY_ONLY: a host without a ServiceEntry is blocked, ServiceEntry hosts still work.
    check(&lab, &mut report, "(d) ALLOW_ANY (default)", PLAIN_URL, "200 (passthrough)", |r| Expect::Ok200.matches(r))?;
    lab.apply("07-registry-only.yaml", &example(&lab, &dir, "07-registry-only.yaml", None)?)?;
    lab.converge(&mut report, "(d) REGISTRY_ONLY");
    check(&lab, &mut report, "(d) REGISTRY_ONLY, no ServiceEntry", PLAIN_URL, "502 from the sidecar", |r| {
        r.exit == 0 && r.status == 502
    })?;
    check(
        &lab,
        &mut report,
        "(d) REGISTRY_ONLY, ServiceEntry host",
        COMMON_URL,
        &format!("200, server saw {app_id}"),
        |r| tls_200(r, "nginx-mtls-common-ca", &app_id),
    )?;

    dump_on_failure(&lab, &report);
    report.finish();
    Ok(())
}
