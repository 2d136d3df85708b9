//! TLS of clusters and listeners, and the SDS secret names they reference.
//!
//! - **Upstream TLS** ([`apply_upstream_tls`], every outbound cluster): DestinationRule `tls`
//!   (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL) or, without one, auto-mTLS: `transport_socket_matches`
//!   `tlsMode-istio` (endpoint metadata `{tlsMode: istio}` -> the ISTIO_MUTUAL socket) then
//!   `tlsMode-disabled` (plaintext), unless MeshConfig `enableAutoMtls` is off, the service is
//!   MESH_EXTERNAL or its namespace's PeerAuthentication is DISABLE.
//! - **Sidecar server mTLS** ([`inbound_mtls_context`]): the transport socket of the inbound
//!   chains that terminate Istio mTLS (see `listener::InboundTls`).
//! - **Gateway server TLS** ([`gateway_tls_context`], istiod's `BuildListenerTLSContext`).
//!
//! Secret names, as istiod writes them: `default` (workload certificate) and `ROOTCA` (trust
//! bundle), `file-cert:<cert>~<key>` and `file-root:<ca>` (files the agent reads and watches), all
//! from the node agent's SDS server, cluster [`SDS_CLUSTER`] (`sds-grpc`, defined in the agent's
//! bootstrap); `credentialName` -> `kubernetes://<name>` and `kubernetes://<name>-cacert` over ADS
//! from the control plane (sidecars only for DestinationRules with a workloadSelector).
//!
//! ## ALPN: matching Sailplane clients to Sailplane servers without `istio.alpn`
//!
//! istiod's sidecars rewrite the client ALPN per request with Istio's `istio.alpn` HTTP filter,
//! which stock Envoy lacks. The inbound chains (istiod's tables, kept as they are) select on the
//! ALPN the client offers, so the ISTIO_MUTUAL client ALPN is fixed per cluster instead:
//!
//! | client cluster | offers | server chain |
//! |---|---|---|
//! | HTTP/2 (`http2`, `grpc`, h2 upgrade) | `istio-h2` | mTLS HTTP chain (declared HTTP: the Istio-ALPN chain) |
//! | other declared HTTP, and sniffed ports | `istio-http/1.1` | mTLS HTTP chain |
//! | declared TCP | `istio-peer-exchange`, `istio` | mTLS TCP chain |
//!
//! A sniffed client port carries HTTP and TCP over one cluster. Its cluster offers the HTTP ALPN,
//! so HTTP reaches the server's HTTP filters and the caller appears in `x-forwarded-client-cert`
//! (as with istiod, whose `istio.alpn` filter rewrites the ALPN per request). The outbound TCP
//! chains of a sniffed port put the TCP ALPNs into the connection's filter state
//! (`envoy.network.application_protocols`, Envoy's set_filter_state network filter), which
//! tcp_proxy hands to the upstream TLS socket, so non-HTTP bytes land on the server's TCP chain
//! ([`sniffed_tcp_alpn_override`]). Servers answer with `h2`/`http/1.1` (TCP chains also
//! `istio-peer-exchange`); when the lists do not overlap Envoy completes the handshake without ALPN
//! (`SSL_TLSEXT_ERR_NOACK`), and the HTTP codecs do not depend on it (clusters fix the upstream
//! protocol; inbound HCMs detect it).

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Http1ProtocolOptions,
    TransportSocket, UpstreamHttpProtocolOptions, api_config_source::ApiType, config_source, grpc_service,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, TlsParameters,
    UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    tls_parameters::TlsProtocol as EnvoyTlsProtocol,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Struct, Value, value};
use prost::encoding::{WireType, encode_key, encode_varint};
use prost::{Message, Name};
use std::cell::RefCell;
use std::rc::Rc;

