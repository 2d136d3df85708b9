//! `sailplane-echo`: the application in a lab pod. It answers every HTTP request with JSON saying
//! who answered (`pod`), what was asked (`method`, `path`, `host`), the request `headers` (among
//! them `x-forwarded-client-cert`, which a sidecar's inbound proxy adds after terminating mTLS) and
//! the TCP `peer` it saw (`127.0.0.6:...` when Envoy's inbound passthrough made the connection).
//!
//! Usage: `sailplane-echo --name POD --port 8080 [--port 9090 ...] [--tls-port 8443 --cert CHAIN.pem
//! --key KEY.pem [--client-ca CA.pem]]`, listening on 0.0.0.0 so that both the pod IP and loopback
//! reach it. `--tls-port` serves HTTPS with the given certificate (an external server for egress
//! cases), requiring a client certificate from `--client-ca` when given, and reports what it saw of
//! the client certificate ([`sailplane_tests::tls_echo::TlsEchoServer`]). It runs until killed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, Uri};
use sailplane_tests::tls_echo::{CertKey, TlsEchoOptions, TlsEchoServer};
use serde_json::{Value, json};

struct Args {
    name: String,
    ports: Vec<u16>,
    tls_port: Option<u16>,
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut name = None;
    let mut ports = Vec::new();
    let (mut tls_port, mut cert, mut key, mut client_ca) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--port" => ports.push(value.parse().with_context(|| format!("--port {value:?}"))?),
            "--tls-port" => tls_port = Some(value.parse().with_context(|| format!("--tls-port {value:?}"))?),
            "--cert" => cert = Some(read(&value)?),
            "--key" => key = Some(read(&value)?),
            "--client-ca" => client_ca = Some(read(&value)?),
            other => bail!("unknown flag {other:?} (usage: sailplane-echo --name POD --port N [--port N ...])"),
        }
    }
    let name = name.context("--name is required")?;
    if ports.is_empty() && tls_port.is_none() {
        bail!("at least one --port or --tls-port is required");
    }
    if tls_port.is_some() && (cert.is_none() || key.is_none()) {
        bail!("--tls-port needs --cert and --key");
    }
    Ok(Args { name, ports, tls_port, cert, key, client_ca })
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

async fn answer(
    State(name): State<Arc<String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Json<Value> {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Json(json!({
        "pod": name.as_str(),
        "method": method.as_str(),
        "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": headers.get("host"),
        "headers": headers,
        "peer": peer.to_string(),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let name = Arc::new(args.name);
    let mut tasks = tokio::task::JoinSet::new();
    for port in args.ports {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let app = axum::Router::new().fallback(answer).with_state(Arc::clone(&name));
        tasks
            .spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    }
    // Kept alive until the process ends: dropping the server stops it.
    let _tls = match (args.tls_port, args.cert, args.key) {
        (Some(port), Some(chain_pem), Some(key_pem)) => {
            let options = TlsEchoOptions { client_ca_pem: args.client_ca, close_each: false };
            Some(
                TlsEchoServer::start_on(&name, Ipv4Addr::UNSPECIFIED, port, &CertKey { chain_pem, key_pem }, options)
                    .await?,
            )
        }
        _ => None,
    };
    // Serving ends only on an error; report the first.
    match tasks.join_next().await {
        Some(done) => done.context("echo task")?.context("serving")?,
        None => std::future::pending::<()>().await,
    }
    Ok(())
}
