//! Admission webhooks on HTTPS port 15017 (istiod's): `/inject` adds the sidecar to pods,
//! `/validate` refuses invalid Istio objects. Both speak `admission.k8s.io/v1` AdmissionReview JSON.
//!
//! Inputs: the request body, the injection settings ([`inject::InjectorConfig`]) and the labels of
//! namespaces ([`NamespaceLabels`], from the store in `discovery --kubernetes`). Output: the
//! AdmissionReview response. Each request is answered on its own; nothing is written anywhere.

pub mod admission;
pub mod inject;
pub mod iptables;
pub mod tls;
pub mod validate;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use sailplane_translator::api::Object;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::store::Store;
use admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use inject::{Decision, InjectorConfig};

/// Largest AdmissionReview accepted (the API server's own object limit is ~3 MiB).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of the webhook server (flattened into `sailplane discovery`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// HTTPS port of the injection (`/inject`) and validation (`/validate`) webhooks, served with
    /// --kubernetes. 0 disables them.
    #[arg(long, default_value_t = 15017)]
    pub webhook_port: u16,
    /// PEM certificate chain of the webhook server (the Secret the Helm chart generates). Without it
    /// a self-signed certificate is generated, which an API server only accepts if its caBundle is
    /// set to match; use that for local tests.
    #[arg(long, value_name = "FILE", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook server.
    #[arg(long, value_name = "FILE", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// Image of the injected `istio-proxy` and `istio-init` containers (contains `sailplane`,
    /// `envoy`, `sh` and `iptables-restore`).
    #[arg(long, env = "SAILPLANE_PROXY_IMAGE", default_value = "sailplane:latest")]
    pub proxy_image: String,
    /// `imagePullPolicy` of the injected containers (the cluster's default when unset).
    #[arg(long)]
    pub proxy_image_pull_policy: Option<String>,
    /// Host name injected proxies use for xDS (port 15010) and the CA (port 15012).
    /// Default: `istiod.<--istio-namespace>.svc`, the Service the Helm chart creates.
    #[arg(long)]
    pub injection_discovery_host: Option<String>,
}

/// Webhook server errors.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Accepting connections failed.
    #[error("webhook accept: {0}")]
    Accept(#[source] std::io::Error),
    /// The port could not be bound.
    #[error("binding webhook port {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Labels of namespaces, for the injection decision.
pub trait NamespaceLabels: Send + Sync {
    /// The labels of `namespace`, or `None` when it is not known.
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

impl NamespaceLabels for Store {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.view().objects.iter().find_map(|o| match &**o {
            Object::Namespace(ns) if ns.metadata.name.as_deref() == Some(namespace) => {
                Some(ns.metadata.labels.clone().unwrap_or_default())
            }
            _ => None,
        })
    }
}

/// A fixed table of namespace labels.
impl NamespaceLabels for BTreeMap<String, BTreeMap<String, String>> {
    fn labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.get(namespace).cloned()
    }
}

/// What the webhooks need.
pub struct WebhookState {
    /// Injection settings.
    pub injector: InjectorConfig,
    /// Namespace labels.
    pub namespaces: Arc<dyn NamespaceLabels>,
}

impl InjectorConfig {
    /// Injection settings from the flags, the system namespace and the mesh config.
    pub fn from_args(
        args: &WebhookArgs,
        istio_namespace: &str,
        mesh: &sailplane_translator::model::MeshConfig,
    ) -> Self {
        Self {
            image: args.proxy_image.clone(),
            image_pull_policy: args.proxy_image_pull_policy.clone(),
            discovery_host: args
                .injection_discovery_host
                .clone()
                .unwrap_or_else(|| format!("istiod.{istio_namespace}.svc")),
            trust_domain: mesh.trust_domain.clone(),
            proxy_metadata: mesh.proxy_metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Self::default()
        }
    }
}

/// A bound webhook server, ready to run.
pub struct WebhookServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<WebhookState>,
}

