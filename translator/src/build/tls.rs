//! TLS of clusters and listeners, and the SDS secret names they reference.
//!
//! Two halves:
//! - **Upstream TLS** (DestinationRule `tls`, auto-mTLS): [`apply_upstream_tls`] is the extension
//!   point of the identity work; it is called for every outbound cluster (default and subset) with
//!   the resolved `tls` settings and the Istio SNI of the cluster, and currently leaves the cluster
//!   plaintext.
//! - **Gateway server TLS** (Gateway `servers[].tls`): [`gateway_tls_context`] builds the
//!   `DownstreamTlsContext` istiod does (`BuildListenerTLSContext`), naming its secrets as istiod
//!   does: `credentialName` -> `kubernetes://<name>` (and `-cacert`) over ADS; certificate files ->
//!   `file-cert:<cert>~<key>` / `file-root:<ca>` and ISTIO_MUTUAL -> `default` / `ROOTCA` from the
//!   node agent's SDS server (cluster `sds-grpc`). The secrets themselves are served elsewhere.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService, TransportSocket,
    api_config_source::ApiType, config_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, TlsParameters,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    tls_parameters::TlsProtocol as EnvoyTlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;

use super::cluster::ClusterOut;
use super::{Ctx, any};
use crate::api::istio::{ClientTlsSettings, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::model::{Service, ServicePort};

/// The workload certificate and key, served by the node agent.
pub const SDS_DEFAULT: &str = "default";
/// The mesh trust bundle, served by the node agent.
pub const SDS_ROOT: &str = "ROOTCA";
/// The node agent's SDS cluster (defined in the proxy's bootstrap).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Prefix of secrets read from Kubernetes Secrets by the control plane.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";
/// Suffix of the CA part of a credential.
pub const CACERT_SUFFIX: &str = "-cacert";
/// Transport socket name of TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// Upstream TLS of an outbound cluster: DestinationRule `tls` (DISABLE, SIMPLE, MUTUAL,
/// ISTIO_MUTUAL) or, without one, auto-mTLS (`transport_socket_matches` on the endpoint's
/// `tlsMode`). `sni` is the cluster's Istio SNI (`outbound_.<port>_.<subset>_.<host>`).
///
/// Extension point for the identity work: clusters stay plaintext until it lands. Called once per
/// outbound cluster (not for AUTO_PASSTHROUGH SNI-DNAT clusters, which forward the client's TLS).
pub fn apply_upstream_tls(
    _ctx: &Ctx<'_>,
    _cluster: &mut ClusterOut,
    _service: &Service,
    _port: &ServicePort,
    _tls: Option<&ClientTlsSettings>,
    _sni: &str,
) {
}

/// SDS config of secrets the node agent serves (over its Unix socket, cluster `sds-grpc`).
fn agent_sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: SDS_CLUSTER.to_string(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// SDS config of a `credentialName` secret, served by the control plane over ADS.
fn credential_sds(name: &str) -> SdsSecretConfig {
    let name = if name.contains("://") { name.to_string() } else { format!("{CREDENTIAL_PREFIX}{name}") };
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// Exact SAN matchers.
#[allow(deprecated)]
fn san_matchers(sans: &[String]) -> Vec<StringMatcher> {
    sans.iter()
        .map(|s| StringMatcher {
            match_pattern: Some(MatchPattern::Exact(s.clone())),
            ignore_case: false,
        })
        .collect()
}

/// The client-certificate checks of a server (SANs, SPKI and certificate hashes).
#[allow(deprecated)]
fn default_validation(tls: &ServerTlsSettings) -> CertificateValidationContext {
    CertificateValidationContext {
        match_subject_alt_names: san_matchers(&tls.subject_alt_names),
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        ..Default::default()
    }
}

fn tls_protocol(p: Option<TlsProtocol>) -> i32 {
    (match p {
        None | Some(TlsProtocol::TlsAuto) => EnvoyTlsProtocol::TlsAuto,
        Some(TlsProtocol::Tlsv10) => EnvoyTlsProtocol::TlSv10,
        Some(TlsProtocol::Tlsv11) => EnvoyTlsProtocol::TlSv11,
        Some(TlsProtocol::Tlsv12) => EnvoyTlsProtocol::TlSv12,
        Some(TlsProtocol::Tlsv13) => EnvoyTlsProtocol::TlSv13,
    }) as i32
}

/// ALPN of a gateway server terminating TLS: HTTP servers offer `h2` and `http/1.1`; TCP servers
/// none (ISTIO_MUTUAL TCP servers also `istio-peer-exchange`, for Istio clients' metadata exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// An HTTPS server (HTTP connection manager behind TLS).
    Http,
    /// A TLS server terminating TLS in front of TCP routes.
    Tcp,
}

/// The `DownstreamTlsContext` of a Gateway server terminating TLS (istiod's
/// `BuildListenerTLSContext`). `None` for passthrough servers.
#[allow(deprecated)]
pub fn gateway_tls_context(tls: &ServerTlsSettings, kind: ServerKind) -> Option<DownstreamTlsContext> {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    if matches!(mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough) {
        return None;
    }
    let alpn: &[&str] = match (kind, mode) {
        (ServerKind::Http, _) => &["h2", "http/1.1"],
        (ServerKind::Tcp, ServerTlsMode::IstioMutual) => &["istio-peer-exchange", "h2", "http/1.1"],
        (ServerKind::Tcp, _) => &[],
    };
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let require_client = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual);
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let credentials: Vec<&String> = tls.credential_name.iter().chain(tls.credential_names.iter()).collect();
    if mode == ServerTlsMode::IstioMutual {
        common.tls_certificate_sds_secret_configs = vec![agent_sds(SDS_DEFAULT)];
        common.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(agent_sds(SDS_ROOT)),
                ..Default::default()
            },
        ));
    } else if let Some(first) = credentials.first() {
        common.tls_certificate_sds_secret_configs = credentials.iter().map(|c| credential_sds(c)).collect();
        if mutual {
            common.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(default_validation(tls)),
                    validation_context_sds_secret_config: Some(credential_sds(&format!("{first}{CACERT_SUFFIX}"))),
                    ..Default::default()
                },
            ));
        } else if !tls.subject_alt_names.is_empty() {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                ..Default::default()
            }));
        }
    } else {
        // Certificate files, served by the node agent (which watches them).
        let cert = match (tls.server_certificate.as_deref(), tls.private_key.as_deref()) {
            (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => format!("file-cert:{c}~{k}"),
            _ => SDS_DEFAULT.to_string(),
        };
        common.tls_certificate_sds_secret_configs = vec![agent_sds(&cert)];
        if require_client || mutual {
            let root = match tls.ca_certificates.as_deref() {
                Some(ca) if !ca.is_empty() => format!("file-root:{ca}"),
                _ => SDS_ROOT.to_string(),
            };
            common.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_sds(&root)),
                    ..Default::default()
                },
            ));
        }
    }
    if !tls.cipher_suites.is_empty()
        || tls.min_protocol_version.is_some_and(|p| p != TlsProtocol::TlsAuto)
        || tls.max_protocol_version.is_some_and(|p| p != TlsProtocol::TlsAuto)
    {
        common.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: tls_protocol(tls.min_protocol_version),
            tls_maximum_protocol_version: tls_protocol(tls.max_protocol_version),
            cipher_suites: tls.cipher_suites.clone(),
            ..Default::default()
        });
    }
    Some(DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: require_client }),
        ..Default::default()
    })
}

