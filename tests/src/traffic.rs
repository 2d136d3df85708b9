//! Helpers for the traffic-management cases (`tests/e2e/traffic_*.rs`): backends published as
//! Kubernetes Services, a control plane with one Envoy in one call, requests that carry headers and
//! report everything a user sees (status, headers, body, which backend, how long), and waiting for
//! a virtual host in Envoy's own config dump before asserting on traffic.
//!
//! Failures read as a report: the request sent, what was expected, what came back, and where it
//! helps, the Envoy configuration excerpt that produced it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize as _;
use serde_json::Value;

use crate::fixtures::{fqdn, mk_service_with_endpoints};
use crate::wait::{CONVERGE, eventually};
use crate::{ConfigDir, ControlPlane, EchoServer, Envoy, EnvoyOptions, XdsApi, ports};

/// An echo backend published as Service `<name>` in namespace `default` (one HTTP port on a free
/// number, one endpoint at the echo server).
pub struct Backend {
    /// The process answering for the service.
    pub echo: EchoServer,
    /// The Service's port (the Envoy listener clients call, without interception).
    pub port: u16,
}

impl Backend {
    /// Starts echo server `name` and writes `<name>.service.yaml` (Service + EndpointSlice) into `dir`.
    pub async fn start(dir: &ConfigDir, name: &str) -> anyhow::Result<Backend> {
        let echo = EchoServer::start(name).await?;
        let port = ports::free_port()?;
        dir.write(
            &format!("{name}.service.yaml"),
            &mk_service_with_endpoints(name, "default", port, &["127.0.0.1"], echo.port()),
        )?;
        Ok(Backend { echo, port })
    }

    /// The Service's FQDN.
    pub fn host(&self) -> String {
        fqdn(self.echo.name(), "default")
    }

    /// The name of the virtual host Envoy holds for this Service (`<fqdn>:<port>`).
    pub fn vhost(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    /// A request to this Service through the sidecar, by its short name.
    pub fn call(&self, path: &str) -> Call {
        Call::new(self.port, self.echo.name(), path)
    }
}

/// A control plane serving one directory and one Envoy connected to it.
pub struct Mesh {
    /// The Envoy under test (declared first: dropped, and its log printed, before the control plane).
    pub envoy: Envoy,
    /// The control plane.
    pub cp: ControlPlane,
}

impl Mesh {
    /// A control plane on `dir` and a sidecar `client` in namespace `default` (interception NONE:
    /// each Service port is a listener on 127.0.0.1), once Envoy is live. Fails if the control plane
    /// reports an error diagnostic: a test's YAML must load as written.
    pub async fn sidecar(dir: &ConfigDir) -> anyhow::Result<Mesh> {
        Self::start(dir, &[], &EnvoyOptions::sidecar("client", XdsApi::Sotw)).await
    }

    /// A control plane on `dir` with extra `discovery` flags, and an Envoy with `opts`.
    pub async fn start(dir: &ConfigDir, cp_flags: &[&str], opts: &EnvoyOptions) -> anyhow::Result<Mesh> {
        let cp = ControlPlane::start_with(dir.path(), cp_flags).await?;
        let errors = error_diagnostics(&cp.diagnostics().await?);
        if !errors.is_empty() {
            bail!(
                "the test's configuration should load without errors, the control plane reports:\n{}",
                errors.join("\n")
            );
        }
        let envoy = Envoy::start(&cp, opts).await?;
        envoy.wait_live().await?;
        Ok(Mesh { envoy, cp })
    }

