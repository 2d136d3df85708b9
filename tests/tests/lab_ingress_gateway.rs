//! Seeds 000/001, end-to-end encryption through an ingress gateway (and EnRoute's pattern), in the
//! mesh lab, from the YAML in `examples/ingress-gateway/`:
//!
//! 1. mesh-wide STRICT (PeerAuthentication `default` in `istio-system`): a client without a sidecar
//!    calling productpage directly is refused (reset, curl exit 56);
//! 2. an ingress gateway pod (`sailplane agent --node-type router`, no interception) terminates
//!    HTTPS for `bookinfo.example.com` with the certificate of a `kubernetes.io/tls` Secret
//!    (`credentialName`, served over ADS to the gateway of the Secret's namespace) and calls
//!    productpage over ISTIO_MUTUAL (auto mTLS): the client gets 200, productpage's sidecar forwards
//!    the gateway's SPIFFE identity (x-forwarded-client-cert); a client that does not trust the
//!    Secret's CA fails verification (curl exit 60);
//! 3. EnRoute's pattern: an Envoy Sailplane does not configure (static bootstrap
//!    `enroute-envoy.yaml`), fed the certificate files of `sailplane agent --output-certs` (no
//!    `--run-envoy`), reaches the STRICT productpage over mTLS (200, productpage sees EnRoute's
//!    identity); the same Envoy without those certificates (plaintext, or TLS without a client
//!    certificate) is refused (503).
//!
//! Needs root. Run: `cargo test -p sailplane-tests --test lab_ingress_gateway -- --nocapture`.

use anyhow::Context;
use sailplane_tests::lab::{Expect, Lab, LabSpec, Report};
use sailplane_tests::paths::workspace_root;
use sailplane_tests::tls_echo::Pki;
use serde_json::Value;

const HOST: &str = "bookinfo.example.com";
const GATEWAY: &str = "istio-system/istio-ingressgateway-0";
const PRODUCTPAGE: &str = "bookinfo/productpage-v1-0";
const CLIENT: &str = "client/curl-0";
const ENROUTE: &str = "enroute-system/enroute-0";
const CREDENTIAL: &str = "kubernetes://bookinfo-credential";
const UPSTREAM: &str = "outbound|9080||productpage.bookinfo.svc.cluster.local";

/// The `kubernetes.io/tls` Secret `kubectl create -n istio-system secret tls bookinfo-credential`
/// makes (file mode reads `stringData` as the API server would merge it into `data`).
fn tls_secret(chain_pem: &str, key_pem: &str) -> String {
    let json = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bookinfo-credential\n  namespace: istio-system\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: {}\n  tls.key: {}\n",
        json(chain_pem),
        json(key_pem)
    )
}

/// Whether any value in `v` (a config dump) is the string `s`.
fn mentions(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|x| mentions(x, s)),
        Value::Object(m) => m.values().any(|x| mentions(x, s)),
        _ => false,
    }
}

/// Names of the active listeners in a config dump.
fn listener_names(dump: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
            if let Some(n) = l["name"].as_str() {
                let state = if l.get("active_state").is_some() { "" } else { " (warming)" };
                out.push(format!("{n}{state}"));
            }
        }
    }
    out
}

fn dump_gateway(lab: &Lab) {
    eprintln!("--- gateway listeners ---\n{}", lab.envoy_admin(GATEWAY, "/listeners").unwrap_or_default());
    eprintln!("--- gateway clusters ---\n{}", lab.envoy_admin(GATEWAY, "/clusters").unwrap_or_default());
    eprintln!("--- gateway config_dump ---\n{}", lab.envoy_admin(GATEWAY, "/config_dump").unwrap_or_default());
    eprintln!("--- gateway log ---\n{}", lab.sidecar_log(GATEWAY, 60));
}

