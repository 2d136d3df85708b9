//! Seed 004, zero trust east-west, in the mesh lab: a table of PeerAuthentication levels (mesh,
//! namespace, workload, port; UNSET / DISABLE / PERMISSIVE / STRICT) and DestinationRule TLS modes,
//! each request from a client without a sidecar (`plain`) and one with a sidecar (`mesh`), every
//! expected outcome asserted. The YAML is `examples/zero-trust/`, applied in three phases:
//!
//! 1. `10-peer-authentication.yaml`: namespace, workload and port level policies (mesh default
//!    PERMISSIVE);
//! 2. `+ 20-mesh-strict.yaml`: mesh-wide STRICT in the root namespace;
//! 3. `+ 30-destination-rules.yaml`: client-side TLS modes that override auto-mTLS.
//!
//! Needs root. Run: `cargo test -p sailplane-tests --test lab_zero_trust -- --nocapture`.

use sailplane_tests::lab::{Expect, Lab, LabSpec, Report};
use sailplane_tests::paths::workspace_root;

const PLAIN: &str = "zt-client/plain-0";
const MESH: &str = "zt-client/mesh-0";

/// An expected outcome, by shorthand: `P` 200 plaintext, `M` 200 over mTLS as the mesh client,
/// `R` connection reset (curl exit 56), `503` the client's sidecar failing upstream.
#[derive(Clone, Copy)]
enum Want {
    P,
    M,
    R,
    E503,
}

fn url(service: &str, port: u16) -> String {
    format!("http://{service}:{port}/")
}

fn run_cases(lab: &Lab, report: &mut Report, phase: &str, cases: &[(&str, &str, u16, Want)]) -> anyhow::Result<()> {
    let mesh_id = lab.identity(MESH)?;
    for &(from, service, port, want) in cases {
        let expect = match want {
            Want::P => Expect::Plaintext200,
            Want::M => Expect::Mtls200(mesh_id.clone()),
            Want::R => Expect::CurlExit(56),
            Want::E503 => Expect::Status(503),
        };
        lab.check(report, phase, from, &url(service, port), expect)?;
    }
    Ok(())
}

#[test]
fn seed_004_zero_trust_peer_authentication_and_destination_rules() -> anyhow::Result<()> {
    use Want::*;
    let example = workspace_root().join("examples/zero-trust");
    let read = |f: &str| std::fs::read_to_string(example.join(f));
    let mut lab = LabSpec::new().manifest_file(&example.join("00-workloads.yaml"))?.start()?;
    let mut report = Report::new("seed 004: zero trust east-west (PeerAuthentication x DestinationRule)");

    lab.apply("10-peer-authentication.yaml", &read("10-peer-authentication.yaml")?)?;
    lab.converge(&mut report, "1");
    run_cases(
        &lab,
        &mut report,
        "1 ns/workload/port PA",
        &[
            // zt-open: no policy at any level -> PERMISSIVE.
            (PLAIN, "a.zt-open", 8080, P),
            (MESH, "a.zt-open", 8080, M),
            // A server without a sidecar: auto-mTLS sends plaintext.
            (PLAIN, "legacy.zt-open", 8080, P),
            (MESH, "legacy.zt-open", 8080, P),
            // Namespace STRICT.
            (PLAIN, "s.zt-strict", 8080, R),
            (MESH, "s.zt-strict", 8080, M),
            // Workload PERMISSIVE over namespace STRICT.
            (PLAIN, "w.zt-strict", 8080, P),
            (MESH, "w.zt-strict", 8080, M),
            // Workload UNSET inherits namespace STRICT.
            (PLAIN, "u.zt-strict", 8080, R),
            (MESH, "u.zt-strict", 8080, M),
            // Port level: 8080 DISABLE (auto-mTLS follows it), 9090 inherits STRICT.
            (PLAIN, "pl.zt-strict", 8080, P),
            (MESH, "pl.zt-strict", 8080, P),
            (PLAIN, "pl.zt-strict", 9090, R),
            (MESH, "pl.zt-strict", 9090, M),
            // Namespace DISABLE: plaintext only, and auto-mTLS sends plaintext.
            (PLAIN, "d.zt-disable", 8080, P),
            (MESH, "d.zt-disable", 8080, P),
        ],
    )?;

    lab.apply("20-mesh-strict.yaml", &read("20-mesh-strict.yaml")?)?;
    lab.converge(&mut report, "2");
    run_cases(
        &lab,
        &mut report,
        "2 + mesh STRICT",
        &[
            (PLAIN, "a.zt-open", 8080, R),
            (MESH, "a.zt-open", 8080, M),
            (MESH, "legacy.zt-open", 8080, P),
            (PLAIN, "w.zt-strict", 8080, P),
            (PLAIN, "d.zt-disable", 8080, P),
            (PLAIN, "pl.zt-strict", 8080, P),
        ],
    )?;

    let destination_rule_cases = [
        // DR DISABLE to a STRICT server.
        (MESH, "a.zt-open", 8080, E503),
        // DR ISTIO_MUTUAL to a pod without a sidecar.
        (MESH, "legacy.zt-open", 8080, E503),
        // DR DISABLE to a PERMISSIVE server.
        (MESH, "w.zt-strict", 8080, P),
        // DR ISTIO_MUTUAL to a STRICT server.
        (MESH, "s.zt-strict", 8080, M),
        // DR ISTIO_MUTUAL to a DISABLE server.
        (MESH, "d.zt-disable", 8080, E503),
    ];
    // Applied to running proxies: the clusters change in place (CDS, then EDS for the new clusters).
    lab.apply("30-destination-rules.yaml", &read("30-destination-rules.yaml")?)?;
    lab.converge(&mut report, "3");
    run_cases(&lab, &mut report, "3 + DestinationRules", &destination_rule_cases)?;
    // The same with a freshly started client proxy (its whole configuration at once), which tells
    // a translation problem from a push problem.
    let restarted = lab.restart_sidecar(MESH);
    report.add("3 restart mesh-0's sidecar", "in sync", format!("{restarted:?}"), restarted.is_ok());
    run_cases(&lab, &mut report, "3 after client restart", &destination_rule_cases)?;
    report.finish();
    Ok(())
}
