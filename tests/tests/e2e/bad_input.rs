//! End-to-end: a directory with broken files still serves its good objects, and the problems are
//! listed with file and field on `/debug/diagnostics`.

use anyhow::{bail, ensure};
use sailplane_tests::fixtures::{fqdn, mk_service_with_endpoints};
use sailplane_tests::http::expect_echo;
use sailplane_tests::ports::free_port;
use sailplane_tests::wait::CONVERGE;
use sailplane_tests::{ConfigDir, ControlPlane, EchoServer, Envoy, EnvoyOptions, XdsApi, eventually};
use serde_json::Value;

/// Whether any direct field of `v` is the string `s`.
fn has_value(v: &Value, s: &str) -> bool {
    v.as_object().is_some_and(|m| m.values().any(|x| x.as_str() == Some(s)))
}

/// Every JSON object (at any depth) that carries a `message`: one diagnostic, whatever the envelope.
fn diagnostics(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if map.contains_key("message") {
                out.push(v.clone());
            } else {
                map.values().for_each(|x| diagnostics(x, out));
            }
        }
        Value::Array(items) => items.iter().for_each(|x| diagnostics(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_diagnosed_and_the_rest_is_served() -> anyhow::Result<()> {
    let echo = EchoServer::start("hello-1").await?;
    let dir = ConfigDir::new()?;
    let port = free_port()?;
    dir.write("good.yaml", &mk_service_with_endpoints("hello", "default", port, &["127.0.0.1"], echo.port()))?;
    dir.write("unparsable.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n  spec: [\n")?;
    dir.write(
        "unknown-kind.yaml",
        "apiVersion: example.com/v1\nkind: Gizmo\nmetadata:\n  name: widget\n  namespace: default\n",
    )?;
    dir.write(
        "wrong-type.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: typo\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: eighty\n",
    )?;
    let cp = ControlPlane::start(dir.path()).await?;
    let envoy = Envoy::start(&cp, &EnvoyOptions::sidecar("client", XdsApi::Sotw)).await?;
    envoy.wait_live().await?;
    envoy.wait_listener(port).await?;
    expect_echo(port, &fqdn("hello", "default"), "/", "hello-1").await?;

    let found = eventually("/debug/diagnostics to list the three bad files", CONVERGE, || async {
        let mut found = Vec::new();
        diagnostics(&cp.diagnostics().await?, &mut found);
        let texts: Vec<String> = found.iter().map(Value::to_string).collect();
        let names = |file: &str| texts.iter().filter(|t| t.contains(file)).count();
        if ["unparsable.yaml", "unknown-kind.yaml", "wrong-type.yaml"].iter().all(|f| names(f) >= 1) {
            Ok(found)
        } else {
            bail!("diagnostics: {texts:#?}")
        }
    })
    .await?;
    let about = |file: &str| found.iter().filter(|d| d.to_string().contains(file)).cloned().collect::<Vec<_>>();

    ensure!(about("good.yaml").is_empty(), "good.yaml should have no diagnostics, got {:?}", about("good.yaml"));
    let unknown = about("unknown-kind.yaml");
    ensure!(
        unknown.iter().any(|d| has_value(d, "kind") && d.to_string().contains("Gizmo")),
        "expected a diagnostic on field kind naming Gizmo for unknown-kind.yaml, got {unknown:?}"
    );
    let wrong = about("wrong-type.yaml");
    ensure!(
        wrong.iter().any(|d| has_value(d, "spec.ports[0].port") && d.to_string().contains("Service default/typo")),
        "expected a diagnostic on Service default/typo field spec.ports[0].port, got {wrong:?}"
    );
    let unparsable = about("unparsable.yaml");
    ensure!(unparsable.len() == 1, "expected one diagnostic for unparsable.yaml, got {unparsable:?}");
    Ok(())
}