/// A `DownstreamTlsContext` as a listener filter chain's transport socket.
pub fn downstream_transport_socket(ctx: &DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn names(ctx: &DownstreamTlsContext) -> (Vec<String>, Option<String>) {
        let common = ctx.common_tls_context.as_ref().unwrap();
        let certs = common.tls_certificate_sds_secret_configs.iter().map(|s| s.name.clone()).collect();
        let root = match &common.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                c.validation_context_sds_secret_config.as_ref().map(|s| s.name.clone())
            }
            _ => None,
        };
        (certs, root)
    }

    #[rstest]
    #[case(json!({"mode": "SIMPLE", "credentialName": "web"}), &["kubernetes://web"], None, false)]
    #[case(json!({"mode": "MUTUAL", "credentialName": "web"}), &["kubernetes://web"], Some("kubernetes://web-cacert"), true)]
    #[case(json!({"mode": "ISTIO_MUTUAL"}), &["default"], Some("ROOTCA"), true)]
    #[case(json!({"mode": "SIMPLE", "serverCertificate": "/c.pem", "privateKey": "/k.pem"}), &["file-cert:/c.pem~/k.pem"], None, false)]
    #[case(json!({"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"}),
        &["file-cert:/c.pem~/k.pem"], Some("file-root:/ca.pem"), true)]
    fn secret_names(#[case] tls: serde_json::Value, #[case] certs: &[&str], #[case] root: Option<&str>, #[case] require: bool) {
        let tls: ServerTlsSettings = serde_json::from_value(tls).unwrap();
        let ctx = gateway_tls_context(&tls, ServerKind::Http).unwrap();
        let (c, r) = names(&ctx);
        assert_eq!(c, certs);
        assert_eq!(r.as_deref(), root);
        assert_eq!(ctx.require_client_certificate.unwrap().value, require);
        assert_eq!(ctx.common_tls_context.unwrap().alpn_protocols, vec!["h2", "http/1.1"]);
    }

    #[test]
    fn passthrough_has_no_context() {
        let tls: ServerTlsSettings = serde_json::from_value(json!({"mode": "PASSTHROUGH"})).unwrap();
        assert!(gateway_tls_context(&tls, ServerKind::Tcp).is_none());
    }
}
