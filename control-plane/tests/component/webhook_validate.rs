//! The validation webhook over HTTPS: real AdmissionReview JSON in, the same verdict and words as
//! `sailplane analyze` out.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use sailplane::cli::analyze::analyze;
use sailplane::sources::yaml::parse_documents;
use sailplane::webhook::inject::InjectorConfig;
use sailplane::webhook::{WebhookState, serve, tls};
use sailplane_tests::webhook::{Trust, post};
use sailplane_translator::diag::Severity;
use sailplane_translator::validate::validate_set;
use serde_json::{Value, json};

async fn start() -> (std::net::SocketAddr, String) {
    let (config, pem) = tls::self_signed(&["istiod.istio-system.svc".to_string()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let state = Arc::new(WebhookState { injector: InjectorConfig::default(), namespaces: Arc::new(namespaces) });
    tokio::spawn(serve(listener, config, state));
    (addr, pem)
}

fn review(uid: &str, operation: &str, object: &Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": object["kind"]},
        "resource": {"group": group, "version": version, "resource": format!("{}s", object["kind"].as_str().unwrap().to_lowercase())},
        "namespace": object["metadata"]["namespace"], "name": object["metadata"]["name"],
        "operation": operation, "userInfo": {"username": "kubernetes-admin"},
        "object": object, "oldObject": null, "dryRun": false}})
}

/// What `sailplane analyze` says about `object`: (errors, warnings) as `Kind ns/name: field: message`.
fn analyze_object(object: &Value) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("obj.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(object).unwrap()).unwrap();
    let report = analyze(std::slice::from_ref(&path)).unwrap();
    // Cross-object findings (unknown hosts, ...) need the rest of the mesh; the webhook judges one
    // object, as Istio's does. Leave those out of what analyze printed.
    let (objects, _) = parse_documents("obj.yaml", &std::fs::read_to_string(&path).unwrap());
    let cross: Vec<String> = validate_set(&objects.iter().collect::<Vec<_>>()).iter().map(|d| d.to_string()).collect();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for d in &report.diagnostics {
        let mut plain = d.clone();
        plain.source = None;
        if cross.contains(&plain.to_string()) {
            continue;
        }
        let line = sailplane::webhook::validate::message(d);
        match d.severity {
            Severity::Error => errors.push(line),
            Severity::Warning => warnings.push(line),
        }
    }
    (errors, warnings)
}

async fn ask(addr: std::net::SocketAddr, pem: &str, body: &Value) -> Value {
    let (status, answer) = post(
        addr,
        "/validate",
        body.to_string().as_bytes(),
        Trust::Root { pem, server_name: "istiod.istio-system.svc" },
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["uid"], body["request"]["uid"]);
    answer["response"].clone()
}

#[tokio::test]
async fn invalid_istio_objects_are_refused_with_analyze_messages() {
    let (addr, pem) = start().await;
    let cases = [
        // Valid.
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "reviews", "namespace": "bookinfo"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}),
        // Rule violations (Istio's webhook rules).
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "bad-weights", "namespace": "bookinfo"},
               "spec": {"hosts": ["reviews"], "http": [{"route": [
                   {"destination": {"host": "reviews"}, "weight": -5},
                   {"destination": {"host": "ratings", "port": {"number": 70000}}, "weight": 50}]}]}}),
        // Schema violation: an unknown field.
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
               "metadata": {"name": "typo", "namespace": "bookinfo"},
               "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simpel": "ROUND_ROBIN"}}}}),
        // An enum value Istio does not know.
        json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "back-end"},
               "spec": {"mtls": {"mode": "STRICTER"}}}),
        // Valid (seed-002's STRICT policy).
        json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "back-end"},
               "spec": {"mtls": {"mode": "STRICT"}}}),
        // Accepted with a warning.
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "empty-selector", "namespace": "back-end"},
               "spec": {"selector": {"matchLabels": {}}, "mtls": {"mode": "PERMISSIVE"}}}),
    ];
    let mut denied = 0;
    let mut warned = 0;
    for (i, object) in cases.iter().enumerate() {
        let response = ask(addr, &pem, &review(&format!("v-{i}"), "CREATE", object)).await;
        let (errors, warnings) = analyze_object(object);
        let allowed = response["allowed"].as_bool().unwrap();
        assert_eq!(allowed, errors.is_empty(), "case {i}: analyze says {errors:?}, webhook says {response}");
        if !allowed {
            denied += 1;
            assert_eq!(response["status"]["code"], 400);
            assert_eq!(
                response["status"]["message"].as_str().unwrap(),
                format!("configuration is invalid: {}", errors.join("; ")),
                "case {i}: same words as analyze"
            );
        }
        let got_warnings: Vec<String> = response["warnings"]
            .as_array()
            .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(got_warnings, warnings, "case {i}");
        warned += usize::from(!warnings.is_empty());
    }
    assert_eq!(denied, 3, "three invalid cases");
    assert_eq!(warned, 1, "one case with a warning");

    // Updates are judged too; deletes never are.
    let bad = &cases[1];
    assert_eq!(ask(addr, &pem, &review("u", "UPDATE", bad)).await["allowed"], false);
    assert_eq!(ask(addr, &pem, &review("d", "DELETE", bad)).await["allowed"], true);
}

#[tokio::test]
async fn namespace_from_the_request_names_the_object() {
    let (addr, pem) = start().await;
    // Objects under review may lack metadata.namespace (kubectl apply -n ...).
    let mut object = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                            "metadata": {"name": "gw"},
                            "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": []}]}});
    let mut body = review("g", "CREATE", &object);
    body["request"]["namespace"] = json!("edge");
    let response = ask(addr, &pem, &body).await;
    assert_eq!(response["allowed"], false, "{response}");
    let msg = response["status"]["message"].as_str().unwrap();
    assert!(msg.starts_with("configuration is invalid: Gateway edge/gw: spec.servers[0].hosts"), "{msg}");
    object["metadata"]["namespace"] = json!("edge");
    let (errors, _) = analyze_object(&object);
    assert_eq!(msg, format!("configuration is invalid: {}", errors.join("; ")));
}
