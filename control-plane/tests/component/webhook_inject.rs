//! Golden tests of the injection webhook, over HTTPS to the running webhook server.
//!
//! Each `testdata/inject/<case>.input.json` is a real AdmissionReview (as the API server sends it)
//! and is POSTed to `/inject`. Expected outputs, next to it:
//! - `<case>.output.json`: the AdmissionReview answer exactly as sent (patch base64-encoded);
//! - `<case>.patch.json`: the JSON Patch decoded (only when the pod is patched);
//! - `<case>.pod.json`: the pod after applying the patch (only when patched).
//!
//! Regenerate after an intended change with `SAILPLANE_REGENERATE=1 cargo test -p sailplane --test
//! component webhook_inject`, and review the diff. Namespaces known to the webhook in these cases: `injected`
//! (`istio-injection=enabled`), `plain` (no label) and `disabled` (`istio-injection=disabled`); any
//! other namespace is unknown to it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sailplane::webhook::inject::InjectorConfig;
use sailplane::webhook::{WebhookState, serve, tls};
use sailplane_tests::webhook::{Trust, post};
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/inject")
}

fn regenerate() -> bool {
    std::env::var_os("SAILPLANE_REGENERATE").is_some_and(|v| v == "1")
}

fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
    let ns = |label: Option<&str>| -> BTreeMap<String, String> {
        label.map(|v| [("istio-injection".to_string(), v.to_string())].into_iter().collect()).unwrap_or_default()
    };
    [
        ("injected".to_string(), ns(Some("enabled"))),
        ("plain".to_string(), ns(None)),
        ("disabled".to_string(), ns(Some("disabled"))),
    ]
    .into_iter()
    .collect()
}

fn injector() -> InjectorConfig {
    let mut proxy_metadata = BTreeMap::new();
    // A mesh-wide default the pods' own proxyMetadata overrides.
    proxy_metadata.insert("SECRET_TTL".to_string(), "24h".to_string());
    InjectorConfig {
        image: "ghcr.io/example/sailplane:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        proxy_metadata,
        ..InjectorConfig::default()
    }
}

