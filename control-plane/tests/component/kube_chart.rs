//! The Helm chart `charts/sailplane`: `helm lint --strict` passes, and the objects `helm template`
//! renders are what the control plane needs: the kinds, the Service ports (15010, 15012, 15014,
//! 443->15017), discovery flags that `sailplane discovery` accepts, least-privilege RBAC that still
//! covers every watched kind, webhook configurations pointing at the Service, and a webhook
//! certificate the API server would accept (verified against the caBundle by serving a real
//! AdmissionReview with it).
//!
//! helm comes from `scripts/install-helm.sh` (./.tools/bin/helm), `HELM_BIN`, or PATH; a missing
//! helm is a failure, not a skip.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use clap::Parser;
use sailplane::cli::discovery::DiscoveryArgs;
use sailplane::sources::kube::ISTIO_KINDS;
use sailplane::webhook::inject::InjectorConfig;
use sailplane::webhook::{WebhookState, serve, tls};
use sailplane_translator::model::MeshConfig;
use serde::Deserialize;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM_BIN") {
        return PathBuf::from(p);
    }
    let local = root().join(".tools/bin/helm");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("helm not found: run scripts/install-helm.sh (installs ./.tools/bin/helm) or set HELM_BIN")
        })
}

fn chart() -> PathBuf {
    root().join("charts/sailplane")
}

fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm()).args(args).output().expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn template(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args =
        vec!["template", "sailplane", chart.to_str().unwrap(), "--namespace", "istio-system", "--include-crds"];
    args.extend_from_slice(extra);
    let text = run_helm(&args);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// (group, resource) -> verbs, over every rule of a role.
fn permissions(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                out.entry((g.clone(), r)).or_default().extend(strings(&rule["verbs"]));
            }
        }
    }
    out
}

#[derive(Parser)]
struct DiscoveryCli {
    #[command(flatten)]
    args: DiscoveryArgs,
}