use super::cluster::ClusterOut;
use super::{Ctx, any};
use crate::api::istio::{ClientTlsMode, ClientTlsSettings, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::model::mtls::{Mtls, namespace_mtls};
use crate::model::{Location, Protocol, Service, ServiceOrigin, ServicePort};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{FilterStateValue, filter_state_value};
use envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config as SetFilterStateConfig;

/// The workload certificate and key, served by the node agent.
pub const SDS_DEFAULT: &str = "default";
/// The mesh trust bundle, served by the node agent.
pub const SDS_ROOT: &str = "ROOTCA";
/// The node agent's SDS cluster (defined in the proxy's bootstrap).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Prefix of secrets read from Kubernetes Secrets by the control plane.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";
/// Prefix of a certificate-and-key secret read from files by the node agent (`file-cert:<cert>~<key>`).
pub const FILE_CERT_PREFIX: &str = "file-cert:";
/// Prefix of a CA secret read from a file by the node agent (`file-root:<ca>`).
pub const FILE_ROOT_PREFIX: &str = "file-root:";
/// Suffix of the CA part of a credential.
pub const CACERT_SUFFIX: &str = "-cacert";
/// Transport socket name of TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// Upstream TLS of an outbound cluster: DestinationRule `tls` (DISABLE, SIMPLE, MUTUAL,
/// ISTIO_MUTUAL) or, without one, auto-mTLS (`transport_socket_matches` on the endpoint's
/// `tlsMode`). `sni` is the cluster's Istio SNI (`outbound_.<port>_.<subset>_.<host>`).
///
/// Called once per outbound cluster (not for AUTO_PASSTHROUGH SNI-DNAT clusters, which forward
/// the client's TLS), after the traffic policy, as istiod's `applyUpstreamTLSSettings`.
pub fn apply_upstream_tls(
    ctx: &Ctx<'_>,
    cluster: &mut ClusterOut,
    service: &Service,
    port: &ServicePort,
    tls: Option<&ClientTlsSettings>,
    sni: &str,
) {
    let Some(tls) = tls else {
        if auto_mtls_applies(ctx, service) {
            let socket = istio_mutual_socket(ctx, cluster, service, port, None, sni);
            cluster.cluster.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: AUTO_MTLS_ISTIO_MATCH.to_string(),
                    r#match: Some(tls_mode_istio()),
                    transport_socket: Some(socket),
                },
                TransportSocketMatch {
                    name: AUTO_MTLS_DISABLED_MATCH.to_string(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_buffer_socket()),
                },
            ];
        }
        return;
    };
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    let context = match mode {
        ClientTlsMode::Disable => return,
        ClientTlsMode::IstioMutual => {
            cluster.cluster.transport_socket = Some(istio_mutual_socket(ctx, cluster, service, port, Some(tls), sni));
            return;
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            // istiod hands credentialName only to gateways and to sidecars a workload-specific
            // rule selects: a namespace-wide rule would make every sidecar wait for a Secret most
            // of them may not read.
            let credential = tls
                .credential_name
                .as_deref()
                .filter(|c| !c.is_empty())
                .filter(|_| !ctx.is_sidecar() || rule_has_selector(ctx, service));
            let Some(context) = simple_or_mutual_context(cluster, service, tls, mode, credential) else {
                // MUTUAL without credentials: istiod logs the error and leaves the cluster plaintext.
                return;
            };
            set_auto_sni(cluster, tls);
            context
        }
    };
    cluster.cluster.transport_socket = Some(tls_socket(&context));
}