impl WebhookServer {
    /// Binds `listen:--webhook-port` with the flags' certificate (or a generated self-signed one
    /// for `istiod.<istio_namespace>.svc`, localhost and 127.0.0.1). `None` when the port is 0.
    pub async fn bind(
        args: &WebhookArgs,
        listen: std::net::IpAddr,
        istio_namespace: &str,
        state: WebhookState,
    ) -> Result<Option<Self>, WebhookError> {
        if args.webhook_port == 0 {
            return Ok(None);
        }
        let tls = match (&args.webhook_cert, &args.webhook_key) {
            (Some(cert), Some(key)) => tls::from_files(cert, key)?,
            _ => {
                warn!("no --webhook-cert/--webhook-key: serving the webhooks with a generated self-signed certificate");
                let names =
                    vec![format!("istiod.{istio_namespace}.svc"), "localhost".to_string(), "127.0.0.1".to_string()];
                tls::self_signed(&names)?.0
            }
        };
        let addr = std::net::SocketAddr::new(listen, args.webhook_port);
        let listener = TcpListener::bind(addr).await.map_err(|source| WebhookError::Bind { addr, source })?;
        Ok(Some(Self { listener, tls, state: Arc::new(state) }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until dropped.
    pub async fn run(self) -> Result<(), WebhookError> {
        serve(self.listener, self.tls, self.state).await
    }
}

/// Answers one injection request.
pub fn inject_review(state: &WebhookState, req: &AdmissionRequest) -> AdmissionResponse {
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() || req.operation != "CREATE" {
        return AdmissionResponse::allow(&req.uid);
    }
    let Some(object) = &req.object else {
        return AdmissionResponse::deny(&req.uid, "sidecar injection: request has no object");
    };
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(p) => p,
        Err(e) => return AdmissionResponse::deny(&req.uid, format!("sidecar injection: not a pod: {e}")),
    };
    let namespace =
        req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_else(|| "default".to_string());
    let pod_name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default();
    match inject::decide(&pod, &namespace, state.namespaces.labels(&namespace).as_ref()) {
        Decision::Skip(reason) => {
            debug!(namespace = %namespace, pod = %pod_name, reason = %reason, "not injected");
            AdmissionResponse::allow(&req.uid)
        }
        Decision::Inject => match inject::patch(&state.injector, object) {
            Ok(ops) => {
                info!(namespace = %namespace, pod = %pod_name, "sidecar injected");
                AdmissionResponse::patched(&req.uid, &ops)
            }
            Err(e) => {
                warn!(namespace = %namespace, pod = %pod_name, error = %e, "sidecar injection refused");
                AdmissionResponse::deny(&req.uid, format!("sidecar injection: {e}"))
            }
        },
    }
}

/// Answers one HTTP request: `(status, body)`. Pure, for tests and for [`serve`].
pub fn handle(state: &WebhookState, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
    let route = match (method, path) {
        (&Method::GET, "/ready") => return (StatusCode::OK, Value::String("ok".into())),
        (&Method::POST, "/inject") => inject_review as fn(&WebhookState, &AdmissionRequest) -> AdmissionResponse,
        (&Method::POST, "/validate") => |_: &WebhookState, req: &AdmissionRequest| validate::review(req),
        (_, "/inject" | "/validate") => return (StatusCode::METHOD_NOT_ALLOWED, error_body("use POST")),
        _ => return (StatusCode::NOT_FOUND, error_body("no such webhook; use /inject or /validate")),
    };
    let review: AdmissionReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, error_body(&format!("invalid AdmissionReview: {e}"))),
    };
    if review.api_version != admission::API_VERSION {
        return (
            StatusCode::BAD_REQUEST,
            error_body(&format!(
                "unsupported AdmissionReview version {:?}; use {}",
                review.api_version,
                admission::API_VERSION
            )),
        );
    }
    let Some(req) = review.request else {
        return (StatusCode::BAD_REQUEST, error_body("AdmissionReview has no request"));
    };
    let response = route(state, &req);
    match serde_json::to_value(AdmissionReview::answer(response)) {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, error_body(&e.to_string())),
    }
}

fn error_body(message: &str) -> Value {
    serde_json::json!({"error": message})
}

async fn respond(state: Arc<WebhookState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let (status, value) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            handle(&state, &parts.method, parts.uri.path(), &bytes)
        }
        Err(e) => (StatusCode::PAYLOAD_TOO_LARGE, error_body(&format!("reading request: {e}"))),
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Serves the webhooks over TLS on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<WebhookState>,
) -> Result<(), WebhookError> {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = listener.accept().await.map_err(WebhookError::Accept)?;
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "webhook tls handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "webhook tls handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| respond(Arc::clone(&state), req));
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls_stream), service).await
            {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn state() -> WebhookState {
        WebhookState { injector: InjectorConfig::default(), namespaces: Arc::new(BTreeMap::new()) }
    }

    #[test]
    fn unknown_paths_and_bad_bodies_are_http_errors() {
        let s = state();
        assert_eq!(handle(&s, &Method::POST, "/mutate", b"{}").0, StatusCode::NOT_FOUND);
        assert_eq!(handle(&s, &Method::GET, "/inject", b"").0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(handle(&s, &Method::POST, "/inject", b"nope").0, StatusCode::BAD_REQUEST);
        let v1beta1 =
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}"#;
        assert_eq!(handle(&s, &Method::POST, "/validate", v1beta1).0, StatusCode::BAD_REQUEST);
        assert_eq!(handle(&s, &Method::GET, "/ready", b"").0, StatusCode::OK);
    }

    #[test]
    fn the_store_knows_namespace_labels() {
        let store = Store::new(["t"]);
        let ns = sailplane_translator::api::parse_object(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps", "labels": {"istio-injection": "enabled"}}
        }))
        .unwrap();
        store.apply(crate::store::ConfigEvent::Upsert { origin: "o".into(), objects: vec![ns], diagnostics: vec![] });
        assert_eq!(store.labels("apps").unwrap().get("istio-injection").map(String::as_str), Some("enabled"));
        assert!(store.labels("other").is_none());
    }
}