#[test]
fn lint_passes() {
    let chart = chart();
    let out = run_helm(&["lint", "--strict", chart.to_str().unwrap()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn rendered_objects_are_complete() {
    let docs = template(&[]);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        one(&docs, kind);
    }
    let crds: BTreeSet<String> = of_kind(&docs, "CustomResourceDefinition")
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = ISTIO_KINDS.iter().map(|k| format!("{}.{}", k.plural, k.group)).collect();
    assert_eq!(crds, expected);
    for d in &docs {
        if d["kind"] != "CustomResourceDefinition"
            && !d["kind"].as_str().unwrap().starts_with("Cluster")
            && !d["kind"].as_str().unwrap().ends_with("WebhookConfiguration")
        {
            assert_eq!(d["metadata"]["namespace"], "istio-system", "{} {}", d["kind"], d["metadata"]["name"]);
        }
    }

    // Service: istiod's name and ports.
    let svc = one(&docs, "Service");
    assert_eq!(svc["metadata"]["name"], "istiod");
    let ports: BTreeMap<u64, u64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["targetPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, [(15010, 15010), (15012, 15012), (15014, 15014), (443, 15017)].into_iter().collect());

    // Deployment: the args are valid `sailplane discovery` flags, with Kubernetes mode on.
    let dep = one(&docs, "Deployment");
    let pod = &dep["spec"]["template"];
    let selector = &dep["spec"]["selector"]["matchLabels"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "template labels match the selector");
        assert_eq!(&svc["spec"]["selector"][k], v, "the Service selects the pods");
    }
    assert_eq!(pod["metadata"]["labels"]["sidecar.istio.io/inject"], "false");
    let container = &pod["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "discovery");
    let parsed =
        DiscoveryCli::try_parse_from(std::iter::once("sailplane".to_string()).chain(args.iter().skip(1).cloned()))
            .unwrap_or_else(|e| panic!("the chart's args are not valid discovery flags: {e}\n{args:?}"))
            .args;
    assert!(parsed.kube.kubernetes);
    assert!(parsed.config.is_none());
    assert_eq!(
        (parsed.xds_port, parsed.secure_port, parsed.monitoring_port, parsed.webhook.webhook_port),
        (15010, 15012, 15014, 15017)
    );
    assert_eq!(parsed.webhook.injection_discovery_host.as_deref(), Some("istiod.istio-system.svc"));
    let container_ports: BTreeSet<u64> =
        container["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert_eq!(container_ports, [15010, 15012, 15014, 15017].into_iter().collect());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "POD_NAMESPACE" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace")
    );
    assert!(env.iter().any(|e| e["name"] == "POD_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    // The webhook certificate flags point into the mounted Secret.
    let cert = parsed.webhook.webhook_cert.unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| cert.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not in a mounted volume", cert.display()));
    let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["secret"]["secretName"], one(&docs, "Secret")["metadata"]["name"]);
    assert_eq!(pod["spec"]["serviceAccountName"], one(&docs, "ServiceAccount")["metadata"]["name"]);

    // Mesh ConfigMap: what discovery reads.
    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "istio");
    let mesh: Value = serde_yaml_ng::from_str(cm["data"]["mesh"].as_str().unwrap()).unwrap();
    let mesh = MeshConfig::from_yaml_value(&mesh).unwrap();
    assert_eq!(mesh.root_namespace, "istio-system");
    assert_eq!(mesh.trust_domain, "cluster.local");
}

#[test]
fn rbac_is_least_privilege_and_covers_every_watched_kind() {
    let docs = template(&[]);
    let cluster = permissions(one(&docs, "ClusterRole"));
    let ns = permissions(one(&docs, "Role"));
    let read: BTreeSet<String> = ["get", "list", "watch"].iter().map(|s| s.to_string()).collect();
    let verbs = |p: &BTreeMap<(String, String), BTreeSet<String>>, g: &str, r: &str| {
        p.get(&(g.to_string(), r.to_string())).cloned().unwrap_or_default()
    };
    let mut watched: Vec<(String, String)> = vec![
        ("".into(), "namespaces".into()),
        ("".into(), "services".into()),
        ("".into(), "pods".into()),
        ("".into(), "secrets".into()),
        ("".into(), "configmaps".into()),
        ("discovery.k8s.io".into(), "endpointslices".into()),
    ];
    watched.extend(ISTIO_KINDS.iter().map(|k| (k.group.to_string(), k.plural.to_string())));
    for (g, r) in &watched {
        assert!(verbs(&cluster, g, r).is_superset(&read), "{g}/{r} must be readable: {:?}", verbs(&cluster, g, r));
    }
    assert_eq!(verbs(&cluster, "authentication.k8s.io", "tokenreviews"), ["create".to_string()].into());
    assert_eq!(verbs(&cluster, "authorization.k8s.io", "subjectaccessreviews"), ["create".to_string()].into());
    assert!(verbs(&cluster, "", "configmaps").is_superset(&["create".to_string(), "update".to_string()].into()));
    assert_eq!(verbs(&cluster, "", "secrets"), read, "secrets are only read cluster-wide");
    assert!(
        verbs(&ns, "coordination.k8s.io", "leases")
            .is_superset(&["get".to_string(), "create".to_string(), "update".to_string()].into())
    );
    // Nothing more than that.
    let allowed_resources: BTreeSet<(String, String)> = watched
        .iter()
        .cloned()
        .chain([
            ("authentication.k8s.io".to_string(), "tokenreviews".to_string()),
            ("authorization.k8s.io".to_string(), "subjectaccessreviews".to_string()),
        ])
        .collect();
    for ((g, r), v) in &cluster {
        assert!(allowed_resources.contains(&(g.clone(), r.clone())), "unexpected cluster permission on {g}/{r}");
        assert!(
            !v.contains("*")
                && !v.contains("delete")
                && !v.contains("deletecollection")
                && !v.contains("escalate")
                && !v.contains("bind"),
            "{g}/{r}: {v:?}"
        );
        assert!(g != "*" && r != "*");
    }
    for ((g, r), v) in &ns {
        assert!(
            matches!((g.as_str(), r.as_str()), ("coordination.k8s.io", "leases") | ("", "secrets")),
            "unexpected namespaced permission on {g}/{r}"
        );
        assert!(!v.contains("*") && !v.contains("delete"), "{g}/{r}: {v:?}");
    }
    // The bindings give these roles to the chart's service account.
    let sa = one(&docs, "ServiceAccount")["metadata"]["name"].clone();
    for (binding, role) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = one(&docs, binding);
        assert_eq!(b["roleRef"]["name"], one(&docs, role)["metadata"]["name"]);
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], "istio-system");
    }
}