    /// Error diagnostics the control plane reports now (after a directory edit).
    pub async fn errors(&self) -> anyhow::Result<Vec<String>> {
        Ok(error_diagnostics(&self.cp.diagnostics().await?))
    }
}

/// Every diagnostic of severity error in a `/debug/diagnostics` answer, as one line of JSON each.
fn error_diagnostics(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if m.contains_key("message") => {
                let severity = m.get("severity").and_then(Value::as_str).unwrap_or("error");
                if severity.eq_ignore_ascii_case("error") {
                    out.push(v.to_string());
                }
            }
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// One `GET` through an Envoy listener on 127.0.0.1, as an application calls a service through its
/// sidecar without interception: the `Host` header picks the virtual host.
#[derive(Debug, Clone)]
pub struct Call {
    /// Listener port on 127.0.0.1.
    pub port: u16,
    /// `Host` header.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl Call {
    /// `GET http://127.0.0.1:<port><path>` with `Host: <host>`.
    pub fn new(port: u16, host: &str, path: &str) -> Call {
        Call { port, host: host.to_string(), path: path.to_string(), headers: Vec::new() }
    }

    /// The same request with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `GET 127.0.0.1:<port><path> (Host: h, name: value)`, for reports.
    pub fn describe(&self) -> String {
        let mut s = format!("GET 127.0.0.1:{}{} (Host: {}", self.port, self.path, self.host);
        for (k, v) in &self.headers {
            let _ = write!(s, ", {k}: {v}");
        }
        s.push(')');
        s
    }
}

/// What came back for a [`Call`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers, names lowercase (repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
    /// Time from sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    /// The JSON an [`EchoServer`] answered with, if the body is one.
    pub fn echo(&self) -> Option<Value> {
        serde_json::from_str::<Value>(&self.body).ok().filter(|v| v.get("name").is_some())
    }

    /// The name of the echo backend that answered, if one did.
    pub fn backend(&self) -> Option<String> {
        self.echo()?.get("name")?.as_str().map(str::to_string)
    }

    /// A field of the echo backend's view of the request (`path`, `host`, ...).
    pub fn seen(&self, field: &str) -> Option<String> {
        self.echo()?.get(field)?.as_str().map(str::to_string)
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// `status 200 from backend "x" after 3 ms, body: ...` (body shortened), for reports.
    pub fn summary(&self) -> String {
        let who = match self.backend() {
            Some(b) => format!("from backend {b:?}"),
            None => "from Envoy (no echo backend answered)".to_string(),
        };
        let mut body: String = self.body.chars().take(400).collect();
        if body.len() < self.body.len() {
            body.push_str("...");
        }
        let mut s = format!("status {} {who} after {} ms", self.status, self.elapsed.as_millis());
        if let Some(loc) = self.header("location") {
            let _ = write!(s, ", location: {loc}");
        }
        let _ = write!(s, ", body: {body:?}");
        s
    }
}

/// The failure report of one request: what was sent, what was expected, what came back.
pub fn report(call: &Call, expected: &str, got: &Reply) -> String {
    format!("\n  request:  {}\n  expected: {expected}\n  got:      {}", call.describe(), got.summary())
}

/// An HTTP/1.1 client for [`Call`]s that never follows redirects (a redirect is a result to check).
pub struct Client {
    inner: reqwest::Client,
}

impl Client {
    /// A new connection per request: a connection reused across configuration changes could be
    /// served by a listener Envoy is draining.
    pub fn fresh() -> anyhow::Result<Client> {
        Self::build(0)
    }

    /// Keeps connections open between requests (for bulk runs against a fixed configuration).
    pub fn keep_alive() -> anyhow::Result<Client> {
        Self::build(8)
    }

    fn build(idle: usize) -> anyhow::Result<Client> {
        let inner = reqwest::Client::builder()
            .pool_max_idle_per_host(idle)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .context("building HTTP client")?;
        Ok(Client { inner })
    }

    /// Sends `call` and reads the whole response.
    pub async fn send(&self, call: &Call) -> anyhow::Result<Reply> {
        let url = format!("http://127.0.0.1:{}{}", call.port, call.path);
        let mut req = self.inner.get(&url).header(reqwest::header::HOST, &call.host);
        for (k, v) in &call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let start = Instant::now();
        let resp = req.send().await.with_context(|| call.describe())?;
        let status = resp.status().as_u16();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in resp.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(k.as_str().to_string())
                .and_modify(|old| {
                    old.push_str(", ");
                    old.push_str(&v);
                })
                .or_insert(v);
        }
        let body = resp.text().await.with_context(|| format!("reading the body of {}", call.describe()))?;
        Ok(Reply { status, headers, body, elapsed: start.elapsed() })
    }
}

/// Sends `call` on a fresh connection.
pub async fn send(call: &Call) -> anyhow::Result<Reply> {
    Client::fresh()?.send(call).await
}

/// Sends `call` and requires status 200 from backend `want`.
pub async fn expect_backend(call: &Call, want: &str) -> anyhow::Result<Reply> {
    let r = send(call).await?;
    if r.status != 200 || r.backend().as_deref() != Some(want) {
        bail!("{}", report(call, &format!("status 200 from backend {want:?}"), &r));
    }
    Ok(r)
}

/// Sends `call` and requires status `want` (from anyone).
pub async fn expect_status(call: &Call, want: u16) -> anyhow::Result<Reply> {
    let r = send(call).await?;
    if r.status != want {
        bail!("{}", report(call, &format!("status {want}"), &r));
    }
    Ok(r)
}

/// Every object at any depth of `v` that is a virtual host named `name` (has `domains`).
fn find_virtual_hosts<'a>(v: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(name) && m.contains_key("domains") {
                out.push(v);
            }
            m.values().for_each(|x| find_virtual_hosts(x, name, out));
        }
        Value::Array(items) => items.iter().for_each(|x| find_virtual_hosts(x, name, out)),
        _ => {}
    }
}

