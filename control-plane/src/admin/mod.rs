//! The monitoring port: readiness, debug endpoints and Prometheus metrics.
//!
//! - `/ready`: 200 once every source synced and the first world was built, else 503.
//! - `/debug/syncz`: every connected proxy, per type SYNCED / STALE / NOT SENT / ERROR.
//! - `/debug/config_dump?proxyID=ID`: what that proxy was sent, in Envoy's config_dump JSON shape.
//! - `/debug/diagnostics`: every problem found in the config, with file, object and field.
//! - `/metrics`: Prometheus text.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::push::Pusher;
use crate::store::Store;
use crate::xds::status::StatusRegistry;

/// What the monitoring endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The config store.
    pub store: Arc<Store>,
    /// The push stage.
    pub pusher: Arc<Pusher>,
    /// Per-proxy xDS status.
    pub status: Arc<StatusRegistry>,
    /// Metrics registry.
    pub registry: Arc<Registry>,
}

/// The monitoring router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the monitoring endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.pusher.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for the initial config sync\n").into_response()
    }
}

async fn syncz(State(s): State<AdminState>) -> Response {
    json_response(StatusCode::OK, &s.status.syncz())
}

#[derive(Debug, Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
}

async fn config_dump(State(s): State<AdminState>, Query(q): Query<DumpQuery>) -> Response {
    let Some(id) = q.proxy_id else {
        return (StatusCode::BAD_REQUEST, "missing query parameter proxyID\n").into_response();
    };
    let Some(sent) = s.status.sent(&id) else {
        return (StatusCode::NOT_FOUND, format!("proxy {id:?} is not connected\n")).into_response();
    };
    let items = sent.iter().map(|(t, r)| sailplane_proto::DumpEntry {
        section: &t.info().dump,
        name: r.name.as_str(),
        version: r.version.as_str(),
        any: &r.any[..],
    });
    match sailplane_proto::config_dump(items) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering config dump: {e}\n")).into_response(),
    }
}

async fn diagnostics(State(s): State<AdminState>) -> Response {
    let mut all = s.store.view().diagnostics;
    all.extend(s.pusher.state().diagnostics.iter().cloned());
    let out: Vec<serde_json::Value> = all
        .iter()
        .map(|d| {
            serde_json::json!({
                "severity": d.severity,
                "source": d.source,
                "object": d.object,
                "field": d.field,
                "message": d.message,
                "text": d.to_string(),
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(out))
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