/// Name of the auto-mTLS socket match for endpoints with a sidecar.
pub const AUTO_MTLS_ISTIO_MATCH: &str = "tlsMode-istio";
/// Name of the auto-mTLS socket match for every other endpoint.
pub const AUTO_MTLS_DISABLED_MATCH: &str = "tlsMode-disabled";
/// Transport socket name of plaintext.
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// ALPN of ISTIO_MUTUAL clients of HTTP/1.x clusters (istiod's `istio.alpn` filter sends the
/// same for HTTP/1.1 upstreams).
pub const ALPN_ISTIO_HTTP11: &str = "istio-http/1.1";
/// ALPN of ISTIO_MUTUAL clients of HTTP/2 clusters.
pub const ALPN_ISTIO_H2: &str = "istio-h2";
/// ALPN of ISTIO_MUTUAL clients of TCP and sniffed clusters (istiod's `ALPNInMeshWithMxc`).
pub const ALPN_ISTIO_TCP: [&str; 2] = ["istio-peer-exchange", "istio"];
/// ALPN a sidecar's inbound mTLS chains answer HTTP clients with (istiod's `ALPNDownstream`).
const ALPN_DOWNSTREAM: [&str; 2] = ["h2", "http/1.1"];
/// ALPN a sidecar's inbound mTLS chains answer TCP clients with (`ALPNDownstreamWithMxc`).
const ALPN_DOWNSTREAM_MXC: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// Cipher suites of Istio's sidecar servers (MeshConfig `meshMTLS` defaults).
const ISTIO_CIPHER_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// Whether a cluster of `service` without DestinationRule TLS gets auto-mTLS: on in MeshConfig,
/// not MESH_EXTERNAL, and the service's namespace not DISABLE (istiod's
/// `conditionallyConvertToIstioMtls`), for a proxy that has a workload certificate.
fn auto_mtls_applies(ctx: &Ctx<'_>, service: &Service) -> bool {
    !ctx.proxy.no_workload_cert
        && ctx.mesh.enable_auto_mtls
        && service.location == Location::MeshInternal
        && namespace_mtls(ctx.world, &service.namespace) != Mtls::Disable
}

/// Whether the DestinationRule the proxy uses for `service` has a workload selector.
fn rule_has_selector(ctx: &Ctx<'_>, service: &Service) -> bool {
    ctx.destination_rule(&service.hostname)
        .is_some_and(|r| r.primary().selector.as_ref().is_some_and(|s| !s.is_empty()))
}

/// Whether the cluster speaks HTTP/2 upstream (port protocol or `h2UpgradePolicy`).
fn is_http2(cluster: &ClusterOut) -> bool {
    matches!(
        cluster.http.as_ref().and_then(|h| h.upstream_protocol_options.as_ref()),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)),
        }))
    )
}

/// The ALPN list an ISTIO_MUTUAL client offers, chosen so that the server's inbound chains (which
/// match on it) select the right filters; see the crate's ARCHITECTURE notes. Stock Envoy has no
/// `istio.alpn` filter to rewrite ALPN per request, so the cluster's protocol decides:
/// HTTP/2 -> `istio-h2`, other declared HTTP and sniffed ports -> `istio-http/1.1`, TCP ->
/// `istio-peer-exchange`, `istio`.
fn istio_client_alpn(cluster: &ClusterOut, port: &ServicePort) -> &'static [&'static str] {
    if is_http2(cluster) {
        &[ALPN_ISTIO_H2]
    } else if port.protocol.is_http() || port.protocol == Protocol::Unspecified {
        // Sniffed ports: the HTTP side keeps this; the outbound TCP chains of the port override it
        // with the TCP ALPNs ([`sniffed_tcp_alpn_override`]).
        &[ALPN_ISTIO_HTTP11]
    } else {
        &ALPN_ISTIO_TCP
    }
}

/// Network filter name of Envoy's set_filter_state.
const SET_FILTER_STATE: &str = "envoy.filters.network.set_filter_state";
/// Envoy's well-known filter state key overriding the upstream ALPN of the connection.
const APPLICATION_PROTOCOLS_KEY: &str = "envoy.network.application_protocols";