#[test]
fn seeds_000_001_ingress_gateway_end_to_end_encryption() -> anyhow::Result<()> {
    let example = workspace_root().join("examples/ingress-gateway");
    // The gateway certificate for bookinfo.example.com, from a CA of the user's own (not the mesh's).
    let pki = Pki::new("bookinfo-ca")?;
    let cert = pki.server_cert(&[HOST])?;
    let mut spec = LabSpec::new();
    for f in [
        "01-bookinfo.yaml",
        "02-ingress-gateway.yaml",
        "03-mesh-mtls-strict.yaml",
        "04-bookinfo-gateway.yaml",
        "05-client.yaml",
        "06-enroute.yaml",
    ] {
        spec = spec.manifest_file(&example.join(f))?;
    }
    let lab = spec.yaml("bookinfo-credential.yaml", &tls_secret(&cert.chain_pem, &cert.key_pem)).start()?;
    let mut report = Report::new("seeds 000/001: end-to-end encryption through an ingress gateway");
    let gateway_id = lab.identity(GATEWAY)?;
    let enroute_id = lab.identity(ENROUTE)?;

    // 1. Mesh-wide STRICT: productpage's sidecar refuses plaintext.
    let direct = "http://productpage.bookinfo:9080/productpage";
    lab.check(&mut report, "1 mesh STRICT, no sidecar", CLIENT, direct, Expect::CurlExit(56))?;

    // 2. Client -> gateway over HTTPS (the Secret's certificate), gateway -> productpage over mTLS.
    let ca = lab.pod_dir(CLIENT)?.join("bookinfo-ca.pem");
    std::fs::write(&ca, pki.ca_pem())?;
    let ca = ca.display().to_string();
    let vip = lab.service_vip("istio-system", "istio-ingressgateway")?;
    let resolve = format!("{HOST}:443:{vip}");
    let url = format!("https://{HOST}/productpage");
    let r = lab.check_curl(
        &mut report,
        "2 HTTPS via the gateway",
        CLIENT,
        &url,
        &["--cacert", &ca, "--resolve", &resolve],
        Expect::Mtls200(gateway_id.clone()),
    )?;
    let host_seen = r.json().and_then(|j| j["host"].as_str().map(str::to_string)).unwrap_or_default();
    report.add("2 productpage sees the request's host", HOST, host_seen.clone(), host_seen == HOST);
    lab.check_curl(
        &mut report,
        "2 client without the Secret's CA",
        CLIENT,
        &url,
        &["--resolve", &resolve],
        Expect::CurlExit(60),
    )?;

    let dump = lab.config_dump(GATEWAY).context("gateway config_dump")?;
    let listeners = listener_names(&dump);
    report.add(
        "2 gateway listener (Service 443 -> targetPort 8443)",
        "0.0.0.0_8443",
        format!("{listeners:?}"),
        listeners.iter().any(|l| l == "0.0.0.0_8443"),
    );
    report.add(
        "2 gateway: certificate from the credentialName Secret",
        CREDENTIAL,
        if mentions(&dump, CREDENTIAL) { CREDENTIAL.to_string() } else { "not in config_dump".into() },
        mentions(&dump, CREDENTIAL),
    );
    let downstream = lab.envoy_stat_sum(GATEWAY, "listener.0.0.0.0_8443.", "ssl.handshake")?;
    report.add("2 gateway: TLS handshakes with clients on 8443", "> 0", downstream.to_string(), downstream > 0);
    let upstream = lab.envoy_stat_sum(GATEWAY, &format!("cluster.{UPSTREAM}"), "ssl.handshake")?;
    report.add("2 gateway: mTLS handshakes to productpage", "> 0", upstream.to_string(), upstream > 0);
    let xds = lab.xds_identity(GATEWAY)?;
    let xds_ok = xds.as_deref() == Some(gateway_id.as_str());
    report.add("2 xDS identity of the gateway (15012)", gateway_id.clone(), format!("{xds:?}"), xds_ok);

    // 3. EnRoute: its own Envoy with the agent's OUTPUT_CERTS files.
    let certs = lab.pod_dir(ENROUTE)?.join("certs");
    let agent = lab.start_cert_agent(ENROUTE, &certs)?;
    let bootstrap = std::fs::read_to_string(example.join("enroute-envoy.yaml"))?
        .replace("@CERTS@", &certs.display().to_string())
        .replace("@PRODUCTPAGE_IP@", &lab.pod_ip(PRODUCTPAGE)?.to_string());
    let envoy = lab.start_envoy(ENROUTE, "enroute-envoy", &bootstrap, 9901)?;
    // Why productpage's sidecar refuses the Envoy without certificates (counted from here on: step
    // 1's plaintext client was refused the same way): no filter chain for plaintext, and a TLS
    // handshake without the client certificate STRICT requires.
    let inbound = |suffix: &str| lab.envoy_stat_sum(PRODUCTPAGE, "listener.0.0.0.0_15006.", suffix);
    let (no_chain_before, no_cert_before) = (inbound("no_filter_chain_match")?, inbound("ssl.fail_verify_no_cert")?);
    let via = |port: u16| format!("http://127.0.0.1:{port}/productpage");
    lab.check(
        &mut report,
        "3 EnRoute Envoy + OUTPUT_CERTS",
        ENROUTE,
        &via(10000),
        Expect::Mtls200(enroute_id.clone()),
    )?;
    lab.check(&mut report, "3 same Envoy, plaintext upstream", ENROUTE, &via(10001), Expect::Status(503))?;
    lab.check(&mut report, "3 same Envoy, TLS, no client certificate", ENROUTE, &via(10002), Expect::Status(503))?;
    let stats = lab.admin_get(ENROUTE, 9901, "/stats")?;
    let stat = |name: &str| -> u64 {
        let value = |l: &str| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok();
        stats.lines().find_map(value).unwrap_or(0)
    };
    let handshakes = stat("cluster.productpage_mtls.ssl.handshake");
    report.add("3 EnRoute Envoy: mTLS handshakes to productpage", "> 0", handshakes.to_string(), handshakes > 0);
    let no_chain = inbound("no_filter_chain_match")?.saturating_sub(no_chain_before);
    report.add("3 productpage sidecar: plaintext, no filter chain (new)", "> 0", no_chain.to_string(), no_chain > 0);
    let no_cert = inbound("ssl.fail_verify_no_cert")?.saturating_sub(no_cert_before);
    report.add("3 productpage sidecar: TLS without client cert (new)", "> 0", no_cert.to_string(), no_cert > 0);

    if !report.rows().iter().all(|r| r.ok) {
        dump_gateway(&lab);
        eprintln!("--- productpage sidecar log ---\n{}", lab.sidecar_log(PRODUCTPAGE, 40));
        eprintln!("--- enroute certificate agent ---\n{}", agent.log(20));
        eprintln!("--- enroute envoy ---\n{}", envoy.log(40));
    }
    report.finish();
    Ok(())
}
