//! Seed 002, encryption in transit, in the mesh lab (network-namespace pods, real sidecars with
//! iptables interception), from the YAML in `examples/encryption-in-transit/`:
//!
//! 1. no sidecars: front-end -> back-end over plain HTTP, 200;
//! 2. sidecar on the back-end only, default PERMISSIVE: still 200 (plaintext into the sidecar);
//! 3. PeerAuthentication STRICT in back-end: the plaintext request is reset (curl exit 56);
//! 4. sidecars on both: 200 over mTLS; the back-end's inbound proxy forwards the front-end's SPIFFE
//!    identity (x-forwarded-client-cert), and the SNI
//!    `outbound_.8080_._.hello-world-rest-api.back-end.svc.cluster.local` is in the front-end
//!    proxy's cluster and in what the back-end proxy's TLS inspector received.
//!
//! Needs root. Run: `cargo test -p sailplane-tests --test lab_encryption_in_transit -- --nocapture`.

use anyhow::Context;
use sailplane_tests::lab::{Expect, LabSpec, Report};
use sailplane_tests::paths::workspace_root;
use serde_json::Value;

const FRONT: &str = "front-end/nginx-0";
const BACK: &str = "back-end/hello-world-rest-api-0";
const URL: &str = "http://hello-world-rest-api.back-end:8080/hello";
const CLUSTER: &str = "outbound|8080||hello-world-rest-api.back-end.svc.cluster.local";
const SNI: &str = "outbound_.8080_._.hello-world-rest-api.back-end.svc.cluster.local";

/// The `sni` of the `tlsMode-istio` transport socket match (auto-mTLS) of `cluster`, or of its plain
/// transport socket, in an Envoy config dump.
fn cluster_sni(dump: &Value, cluster: &str) -> Option<String> {
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
    let c = find(dump, cluster)?;
    let from_matches = c["transport_socket_matches"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["match"]["tlsMode"] == "istio")
        .and_then(|m| m["transport_socket"]["typed_config"]["sni"].as_str());
    from_matches.or_else(|| c["transport_socket"]["typed_config"]["sni"].as_str()).map(str::to_string)
}

#[test]
fn seed_002_encryption_in_transit() -> anyhow::Result<()> {
    let example = workspace_root().join("examples/encryption-in-transit");
    let mut lab = LabSpec::new()
        .manifest_file(&example.join("01-front-end.yaml"))?
        .manifest_file(&example.join("02-back-end.yaml"))?
        .start()?;
    let mut report = Report::new("seed 002: encryption in transit");
    let front_id = lab.identity(FRONT)?;

    // 1. No mesh at all.
    lab.check(&mut report, "1 no sidecars", FRONT, URL, Expect::Plaintext200)?;

    // 2. Injection in back-end (default PERMISSIVE): plaintext still accepted, now through the sidecar.
    lab.inject(BACK)?;
    let r = lab.check(&mut report, "2 back-end sidecar, PERMISSIVE", FRONT, URL, Expect::Plaintext200)?;
    let peer = r.json().and_then(|j| j["peer"].as_str().map(str::to_string)).unwrap_or_default();
    report.add(
        "2 the app is reached through its sidecar",
        "peer 127.0.0.6 (inbound passthrough)",
        format!("peer {peer}"),
        peer.starts_with("127.0.0.6:"),
    );

    // 3. STRICT in back-end: plaintext from a pod without a sidecar is refused.
    let strict = std::fs::read_to_string(example.join("03-peer-authentication-strict.yaml"))?;
    lab.apply("03-peer-authentication-strict.yaml", &strict)?;
    lab.converge(&mut report, "3");
    lab.check(&mut report, "3 STRICT, front-end without sidecar", FRONT, URL, Expect::CurlExit(56))?;

    // 4. Injection in front-end: mutual TLS between the sidecars. The back-end's TLS inspector logs
    // the SNI it received at debug level.
    lab.inject(FRONT)?;
    lab.envoy_admin_post(BACK, "/logging?filter=debug")?;
    lab.check(&mut report, "4 STRICT, sidecars on both", FRONT, URL, Expect::Mtls200(front_id.clone()))?;
    lab.envoy_admin_post(BACK, "/logging?filter=warning")?;
    let log = lab.sidecar_log_text(BACK)?;
    let seen: Vec<&str> =
        log.lines().filter_map(|l| l.split_once("requestedServerName: ").map(|(_, sni)| sni.trim())).collect();
    report.add("4 back-end proxy: SNI received (TLS inspector)", SNI, format!("{seen:?}"), seen.contains(&SNI));

    let dump = lab.config_dump(FRONT).context("front-end sidecar config_dump")?;
    let sni = cluster_sni(&dump, CLUSTER);
    report.add(format!("4 front-end proxy: SNI of {CLUSTER}"), SNI, format!("{sni:?}"), sni.as_deref() == Some(SNI));
    let client_handshakes = lab.envoy_stat_sum(FRONT, &format!("cluster.{CLUSTER}"), "ssl.handshake")?;
    report.add(
        "4 front-end proxy: TLS handshakes to the back-end",
        "> 0",
        client_handshakes.to_string(),
        client_handshakes > 0,
    );
    let server_handshakes = lab.envoy_stat_sum(BACK, "listener.0.0.0.0_15006.", "ssl.handshake")?;
    report.add(
        "4 back-end proxy: TLS handshakes on virtualInbound",
        "> 0",
        server_handshakes.to_string(),
        server_handshakes > 0,
    );
    // The sidecars fetched this configuration over mTLS on 15012, authenticated by their certificate.
    for pod in [FRONT, BACK] {
        let id = lab.xds_identity(pod)?;
        let want = lab.identity(pod)?;
        report.add(
            format!("xDS identity of {pod} (15012)"),
            want.clone(),
            format!("{id:?}"),
            id.as_deref() == Some(want.as_str()),
        );
    }
    if !report.rows().iter().all(|r| r.ok) {
        // What the proxies held, for whoever routes the failure (translator or control plane).
        eprintln!("--- front-end sidecar clusters ---\n{}", lab.envoy_admin(FRONT, "/clusters").unwrap_or_default());
        eprintln!("--- back-end sidecar listeners ---\n{}", lab.envoy_admin(BACK, "/listeners").unwrap_or_default());
    }
    report.finish();
    Ok(())
}