/// For a sniffed (protocol-less) service port, whose ISTIO_MUTUAL clusters offer
/// `istio-http/1.1` so that the server's sniffed chains process HTTP as HTTP (caller identity in
/// `x-forwarded-client-cert`, as istiod's `istio.alpn` achieves): the network filter that makes
/// the outbound TCP chains offer `istio-peer-exchange`,`istio` instead, so non-HTTP bytes land on
/// the server's TCP chain. Envoy's tcp_proxy takes the ALPN override from the connection's
/// filter state. `None` when the port is not sniffed or a DestinationRule originates
/// SIMPLE/MUTUAL TLS to the service (an override would replace that cluster's own ALPN).
pub(crate) fn sniffed_tcp_alpn_override(ctx: &Ctx<'_>, service: &Service, port: &ServicePort) -> Option<Filter> {
    if port.protocol != Protocol::Unspecified {
        return None;
    }
    let mut istio_mutual = false;
    if let Some(rule) = ctx.destination_rule(&service.hostname) {
        let spec = &rule.spec;
        let policies = spec.traffic_policy.iter().chain(spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
        for policy in policies {
            let settings = policy.tls.iter().chain(policy.port_level_settings.iter().filter_map(|p| p.tls.as_ref()));
            for tls in settings {
                match tls.mode.unwrap_or(ClientTlsMode::Disable) {
                    ClientTlsMode::Simple | ClientTlsMode::Mutual => return None,
                    ClientTlsMode::IstioMutual => istio_mutual = true,
                    ClientTlsMode::Disable => {}
                }
            }
        }
    }
    if !istio_mutual && !auto_mtls_applies(ctx, service) {
        return None;
    }
    let config = SetFilterStateConfig {
        on_new_connection: vec![FilterStateValue {
            key: Some(filter_state_value::Key::ObjectKey(APPLICATION_PROTOCOLS_KEY.to_string())),
            value: Some(filter_state_value::Value::FormatString(SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(ALPN_ISTIO_TCP.join(","))),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    Some(Filter {
        name: SET_FILTER_STATE.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&config))),
    })
}

/// TLS 1.2 to 1.3, as istiod's `defaultUpstreamCommonTLSContext`.
fn default_upstream_common() -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: EnvoyTlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: EnvoyTlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ISTIO_MUTUAL client socket: workload certificate `default`, trust `ROOTCA`, exact SANs
/// (the rule's, else the service's identities), SNI (the rule's, else the cluster's Istio SNI).
///
/// Every cluster of a service (ports, subsets) shares the `CommonTlsContext` up to its ALPN, and
/// auto-mTLS puts one on nearly every cluster, so its encoding is cached ([`TlsCache`]) and the
/// `UpstreamTlsContext` is written around it (the same bytes prost writes, see the tests).
fn istio_mutual_socket(
    ctx: &Ctx<'_>,
    cluster: &ClusterOut,
    service: &Service,
    port: &ServicePort,
    tls: Option<&ClientTlsSettings>,
    sni: &str,
) -> TransportSocket {
    let rule_sans: &[String] = tls.map(|t| t.subject_alt_names.as_slice()).unwrap_or_default();
    let alpn = istio_client_alpn(cluster, port);
    let common = ctx.tls_cache.common(&service.hostname, alpn, rule_sans, || {
        let sans: Vec<String> =
            if rule_sans.is_empty() { service.service_accounts.iter().cloned().collect() } else { rule_sans.to_vec() };
        istio_mutual_common(&sans, alpn).encode_to_vec()
    });
    let sni = tls.and_then(|t| t.sni.as_deref()).filter(|s| !s.is_empty()).unwrap_or(sni);
    let mut value = Vec::with_capacity(common.len() + sni.len() + 12);
    encode_key(UPSTREAM_TLS_COMMON_TAG, WireType::LengthDelimited, &mut value);
    encode_varint(common.len() as u64, &mut value);
    value.extend_from_slice(&common);
    if !sni.is_empty() {
        encode_key(UPSTREAM_TLS_SNI_TAG, WireType::LengthDelimited, &mut value);
        encode_varint(sni.len() as u64, &mut value);
        value.extend_from_slice(sni.as_bytes());
    }
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url: UpstreamTlsContext::type_url(),
            value,
        })),
    }
}

/// Field numbers of `UpstreamTlsContext` written by [`istio_mutual_socket`].
const UPSTREAM_TLS_COMMON_TAG: u32 = 1;
const UPSTREAM_TLS_SNI_TAG: u32 = 2;

/// The `CommonTlsContext` of ISTIO_MUTUAL clients.
#[allow(deprecated)]
fn istio_mutual_common(sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    let mut common = default_upstream_common();
    common.tls_certificate_sds_secret_configs = vec![agent_sds(SDS_DEFAULT)];
    common.validation_context_type =
        Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_subject_alt_names: san_matchers(sans),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(agent_sds(SDS_ROOT)),
            ..Default::default()
        }));
    common.alpn_protocols = alpn.iter().map(|s| s.to_string()).collect();
    common
}