/// Starts the webhook server on loopback with a generated certificate for `localhost`.
async fn start() -> (std::net::SocketAddr, String) {
    let (config, pem) = tls::self_signed(&["localhost".to_string()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(WebhookState { injector: injector(), namespaces: Arc::new(namespaces()) });
    tokio::spawn(serve(listener, config, state));
    (addr, pem)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s
}

/// Compares (or, when regenerating, writes) one golden file. `None` means the file must not exist.
fn golden(path: &Path, actual: Option<&Value>, failures: &mut Vec<String>) {
    if regenerate() {
        match actual {
            Some(v) => std::fs::write(path, pretty(v)).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
        return;
    }
    let expected = std::fs::read_to_string(path).ok();
    let actual = actual.map(pretty);
    if expected != actual {
        failures.push(format!(
            "{}: differs (run with SAILPLANE_REGENERATE=1 to update)\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            expected.as_deref().unwrap_or("<no file>"),
            actual.as_deref().unwrap_or("<no output>")
        ));
    }
}

/// Applies a JSON Patch made of `add` operations (all the injector emits) to `doc`.
fn apply_patch(doc: &mut Value, ops: &Value) {
    for op in ops.as_array().unwrap() {
        assert_eq!(op["op"], "add", "only add operations are expected: {op}");
        let path = op["path"].as_str().unwrap();
        let mut parts: Vec<String> = path.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
        let last = parts.pop().unwrap();
        let mut target = &mut *doc;
        for p in &parts {
            target = match target {
                Value::Object(m) => m.get_mut(p).unwrap_or_else(|| panic!("{path}: no {p}")),
                Value::Array(a) => a.get_mut(p.parse::<usize>().unwrap()).unwrap(),
                _ => panic!("{path}: cannot descend into {p}"),
            };
        }
        let value = op["value"].clone();
        match target {
            Value::Object(m) => {
                m.insert(last, value);
            }
            Value::Array(a) if last == "-" => a.push(value),
            Value::Array(a) => {
                let i: usize = last.parse().unwrap();
                assert!(i <= a.len(), "{path}: index out of range");
                a.insert(i, value);
            }
            _ => panic!("{path}: parent is not a container"),
        }
    }
}

#[tokio::test]
async fn injection_goldens() {
    let (addr, pem) = start().await;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(testdata())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "the golden cases are missing: {inputs:?}");
    let mut failures = Vec::new();
    let mut injected = 0;
    for input in &inputs {
        let case = input.file_name().unwrap().to_string_lossy().trim_end_matches(".input.json").to_string();
        let body = std::fs::read(input).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        let (status, answer) = post(addr, "/inject", &body, Trust::Root { pem: &pem, server_name: "localhost" }).await;
        assert_eq!(status, 200, "{case}: {answer}");
        let response = &answer["response"];
        assert_eq!(response["uid"], request["request"]["uid"], "{case}: the uid is echoed");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");

        let resp: sailplane::webhook::admission::AdmissionResponse = serde_json::from_value(response.clone()).unwrap();
        let patch = resp.patch_ops();
        let pod = patch.as_ref().map(|ops| {
            let mut pod = request["request"]["object"].clone();
            apply_patch(&mut pod, ops);
            pod
        });
        // What each case name promises.
        if case.ends_with("-skipped") || case.ends_with("-ignored") {
            assert!(resp.allowed && patch.is_none(), "{case}: must pass unchanged: {answer}");
        } else if case.ends_with("-invalid") {
            assert!(!resp.allowed && patch.is_none(), "{case}: must be refused: {answer}");
            let msg = resp.status.as_ref().unwrap().message.clone();
            assert!(msg.starts_with("sidecar injection: annotation sidecar.istio.io/"), "{case}: {msg}");
        } else {
            injected += 1;
            let pod = pod.as_ref().unwrap_or_else(|| panic!("{case}: must be injected: {answer}"));
            let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
            let spec = typed.spec.unwrap();
            assert_eq!(spec.containers.last().unwrap().name, "istio-proxy", "{case}");
            assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "istio-init", "{case}");
            let labels = typed.metadata.labels.unwrap();
            assert_eq!(labels.get("security.istio.io/tlsMode").map(String::as_str), Some("istio"), "{case}");
            // Every mount of the proxy names a pod volume.
            let volumes: Vec<String> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
            for m in spec.containers.last().unwrap().volume_mounts.as_ref().unwrap() {
                assert!(volumes.contains(&m.name), "{case}: mount {} has no volume", m.name);
            }
        }
        golden(&testdata().join(format!("{case}.output.json")), Some(&answer), &mut failures);
        golden(&testdata().join(format!("{case}.patch.json")), patch.as_ref(), &mut failures);
        golden(&testdata().join(format!("{case}.pod.json")), pod.as_ref(), &mut failures);
    }
    assert!(injected >= 6, "most cases inject");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn proxy_env(pod: &Value) -> BTreeMap<String, String> {
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let proxy = containers.iter().find(|c| c["name"] == "istio-proxy").unwrap();
    proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

fn read_case(case: &str, what: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata().join(format!("{case}.{what}.json"))).unwrap()).unwrap()
}

#[test]
fn proxy_metadata_and_user_volumes_in_both_forms() {
    // Object form, YAML ProxyConfig.
    let pod = read_case("pod-proxy-config-output-certs", "pod");
    let env = proxy_env(&pod);
    assert_eq!(env.get("OUTPUT_CERTS").map(String::as_str), Some("/etc/istio-output-certs"));
    assert_eq!(env.get("SECRET_TTL").map(String::as_str), Some("12h"), "the pod's proxyMetadata wins over the mesh's");
    let proxy =
        pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "istio-proxy").unwrap().clone();
    assert!(
        proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "istio-certs" && m["mountPath"] == "/etc/istio-output-certs")
    );
    // Array form (EnRoute), JSON ProxyConfig.
    let pod = read_case("pod-user-volume-array-enroute", "pod");
    let env = proxy_env(&pod);
    assert_eq!(env.get("OUTPUT_CERTS").map(String::as_str), Some("/etc/istio-certs"));
    assert_eq!(env.get("SECRET_TTL").map(String::as_str), Some("24h"), "the mesh default applies");
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "istio-certs" && v["emptyDir"]["medium"] == "Memory")
    );
    // Downward API and the CA address are always there.
    let proxy =
        pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "istio-proxy").unwrap().clone();
    let names: Vec<&str> = proxy["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    for n in ["CA_ADDR", "POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT"] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    let token = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "istio-token").unwrap().clone();
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "istio-ca");
}

fn init_script(case: &str) -> String {
    let pod = read_case(case, "pod");
    let init =
        pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "istio-init").unwrap().clone();
    assert_eq!(init["command"][0], "sh");
    init["command"][2].as_str().unwrap().to_string()
}

/// Runs the injected init container's script in a fresh network namespace (as root, like the init
/// container with NET_ADMIN) and returns the nat table it left.
fn run_in_netns(script: &str) -> String {
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .output()
        .expect("unshare (util-linux) is needed to run the capture script; run as root with iptables installed");
    assert!(out.status.success(), "script failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_init_container_rules_load_into_iptables() {
    let nat = run_in_netns(&init_script("pod-traffic-annotations"));
    for rule in [
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.244.0.0/16 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(nat.contains(rule), "missing {rule:?} in\n{nat}");
    }
    assert!(!nat.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "only the listed ranges are captured:\n{nat}");

    let nat = run_in_netns(&init_script("pod-namespace-enabled"));
    assert!(nat.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"), "{nat}");
    assert!(nat.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "{nat}");

    // includeInboundPorts "" turns inbound capture off (EnRoute's gateway takes traffic directly).
    let nat = run_in_netns(&init_script("pod-user-volume-array-enroute"));
    assert!(!nat.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND"), "{nat}");
    assert!(nat.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "{nat}");
}