/// Names of every virtual host in an Envoy config dump, for reports.
fn virtual_host_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("domains")
                && let Some(n) = m.get("name").and_then(Value::as_str)
            {
                out.push(n.to_string());
            }
            m.values().for_each(|x| virtual_host_names(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| virtual_host_names(x, out)),
        _ => {}
    }
}

/// Waits until Envoy's own `/config_dump` holds virtual host `name` for which `accept` is true
/// (typically: the routes a VirtualService adds are there), and returns it. Asserting on traffic
/// only after this keeps a slow push from reading as wrong routing, and on timeout the report shows
/// the virtual host Envoy holds instead.
pub async fn wait_virtual_host(
    envoy: &Envoy,
    name: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(&format!("Envoy virtual host {name} {what}"), CONVERGE, || {
        let accept = &accept;
        async move {
            let dump = envoy.config_dump().await?;
            let mut found = Vec::new();
            find_virtual_hosts(&dump, name, &mut found);
            if let Some(vh) = found.iter().find(|vh| accept(vh)) {
                return Ok((*vh).clone());
            }
            match found.first() {
                Some(vh) => bail!("Envoy holds it as:\n{}", serde_json::to_string_pretty(vh).unwrap_or_default()),
                None => {
                    let mut names = Vec::new();
                    virtual_host_names(&dump, &mut names);
                    bail!("no such virtual host; Envoy has {names:?}")
                }
            }
        }
    })
    .await
}

/// Waits until virtual host `name` contains `needle` in its JSON (a route name, a field such as
/// `"weighted_clusters"`).
pub async fn wait_virtual_host_with(envoy: &Envoy, name: &str, needle: &str) -> anyhow::Result<Value> {
    wait_virtual_host(envoy, name, &format!("to contain {needle}"), |vh| vh.to_string().contains(needle)).await
}

/// Waits until Envoy has an active listener on port `port` of any address (gateways bind 0.0.0.0).
pub async fn wait_listener_port(envoy: &Envoy, port: u16) -> anyhow::Result<String> {
    let suffix = format!(":{port}");
    eventually(&format!("an Envoy listener on port {port}"), CONVERGE, || {
        let suffix = suffix.clone();
        async move {
            let listeners = envoy.listeners().await?;
            match listeners.iter().find(|(_, a)| a.ends_with(&suffix)) {
                Some((_, addr)) => Ok(addr.clone()),
                None => bail!("listeners: {listeners:?}"),
            }
        }
    })
    .await
}

/// A counter from Envoy's `/stats`, 0 when Envoy has not created it yet.
pub async fn counter(envoy: &Envoy, name: &str) -> anyhow::Result<u64> {
    Ok(envoy.stat(name).await?.unwrap_or(0))
}

/// Copies the YAML files of `examples/<name>` into a new [`ConfigDir`], moving port numbers: every
/// `port`, `number`, `targetPort` or `containerPort` field equal to `from` becomes `to`, for each
/// `(from, to)` in `moves` (an example uses the ports its README names; a test needs free ones).
/// Fails when a `from` port appears nowhere, so the example and its test cannot drift apart.
pub fn load_example(name: &str, moves: &[(u16, u16)]) -> anyhow::Result<ConfigDir> {
    fn walk(v: &mut Value, moves: &[(u16, u16)], used: &mut [bool]) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    let is_port = matches!(k.as_str(), "port" | "number" | "targetPort" | "containerPort");
                    if is_port
                        && let Some(n) = x.as_u64()
                        && let Some(i) = moves.iter().position(|(from, _)| u64::from(*from) == n)
                    {
                        *x = Value::from(moves[i].1);
                        used[i] = true;
                    } else {
                        walk(x, moves, used);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| walk(x, moves, used)),
            _ => {}
        }
    }
    let src = crate::paths::workspace_root().join("examples").join(name);
    let out = ConfigDir::new()?;
    let mut used = vec![false; moves.len()];
    let mut files = 0;
    for entry in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path)?;
        let mut docs = String::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
            if v.is_null() {
                continue;
            }
            walk(&mut v, moves, &mut used);
            docs.push_str("---\n");
            docs.push_str(&serde_yaml_ng::to_string(&v)?);
        }
        let file_name = path.file_name().and_then(|n| n.to_str()).context("example file name")?;
        out.write(file_name, &docs)?;
    }
    if files == 0 {
        bail!("no YAML files in {}", src.display());
    }
    let unused: Vec<u16> = moves.iter().zip(&used).filter(|(_, u)| !**u).map(|((from, _), _)| *from).collect();
    if !unused.is_empty() {
        bail!("examples/{name} uses none of the ports {unused:?} its test moves (did the example change?)");
    }
    Ok(out)
}
