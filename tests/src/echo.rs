//! HTTP backends that answer with their own name, so a test can tell which endpoint Envoy chose.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::ports;

struct Shared {
    name: String,
    hits: AtomicU64,
}

/// A running echo backend; stops accepting when dropped.
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts `name` on 127.0.0.1 and a free port.
    pub async fn start(name: &str) -> anyhow::Result<EchoServer> {
        Self::start_on(name, Ipv4Addr::LOCALHOST, ports::free_port()?).await
    }

    /// Starts `name` on `ip:port` (any 127.0.0.0/8 address works on Linux loopback, so two backends
    /// can share a port number, as two pods would).
    ///
    /// Every request gets `200` with JSON `{"name", "method", "path", "host", "headers"}`.
    pub async fn start_on(name: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<EchoServer> {
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding echo {name} on {addr}"))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            hits: AtomicU64::new(0),
        });
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(EchoServer { addr, shared, task })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ip:port`, as Envoy's `/clusters` shows an endpoint.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listening socket.
        self.task.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap) -> Json<Value> {
    shared.hits.fetch_add(1, Ordering::Relaxed);
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Json(json!({
        "name": shared.name,
        "method": method.as_str(),
        "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": headers.get("host"),
        "headers": headers,
    }))
}