/// Per-translation cache of the last encoded ISTIO_MUTUAL `CommonTlsContext`, keyed by service
/// host, ALPN and the rule's SANs (a service's own SANs follow from its host). Clusters of one
/// service are built one after another, so one entry is enough.
#[derive(Debug, Default)]
pub struct TlsCache(RefCell<Option<CachedCommon>>);

#[derive(Debug)]
struct CachedCommon {
    host: String,
    alpn: &'static [&'static str],
    rule_sans: Vec<String>,
    bytes: Rc<[u8]>,
}

impl TlsCache {
    fn common(
        &self,
        host: &str,
        alpn: &'static [&'static str],
        rule_sans: &[String],
        build: impl FnOnce() -> Vec<u8>,
    ) -> Rc<[u8]> {
        let mut slot = self.0.borrow_mut();
        if let Some(c) = slot.as_ref()
            && c.host == host
            && c.alpn == alpn
            && c.rule_sans == rule_sans
        {
            return c.bytes.clone();
        }
        let bytes: Rc<[u8]> = build().into();
        *slot =
            Some(CachedCommon { host: host.to_string(), alpn, rule_sans: rule_sans.to_vec(), bytes: bytes.clone() });
        bytes
    }
}

/// SIMPLE / MUTUAL client context (istiod's `buildUpstreamTLSContext`): `credential` over ADS
/// (`kubernetes://<name>`, CA `kubernetes://<name>-cacert`) or files over the agent's SDS
/// (`file-cert:<cert>~<key>`, `file-root:<ca>`). ServiceEntry SANs stand in when the rule names
/// none. `None` for MUTUAL without a client certificate.
#[allow(deprecated)]
fn simple_or_mutual_context(
    cluster: &ClusterOut,
    service: &Service,
    tls: &ClientTlsSettings,
    mode: ClientTlsMode,
    credential: Option<&str>,
) -> Option<UpstreamTlsContext> {
    let mut sans = tls.subject_alt_names.clone();
    if sans.is_empty() && service.origin == ServiceOrigin::ServiceEntry {
        sans = service.service_accounts.iter().cloned().collect();
    }
    let insecure = tls.insecure_skip_verify == Some(true);
    let mut common = default_upstream_common();
    if let Some(name) = credential {
        if mode == ClientTlsMode::Mutual {
            common.tls_certificate_sds_secret_configs = vec![credential_sds(name)];
        }
        if !insecure {
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: san_matchers(&sans),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(credential_sds(&format!("{name}{CACERT_SUFFIX}"))),
                    ..Default::default()
                }));
        }
    } else {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        if mode == ClientTlsMode::Mutual {
            let (cert, key) = (non_empty(&tls.client_certificate)?, non_empty(&tls.private_key)?);
            common.tls_certificate_sds_secret_configs = vec![agent_sds(&format!("{FILE_CERT_PREFIX}{cert}~{key}"))];
        }
        common.validation_context_type = Some(match non_empty(&tls.ca_certificates) {
            Some(ca) if !insecure => {
                ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: san_matchers(&sans),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_sds(&format!("{FILE_ROOT_PREFIX}{ca}"))),
                    ..Default::default()
                })
            }
            // No CA (or verification off): istiod sets an empty context, nothing is verified.
            _ => ValidationContextType::ValidationContext(CertificateValidationContext::default()),
        });
    }
    if is_http2(cluster) {
        common.alpn_protocols = vec!["h2".to_string()];
    }
    Some(UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// istiod's `setAutoSniAndAutoSanValidation` (ENABLE_AUTO_SNI and VERIFY_CERTIFICATE_AT_CLIENT,
/// on by default): without an explicit SNI, HTTP requests set SNI from their Host, and without
/// SANs the server certificate is checked against that host.
fn set_auto_sni(cluster: &mut ClusterOut, tls: &ClientTlsSettings) {
    if tls.sni.as_deref().is_some_and(|s| !s.is_empty()) {
        return;
    }
    let auto_san = tls.subject_alt_names.is_empty() && tls.insecure_skip_verify != Some(true);
    let http = cluster.http.get_or_insert_with(|| HttpProtocolOptions {
        // HttpProtocolOptions needs an upstream protocol; istiod fills in HTTP/1.1 likewise.
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )),
        })),
        ..Default::default()
    });
    http.upstream_http_protocol_options =
        Some(UpstreamHttpProtocolOptions { auto_sni: true, auto_san_validation: auto_san, ..Default::default() });
}