#[tokio::test]
async fn webhooks_point_at_the_service_with_a_certificate_the_api_server_accepts() {
    let docs = template(&[]);
    let mutating = one(&docs, "MutatingWebhookConfiguration");
    let validating = one(&docs, "ValidatingWebhookConfiguration");
    let mut bundles = BTreeSet::new();
    for (config, path) in [(mutating, "/inject"), (validating, "/validate")] {
        for w in config["webhooks"].as_array().unwrap() {
            let svc = &w["clientConfig"]["service"];
            assert_eq!(
                (svc["name"].as_str(), svc["namespace"].as_str(), svc["path"].as_str(), svc["port"].as_u64()),
                (Some("istiod"), Some("istio-system"), Some(path), Some(443))
            );
            assert_eq!(strings(&w["admissionReviewVersions"]), ["v1"]);
            assert_eq!(w["sideEffects"], "None");
            bundles.insert(w["clientConfig"]["caBundle"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(bundles.len(), 1, "one CA for every webhook");
    let injector = &mutating["webhooks"][0];
    assert_eq!(
        injector["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "istio-injection", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(strings(&injector["rules"][0]["resources"]), ["pods"]);
    let rule = &validating["webhooks"][0]["rules"][0];
    assert_eq!(strings(&rule["apiGroups"]), ["networking.istio.io", "security.istio.io"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);

    // Serve the chart's certificate and call it as the API server would: trusting only the
    // caBundle, for the Service's name.
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret = one(&docs, "Secret");
    let ca_pem = String::from_utf8(b64.decode(bundles.first().unwrap()).unwrap()).unwrap();
    assert_eq!(secret["data"]["ca.crt"].as_str(), bundles.first().map(String::as_str));
    let dir = tempfile::tempdir().unwrap();
    for key in ["tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(key), b64.decode(secret["data"][key].as_str().unwrap()).unwrap()).unwrap();
    }
    let config = tls::from_files(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    tokio::spawn(serve(
        listener,
        config,
        Arc::new(WebhookState { injector: InjectorConfig::default(), namespaces: Arc::new(namespaces) }),
    ));
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "chart", "kind": {"group": "networking.istio.io", "version": "v1", "kind": "Gateway"},
        "namespace": "edge", "operation": "CREATE",
        "object": {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "edge"},
                   "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}}});
    let (status, answer) = sailplane_tests::webhook::post(
        addr,
        "/validate",
        review.to_string().as_bytes(),
        sailplane_tests::webhook::Trust::Root { pem: &ca_pem, server_name: "istiod.istio-system.svc" },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[test]
fn values_switch_features() {
    let docs = template(&["--set", "webhooks.validation.enabled=false", "--set", "webhooks.injection.enabled=false"]);
    assert!(of_kind(&docs, "ValidatingWebhookConfiguration").is_empty());
    assert!(of_kind(&docs, "MutatingWebhookConfiguration").is_empty());
    let docs = template(&[
        "--set",
        "service.name=sailplane",
        "--set",
        "proxy.image=example/proxy:1",
        "--set",
        "meshConfig.trustDomain=example.org",
        "--set",
        "meshConfig.defaultConfig.proxyMetadata.SECRET_TTL=12h",
    ]);
    assert_eq!(one(&docs, "Service")["metadata"]["name"], "sailplane");
    let args = strings(&one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&"--proxy-image=example/proxy:1".to_string()), "{args:?}");
    assert!(args.contains(&"--injection-discovery-host=sailplane.istio-system.svc".to_string()), "{args:?}");
    let mesh: Value = serde_yaml_ng::from_str(one(&docs, "ConfigMap")["data"]["mesh"].as_str().unwrap()).unwrap();
    let mesh = MeshConfig::from_yaml_value(&mesh).unwrap();
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(mesh.proxy_metadata.get("SECRET_TTL").map(String::as_str), Some("12h"));
    for w in one(&docs, "MutatingWebhookConfiguration")["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["service"]["name"], "sailplane");
    }
}
