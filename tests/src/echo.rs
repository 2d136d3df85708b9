//! HTTP backends that answer with their own name, so a test can tell which endpoint Envoy chose.
//!
//! For resilience cases a backend can also misbehave on purpose: fail its next N requests with a
//! chosen status ([`EchoServer::fail_next`]) or answer late ([`EchoServer::set_delay`]); and it
//! remembers what it received ([`EchoServer::requests`]), so a mirror's copy can be inspected.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::ports;

/// How many received requests a backend keeps for [`EchoServer::requests`] (tests send fewer).
const KEEP_REQUESTS: usize = 2000;

struct Shared {
    name: String,
    hits: AtomicU64,
    /// Requests still to fail, and with which status.
    fail_remaining: AtomicU64,
    fail_status: AtomicU32,
    /// Milliseconds to wait before answering.
    delay_ms: AtomicU64,
    /// The JSON answers given so far (oldest first, capped at [`KEEP_REQUESTS`]).
    seen: Mutex<Vec<Value>>,
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
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding echo {name} on {addr}"))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            fail_remaining: AtomicU64::new(0),
            fail_status: AtomicU32::new(503),
            delay_ms: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
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

    /// How many requests it has received (failed ones included).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }

    /// Makes the next `n` requests fail with `status` (their body still names the backend, with
    /// `"failed": true`), then answers normally again.
    pub fn fail_next(&self, n: u64, status: u16) {
        self.shared.fail_status.store(u32::from(status), Ordering::SeqCst);
        self.shared.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// Waits `delay` before answering each request from now on.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// What it received so far, oldest first: the JSON it answered each request with (`method`,
    /// `path`, `host`, `headers`, `status`).
    pub fn requests(&self) -> Vec<Value> {
        self.shared.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listening socket.
        self.task.abort();
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    shared.hits.fetch_add(1, Ordering::Relaxed);
    // Decrement only while positive, so concurrent requests fail exactly `n` times in total.
    let failing = shared.fail_remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if failing {
        u16::try_from(shared.fail_status.load(Ordering::SeqCst))
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = json!({
        "name": shared.name,
        "method": method.as_str(),
        "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": headers.get("host"),
        "headers": headers,
        "status": status.as_u16(),
        "failed": failing,
    });
    {
        let mut seen = shared.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < KEEP_REQUESTS {
            seen.push(body.clone());
        }
    }
    (status, Json(body))
}
