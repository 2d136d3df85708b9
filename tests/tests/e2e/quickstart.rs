//! End-to-end: `examples/quickstart` works as its README says. The example's files are loaded as
//! they are, with only the port numbers moved to free ones (the test must not depend on 8080 being
//! free), after checking they are the ports the README names.

use anyhow::{Context, bail, ensure};
use sailplane_tests::fixtures::outbound_cluster;
use sailplane_tests::http::expect_echo;
use sailplane_tests::paths::workspace_root;
use sailplane_tests::ports::free_port;
use sailplane_tests::wait::CONVERGE;
use sailplane_tests::{ConfigDir, ControlPlane, EchoServer, Envoy, EnvoyOptions, XdsApi, eventually};
use serde::Deserialize;
use serde_json::Value;

/// Port numbers the walk-through in examples/quickstart/README.md uses.
const HELLO_PORT: u64 = 8080;
const BACKEND_PORT: u64 = 8000;
const HTTPBIN_PORT: u64 = 8081;

/// Replaces the number at `ptr` (a JSON pointer) after checking it is `expected`.
fn move_port(doc: &mut Value, ptr: &str, expected: u64, new: u16, what: &str) -> anyhow::Result<()> {
    let slot = doc.pointer_mut(ptr).with_context(|| format!("{what}: no {ptr}"))?;
    ensure!(slot.as_u64() == Some(expected), "{what}: {ptr} is {slot}, the README says {expected}");
    *slot = Value::from(new);
    Ok(())
}

/// The first object named `name` that has a `type` (an Envoy cluster), at any depth of `v`.
fn find_named<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.get("name").and_then(Value::as_str) == Some(name) && m.contains_key("type") => Some(v),
        Value::Object(m) => m.values().find_map(|x| find_named(x, name)),
        Value::Array(items) => items.iter().find_map(|x| find_named(x, name)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_example_serves_hello_and_httpbin() -> anyhow::Result<()> {
    let echo = EchoServer::start("quickstart-backend").await?;
    let hello_port = free_port()?;
    let httpbin_port = free_port()?;

    let example = workspace_root().join("examples/quickstart");
    let dir = ConfigDir::new()?;
    let mut files = 0;
    for entry in std::fs::read_dir(&example)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path)?;
        let mut out = String::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut doc = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let what = format!("{} {kind} {name}", path.display());
            match (kind.as_str(), name.as_str()) {
                ("Service", "hello") => {
                    move_port(&mut doc, "/spec/ports/0/port", HELLO_PORT, hello_port, &what)?;
                    move_port(&mut doc, "/spec/ports/0/targetPort", BACKEND_PORT, echo.port(), &what)?;
                }
                ("EndpointSlice", _) => move_port(&mut doc, "/ports/0/port", BACKEND_PORT, echo.port(), &what)?,
                ("ServiceEntry", "httpbin") => {
                    move_port(&mut doc, "/spec/ports/0/number", HTTPBIN_PORT, httpbin_port, &what)?
                }
                _ => {}
            }
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&doc)?);
        }
        let file_name = path.file_name().and_then(|n| n.to_str()).context("file name")?;
        dir.write(file_name, &out)?;
    }
    ensure!(files >= 3, "expected the quickstart's YAML files in {}, found {files}", example.display());

    let cp = ControlPlane::start(dir.path()).await?;
    let diagnostics = cp.diagnostics().await?;
    let envoy = Envoy::start(&cp, &EnvoyOptions::sidecar("client", XdsApi::Sotw)).await?;
    envoy.wait_live().await?;
    envoy.wait_listener(hello_port).await?;
    for host in ["hello.demo", "hello.demo.svc.cluster.local"] {
        expect_echo(hello_port, host, "/", "quickstart-backend").await?;
    }

    // httpbin.org is not reachable from the test machine; check that Envoy holds the DNS cluster
    // sending to port 80 (the ServiceEntry's targetPort) and the listener clients call.
    let cluster = outbound_cluster(httpbin_port, "httpbin.org");
    let found = eventually(&format!("Envoy to hold cluster {cluster}"), CONVERGE, || async {
        let dump = envoy.config_dump().await?;
        match find_named(&dump, &cluster) {
            Some(c) => Ok(c.clone()),
            None => bail!("not in Envoy's config_dump; clusters: {:?}", envoy.cluster_names().await?),
        }
    })
    .await?;
    let text = found.to_string();
    ensure!(found["type"] == "STRICT_DNS", "cluster {cluster}: expected type STRICT_DNS, got {}", found["type"]);
    ensure!(
        text.contains("\"address\":\"httpbin.org\"") && text.contains("\"port_value\":80"),
        "cluster {cluster}: expected endpoint httpbin.org:80, got {text}"
    );
    envoy.wait_listener(httpbin_port).await?;
    let mut problems = Vec::new();
    collect_messages(&diagnostics, &mut problems);
    ensure!(problems.is_empty(), "the quickstart should load without diagnostics, got {problems:?}");
    Ok(())
}

fn collect_messages(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if m.contains_key("message") => out.push(v.to_string()),
        Value::Object(m) => m.values().for_each(|x| collect_messages(x, out)),
        Value::Array(items) => items.iter().for_each(|x| collect_messages(x, out)),
        _ => {}
    }
}