/// `{tlsMode: istio}`: the endpoint metadata of workloads with a sidecar.
fn tls_mode_istio() -> Struct {
    Struct {
        fields: [("tlsMode".to_string(), Value { kind: Some(value::Kind::StringValue("istio".to_string())) })]
            .into_iter()
            .collect(),
    }
}

/// An `UpstreamTlsContext` as a cluster transport socket.
fn tls_socket(ctx: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

/// Plaintext.
fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&RawBuffer::default()))),
    }
}

/// The server side of Istio mTLS on a sidecar's inbound chains (istiod's `BuildInboundTLS`):
/// client certificate required and checked against `ROOTCA` (no SAN check: authorization
/// decides), certificate `default`, TLS 1.2-1.3 with Istio's cipher suites. ALPN `h2`,
/// `http/1.1` (TCP chains also `istio-peer-exchange`); a client offering none of them is not
/// refused (Envoy answers without ALPN), so Istio-ALPN clients still connect.
#[allow(deprecated)]
pub fn inbound_mtls_context(kind: ServerKind) -> DownstreamTlsContext {
    let alpn: &[&str] = match kind {
        ServerKind::Http => &ALPN_DOWNSTREAM,
        ServerKind::Tcp => &ALPN_DOWNSTREAM_MXC,
    };
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: EnvoyTlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: EnvoyTlsProtocol::TlSv13 as i32,
                cipher_suites: ISTIO_CIPHER_SUITES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![agent_sds(SDS_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext::default()),
                    validation_context_sds_secret_config: Some(agent_sds(SDS_ROOT)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// [`inbound_mtls_context`] as a filter chain transport socket.
pub fn inbound_mtls_socket(kind: ServerKind) -> TransportSocket {
    downstream_transport_socket(&inbound_mtls_context(kind))
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
        .map(|s| StringMatcher { match_pattern: Some(MatchPattern::Exact(s.clone())), ignore_case: false })
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
    let mut common =
        CommonTlsContext { alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let require_client = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual);
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let credentials: Vec<&String> = tls.credential_name.iter().chain(tls.credential_names.iter()).collect();
    if mode == ServerTlsMode::IstioMutual {
        common.tls_certificate_sds_secret_configs = vec![agent_sds(SDS_DEFAULT)];
        common.validation_context_type =
            Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(agent_sds(SDS_ROOT)),
                ..Default::default()
            }));
    } else if let Some(first) = credentials.first() {
        common.tls_certificate_sds_secret_configs = credentials.iter().map(|c| credential_sds(c)).collect();
        if mutual {
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(default_validation(tls)),
                    validation_context_sds_secret_config: Some(credential_sds(&format!("{first}{CACERT_SUFFIX}"))),
                    ..Default::default()
                }));
        } else if !tls.subject_alt_names.is_empty() {
            common.validation_context_type =
                Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                    match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                    ..Default::default()
                }));
        }
    } else {
        // Certificate files, served by the node agent (which watches them).
        let cert = match (tls.server_certificate.as_deref(), tls.private_key.as_deref()) {
            (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => format!("{FILE_CERT_PREFIX}{c}~{k}"),
            _ => SDS_DEFAULT.to_string(),
        };
        common.tls_certificate_sds_secret_configs = vec![agent_sds(&cert)];
        // istiod validates client certificates from files only when it requires them
        // (OPTIONAL_MUTUAL with files accepts any client).
        if require_client {
            let root = match tls.ca_certificates.as_deref() {
                Some(ca) if !ca.is_empty() => format!("{FILE_ROOT_PREFIX}{ca}"),
                _ => SDS_ROOT.to_string(),
            };
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: san_matchers(&tls.subject_alt_names),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_sds(&root)),
                    ..Default::default()
                }));
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
    fn secret_names(
        #[case] tls: serde_json::Value,
        #[case] certs: &[&str],
        #[case] root: Option<&str>,
        #[case] require: bool,
    ) {
        let tls: ServerTlsSettings = serde_json::from_value(tls).unwrap();
        let ctx = gateway_tls_context(&tls, ServerKind::Http).unwrap();
        let (c, r) = names(&ctx);
        assert_eq!(c, certs);
        assert_eq!(r.as_deref(), root);
        assert_eq!(ctx.require_client_certificate.unwrap().value, require);
        assert_eq!(ctx.common_tls_context.unwrap().alpn_protocols, vec!["h2", "http/1.1"]);
    }

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use crate::envoy::build;
    use crate::envoy::tests::{mk_service, mk_world, sidecar};
    use crate::model::{Protocol, Resolution};
    use crate::resources::TypeUrl;

    fn cluster(world: &crate::model::World, name: &str) -> Cluster {
        let set = build(world, &sidecar("default"));
        let r = set.get(TypeUrl::Cluster, name).unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.clone()).unwrap();
        Cluster::decode(any.value.as_slice()).unwrap()
    }

    fn upstream(ts: &TransportSocket) -> UpstreamTlsContext {
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else { panic!("no config") };
        UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
    }

    #[rstest]
    #[case(Protocol::Http, &["istio-http/1.1"])]
    #[case(Protocol::Grpc, &["istio-h2"])]
    #[case(Protocol::Tcp, &["istio-peer-exchange", "istio"])]
    #[case(Protocol::Unspecified, &["istio-http/1.1"])]
    fn auto_mtls_offers_the_alpn_the_server_chains_expect(#[case] protocol: Protocol, #[case] alpn: &[&str]) {
        let mut svc =
            mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("p", 80, protocol)]);
        svc.service_accounts.insert("spiffe://cluster.local/ns/default/sa/a".into());
        let c = cluster(&mk_world(vec![svc]), "outbound|80||a.default.svc.cluster.local");
        let names: Vec<&str> = c.transport_socket_matches.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec![AUTO_MTLS_ISTIO_MATCH, AUTO_MTLS_DISABLED_MATCH]);
        assert_eq!(c.transport_socket_matches[1].transport_socket.as_ref().unwrap().name, RAW_BUFFER_TRANSPORT_SOCKET);
        let socket = c.transport_socket_matches[0].transport_socket.as_ref().unwrap();
        let tls = upstream(socket);
        // The hand-written encoding is byte for byte what prost writes.
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!("no config") };
        assert_eq!(tls.encode_to_vec(), any.value);
        assert_eq!(tls.sni, "outbound_.80_._.a.default.svc.cluster.local");
        let common = tls.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, alpn);
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, SDS_DEFAULT);
        let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type else {
            panic!("no combined validation")
        };
        assert_eq!(v.validation_context_sds_secret_config.unwrap().name, SDS_ROOT);
        #[allow(deprecated)]
        let sans = v.default_validation_context.unwrap().match_subject_alt_names;
        assert_eq!(sans.len(), 1);
    }

    #[test]
    fn auto_mtls_is_off_when_disabled_in_mesh_config_or_external() {
        let internal = mk_service(
            "a.default.svc.cluster.local",
            &["10.0.0.1"],
            Resolution::Static,
            &[("http", 80, Protocol::Http)],
        );
        let external = mk_service("api.example.com", &[], Resolution::Dns, &[("http", 80, Protocol::Http)]);
        let mut world = mk_world(vec![internal, external]);
        assert!(cluster(&world, "outbound|80||api.example.com").transport_socket_matches.is_empty());
        world.mesh.enable_auto_mtls = false;
        let c = cluster(&world, "outbound|80||a.default.svc.cluster.local");
        assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());
    }

    #[test]
    fn inbound_context_requires_client_certificates() {
        let ctx = inbound_mtls_context(ServerKind::Tcp);
        assert!(ctx.require_client_certificate.unwrap().value);
        let (certs, root) = names(&ctx);
        assert_eq!((certs, root.as_deref()), (vec![SDS_DEFAULT.to_string()], Some(SDS_ROOT)));
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, vec!["istio-peer-exchange", "h2", "http/1.1"]);
        let params = common.tls_params.unwrap();
        assert_eq!(params.tls_minimum_protocol_version, EnvoyTlsProtocol::TlSv12 as i32);
        assert_eq!(params.tls_maximum_protocol_version, EnvoyTlsProtocol::TlSv13 as i32);
    }

    #[test]
    fn passthrough_has_no_context() {
        let tls: ServerTlsSettings = serde_json::from_value(json!({"mode": "PASSTHROUGH"})).unwrap();
        assert!(gateway_tls_context(&tls, ServerKind::Tcp).is_none());
    }

    /// The first network filter of every chain of the service's outbound listener, by chain kind.
    fn first_filters(world: &crate::model::World, listener: &str) -> Vec<(bool, String)> {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        let set = build(world, &sidecar("default"));
        let r = set.get(TypeUrl::Listener, listener).unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.clone()).unwrap();
        let l = Listener::decode(any.value.as_slice()).unwrap();
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.iter())
            .map(|c| (c.filters.len() == 1, c.filters[0].name.clone()))
            .collect()
    }

    #[rstest]
    #[case::sniffed(Protocol::Unspecified, true)]
    #[case::declared_tcp(Protocol::Tcp, false)]
    fn sniffed_ports_switch_tcp_chains_to_the_tcp_alpns(#[case] protocol: Protocol, #[case] overridden: bool) {
        let mut svc =
            mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("p", 8080, protocol)]);
        svc.service_accounts.insert("spiffe://cluster.local/ns/default/sa/a".into());
        let filters = first_filters(&mk_world(vec![svc]), "10.0.0.1_8080");
        let tcp: Vec<&String> = filters
            .iter()
            .filter(|(_, name)| name != "envoy.filters.network.http_connection_manager")
            .map(|(_, n)| n)
            .collect();
        assert!(!tcp.is_empty(), "{filters:?}");
        let expected = if overridden { SET_FILTER_STATE } else { "envoy.filters.network.tcp_proxy" };
        assert!(tcp.iter().all(|n| *n == expected), "{filters:?}");
    }

    #[test]
    fn a_proxy_without_a_workload_certificate_stays_plaintext() {
        let mut svc = mk_service(
            "a.default.svc.cluster.local",
            &["10.0.0.1"],
            Resolution::Static,
            &[("http", 80, Protocol::Http)],
        );
        svc.service_accounts.insert("spiffe://cluster.local/ns/default/sa/a".into());
        let world = mk_world(vec![svc]);
        let mut proxy = sidecar("default");
        proxy.no_workload_cert = true;
        let set = build(&world, &proxy);
        let r = set.get(TypeUrl::Cluster, "outbound|80||a.default.svc.cluster.local").unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.clone()).unwrap();
        let c = Cluster::decode(any.value.as_slice()).unwrap();
        assert!(
            c.transport_socket_matches.is_empty() && c.transport_socket.is_none(),
            "no auto-mTLS without a certificate"
        );
        let r = set.get(TypeUrl::Listener, "virtualInbound").unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(r.any.clone()).unwrap();
        let l = envoy_types::pb::envoy::config::listener::v3::Listener::decode(any.value.as_slice()).unwrap();
        assert!(
            l.filter_chains.iter().all(|c| c.transport_socket.is_none()),
            "no mTLS termination without a certificate"
        );
        // The same proxy with a certificate gets both.
        proxy.no_workload_cert = false;
        let c = cluster(&world, "outbound|80||a.default.svc.cluster.local");
        assert_eq!(c.transport_socket_matches.len(), 2);
    }
}
