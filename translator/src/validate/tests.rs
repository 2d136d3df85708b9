//! Table tests: one row per rule (Istio's validation, `docs/istio-semantics.md` section 9), each a
//! minimal object that breaks exactly that rule, plus valid objects of every kind that must pass.
//!
//! The rules Istio's own validation corpus exercises (DestinationRule warmup, PeerAuthentication,
//! ServiceEntry and WorkloadEntry) have rows here too, with objects of our own, so the crate's
//! tests need nothing outside the repository; `tests/corpus.rs` compares with the corpus itself
//! when asked to.

use rstest::rstest;
use serde::Deserialize;

use super::{validate_object, validate_set};
use crate::api::{Object, parse_object};
use crate::diag::{Diagnostic, Severity};

fn objects(yaml: &str) -> Vec<Object> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            let v = serde_json::Value::deserialize(d).expect("test yaml");
            parse_object(v).unwrap_or_else(|d| panic!("test object does not parse: {d}"))
        })
        .collect()
}

fn diagnostics(yaml: &str) -> Vec<Diagnostic> {
    objects(yaml).iter().flat_map(validate_object).collect()
}

/// Diagnostics of one document: its parse error (an unknown enum value, a port key that is not a
/// number, ...), else its validation diagnostics.
fn checked(yaml: &str) -> Vec<Diagnostic> {
    let v = serde_json::Value::deserialize(serde_yaml_ng::Deserializer::from_str(yaml)).expect("test yaml");
    match parse_object(v) {
        Ok(o) => validate_object(&o),
        Err(d) => vec![d],
    }
}

fn errors(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().filter(|d| d.severity == Severity::Error).map(|d| format!("{}: {}", d.field, d.message)).collect()
}

const VS: &str =
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: ns}\nspec:\n";
const DR: &str =
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr, namespace: ns}\nspec:\n";
const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: ns}\nspec:\n";
const GW: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: ns}\nspec:\n";
const SC: &str = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: sc, namespace: ns}\nspec:\n";
const WE: &str =
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we, namespace: ns}\nspec:\n";
const PA: &str =
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: ns}\nspec:\n";
/// Objects without a `spec` (the body is empty).
const SE_WITHOUT_SPEC: &str =
    "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: ns}\n";
const WE_WITHOUT_SPEC: &str =
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we, namespace: ns}\n";

#[rstest]
// VirtualService
#[case::vs_wildcard_host_on_mesh(
    VS,
    "  hosts: ['*']\n  http: [{route: [{destination: {host: a.com}}]}]",
    "spec.hosts[0]",
    "wildcard host * is not allowed"
)]
#[case::vs_relative_gateway_refused(
    VS,
    "  hosts: [a.com]\n  gateways: [./gw]\n  http: [{route: [{destination: {host: a.com}}]}]",
    "spec.gateways[0]",
    "invalid value for namespace: \".\""
)]
#[case::vs_no_routes(VS, "  hosts: [a.com]", "spec", "http, tcp or tls must be provided")]
#[case::vs_route_and_redirect(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], redirect: {uri: /x}}]",
    "spec.http[0].redirect",
    "both route and redirect"
)]
#[case::vs_all_weights_zero(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}, weight: 0}, {destination: {host: b.com}, weight: 0}]}]",
    "spec.http[0].route",
    "total destination weight = 0"
)]
#[case::vs_negative_weight(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}, weight: -1}]}]",
    "spec.http[0].route[0].weight",
    "weight -1 < 0"
)]
#[case::vs_redirect_without_target(
    VS,
    "  hosts: [a.com]\n  http: [{redirect: {redirectCode: 301}}]",
    "spec.http[0].redirect",
    "redirect must specify uri, authority, scheme, or port"
)]
#[case::vs_redirect_code_not_3xx(
    VS,
    "  hosts: [a.com]\n  http: [{redirect: {uri: /x, redirectCode: 200}}]",
    "spec.http[0].redirect.redirectCode",
    "not a valid redirect code"
)]
#[case::vs_redirect_bad_scheme(
    VS,
    "  hosts: [a.com]\n  http: [{redirect: {scheme: ftp}}]",
    "spec.http[0].redirect.scheme",
    "must be \"http\" or \"https\""
)]
#[case::vs_fault_empty(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], fault: {}}]",
    "spec.http[0].fault",
    "must have an abort and/or a delay"
)]
#[case::vs_fault_bad_status(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], fault: {abort: {httpStatus: 99}}}]",
    "spec.http[0].fault.abort.httpStatus",
    "not in range 200-599"
)]
#[case::vs_bad_regex(
    VS,
    "  hosts: [a.com]\n  http: [{match: [{uri: {regex: '(['}}], route: [{destination: {host: a.com}}]}]",
    "spec.http[0].match[0].uri.regex",
    "invalid regex"
)]
#[case::vs_two_string_match_kinds(
    VS,
    "  hosts: [a.com]\n  http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a.com}}]}]",
    "spec.http[0].match[0].uri",
    "only one of exact, prefix or regex"
)]
#[case::vs_tls_without_sni(
    VS,
    "  hosts: [a.com]\n  tls: [{match: [{port: 443}], route: [{destination: {host: a.com}}]}]",
    "spec.tls[0].match[0].sniHosts",
    "at least one sni host"
)]
#[case::vs_sni_outside_hosts(
    VS,
    "  hosts: [a.com]\n  tls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: a.com}}]}]",
    "spec.tls[0].match[0].sniHosts[0]",
    "not a compatible subset"
)]
#[case::vs_delegate_with_gateways(
    VS,
    "  gateways: [gw]\n  http: [{route: [{destination: {host: a.com}}]}]",
    "spec.gateways",
    "delegate virtual service must have no gateways"
)]
#[case::vs_root_with_route(
    VS,
    "  hosts: [a.com]\n  http: [{delegate: {name: d}, route: [{destination: {host: a.com}}]}]",
    "spec.http[0].route",
    "must not specify route"
)]
#[case::vs_delegate_in_delegate(
    VS,
    "  http: [{delegate: {name: d}}]",
    "spec.http[0].delegate",
    "delegate http route cannot contain delegate"
)]
#[case::vs_mirror_and_mirrors(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], mirror: {host: m.com}, mirrors: [{destination: {host: n.com}}]}]",
    "spec.http[0].mirrors",
    "both mirror and mirrors"
)]
#[case::vs_bad_timeout(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], timeout: 5x}]",
    "spec.http[0].timeout",
    "invalid duration"
)]
#[case::vs_retry_on(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], retries: {attempts: 2, retryOn: 'bogus'}}]",
    "spec.http[0].retries.retryOn",
    "not a valid retryon policy"
)]
#[case::vs_rewrite_both(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], rewrite: {uri: /x, uriRegexRewrite: {match: a, rewrite: b}}}]",
    "spec.http[0].rewrite",
    "only contain one of uri or uriregexrewrite"
)]
#[case::vs_direct_response_status(
    VS,
    "  hosts: [a.com]\n  http: [{directResponse: {status: 700}}]",
    "spec.http[0].directResponse.status",
    "not in range 200-599"
)]
#[case::vs_authority_twice(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], rewrite: {authority: x}, headers: {request: {set: {host: y}}}}]",
    "spec.http[0].headers.request",
    "authority header cannot be set multiple times"
)]
#[case::vs_bad_header_op(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com}}], headers: {response: {set: {':status': x}}}}]",
    "spec.http[0].headers.response.set[:status]",
    "cannot have \":\" prefix"
)]
#[case::vs_bad_gateway_name(
    VS,
    "  hosts: [a.com]\n  gateways: ['ns/Bad_Name']\n  http: [{route: [{destination: {host: a.com}}]}]",
    "spec.gateways[0]",
    "invalid value for gateway name"
)]
#[case::vs_duplicate_hosts(
    VS,
    "  hosts: ['*.a.com', 'x.a.com']\n  http: [{route: [{destination: {host: a.com}}]}]",
    "spec.hosts[1]",
    "duplicate hosts"
)]
#[case::vs_bad_subset_name(
    VS,
    "  hosts: [a.com]\n  http: [{route: [{destination: {host: a.com, subset: V_1}}]}]",
    "spec.http[0].route[0].destination.subset",
    "subset name is invalid"
)]
// DestinationRule
#[case::dr_duplicate_subsets(
    DR,
    "  host: a.com\n  subsets: [{name: v1}, {name: v1}]",
    "spec.subsets[1].name",
    "duplicate subset names"
)]
#[case::dr_empty_traffic_policy(DR, "  host: a.com\n  trafficPolicy: {}", "spec.trafficPolicy", "at least one field")]
#[case::dr_mutual_without_cert(
    DR,
    "  host: a.com\n  trafficPolicy: {tls: {mode: MUTUAL, privateKey: /k}}",
    "spec.trafficPolicy.tls.clientCertificate",
    "client certificate required"
)]
#[case::dr_credential_and_files(
    DR,
    "  host: a.com\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca}}",
    "spec.trafficPolicy.tls",
    "cannot specify client certificates or ca certificate"
)]
#[case::dr_selector_wide_export(
    DR,
    "  host: a.com\n  workloadSelector: {matchLabels: {app: a}}\n  exportTo: ['*']",
    "spec.exportTo",
    "cannot have exportto beyond current namespace"
)]
#[case::dr_maglev_not_prime(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}",
    "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
    "prime number"
)]
#[case::dr_missing_host(DR, "  subsets: [{name: v1}]", "spec.host", "required value")]
#[case::dr_bad_duration(
    DR,
    "  host: a.com\n  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0.1ms}}}",
    "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
    "greater than 1ms"
)]
#[case::dr_locality_weights(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/b, to: {'x/*': 60}}]}}}",
    "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
    "total locality weight 60 != 100"
)]
#[case::dr_cookie_without_name(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}",
    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
    "name required"
)]
#[case::dr_port_policy_empty(
    DR,
    "  host: a.com\n  trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}",
    "spec.trafficPolicy.portLevelSettings[0]",
    "at least one field"
)]
// ServiceEntry
#[case::dr_warmup_minimum_percent_over_100(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {duration: 60s, minimumPercent: 101}}}",
    "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
    "must be between 0 and 100"
)]
#[case::dr_warmup_without_duration(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {minimumPercent: 20}}}",
    "spec.trafficPolicy.loadBalancer.warmup.duration",
    "warmup duration is required"
)]
#[case::dr_warmup_negative_aggression(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {duration: 60s, aggression: -2}}}",
    "spec.trafficPolicy.loadBalancer.warmup.aggression",
    "must be greater than or equal to 0"
)]
#[case::se_without_spec(SE_WITHOUT_SPEC, "", "spec", "required value")]
#[case::se_wildcard_in_selector(
    SE,
    "  hosts: [a.com]\n  workloadSelector: {labels: {tier: '*'}}",
    "spec.workloadSelector.labels[tier]",
    "wildcard is not supported in selector"
)]
#[case::se_host_is_wildcard(SE, "  hosts: ['*']", "spec.hosts[0]", "hostname cannot be wildcard")]
#[case::se_port_out_of_range(
    SE,
    "  hosts: [a.com]\n  ports: [{name: web, number: 65536}]",
    "spec.ports[0].number",
    "port must be between 1-65535"
)]
#[case::se_target_port_out_of_range(
    SE,
    "  hosts: [a.com]\n  ports: [{name: web, number: 8080, targetPort: 70000}]",
    "spec.ports[0].targetPort",
    "port must be between 1-65535"
)]
#[case::se_no_hosts(SE, "  ports: [{name: http, number: 80}]", "spec.hosts", "required value")]
#[case::se_selector_and_endpoints(
    SE,
    "  hosts: [a.com]\n  resolution: STATIC\n  workloadSelector: {labels: {app: a}}\n  endpoints: [{address: 1.1.1.1}]",
    "spec",
    "only one of workloadselector or endpoints"
)]
#[case::se_duplicate_port_number(
    SE,
    "  hosts: [a.com]\n  addresses: [10.0.0.1]\n  ports: [{name: a, number: 80}, {name: b, number: 80}]",
    "spec.ports[1].number",
    "port number cannot be duplicated"
)]
#[case::se_duplicate_port_name(
    SE,
    "  hosts: [a.com]\n  addresses: [10.0.0.1]\n  ports: [{name: a, number: 80}, {name: a, number: 81}]",
    "spec.ports[1].name",
    "duplicate value"
)]
#[case::se_cidr_with_dns(
    SE,
    "  hosts: [a.com]\n  addresses: [10.0.0.0/8]\n  resolution: DNS",
    "spec.addresses",
    "cidr addresses are allowed only for none/static"
)]
#[case::se_endpoints_with_none(
    SE,
    "  hosts: [a.com]\n  endpoints: [{address: 1.1.1.1}]",
    "spec.endpoints",
    "none mode cannot set endpoints"
)]
#[case::se_dns_rr_two_endpoints(
    SE,
    "  hosts: [a.com]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.com}, {address: b.com}]",
    "spec.endpoints",
    "cannot have multiple endpoints"
)]
#[case::se_endpoint_port_unknown(
    SE,
    "  hosts: [a.com]\n  addresses: [10.0.0.1]\n  ports: [{name: http, number: 80, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 1.1.1.1, ports: {grpc: 9000}}]",
    "spec.endpoints[0].ports[grpc]",
    "not defined by the service entry"
)]
#[case::se_static_fqdn_endpoint(
    SE,
    "  hosts: [a.com]\n  resolution: STATIC\n  endpoints: [{address: b.com}]",
    "spec.endpoints[0].address",
    "not a valid ip address"
)]
#[case::se_multi_host_tcp(
    SE,
    "  hosts: [a.com, b.com]\n  addresses: [10.0.0.1]\n  resolution: DNS\n  ports: [{name: tcp, number: 9000, protocol: TCP}]",
    "spec.ports",
    "multiple hosts provided with non-http, non-tls ports"
)]
#[case::se_bad_protocol(
    SE,
    "  hosts: [a.com]\n  addresses: [10.0.0.1]\n  ports: [{name: a, number: 80, protocol: SPDY}]",
    "spec.ports[0].protocol",
    "unsupported protocol"
)]
#[case::se_bad_export(
    SE,
    "  hosts: [a.com]\n  exportTo: ['*', ns2]",
    "spec.exportTo",
    "both public (*) and non-public"
)]
// Gateway
#[case::gw_no_servers(GW, "  selector: {istio: ingressgateway}", "spec.servers", "at least one server")]
#[case::gw_server_without_hosts(
    GW,
    "  servers: [{port: {number: 80, name: http, protocol: HTTP}}]",
    "spec.servers[0].hosts",
    "at least one host"
)]
#[case::gw_https_without_tls(
    GW,
    "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}]",
    "spec.servers[0].tls",
    "must have tls settings"
)]
#[case::gw_istio_mutual_with_credential(
    GW,
    "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL, credentialName: c}}]",
    "spec.servers[0].tls.credentialName",
    "istio_mutual tls cannot have associated credentialname"
)]
#[case::gw_simple_without_cert(
    GW,
    "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, privateKey: /k}}]",
    "spec.servers[0].tls.serverCertificate",
    "simple tls requires a server certificate"
)]
#[case::gw_mutual_without_ca(
    GW,
    "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}}]",
    "spec.servers[0].tls.caCertificates",
    "requires a client ca bundle"
)]
#[case::gw_duplicate_port_names(
    GW,
    "  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}, {port: {number: 81, name: http, protocol: HTTP}, hosts: ['*']}]",
    "spec.servers[1].port.name",
    "port names in servers must be unique"
)]
#[case::gw_short_host(
    GW,
    "  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['ns/reviews']}]",
    "spec.servers[0].hosts[0]",
    "short names (non fqdn) are not allowed"
)]
#[case::gw_bad_protocol(
    GW,
    "  servers: [{port: {number: 80, name: http, protocol: FOO}, hosts: ['*']}]",
    "spec.servers[0].port.protocol",
    "invalid protocol"
)]
// Sidecar
#[case::sc_empty(SC, "  workloadSelector: {labels: {app: a}}", "spec", "empty configuration")]
#[case::sc_catch_all_not_last(
    SC,
    "  egress: [{hosts: ['./*']}, {port: {number: 80, name: http, protocol: HTTP}, hosts: ['./*']}]",
    "spec.egress[0].port",
    "should be the last listener"
)]
#[case::sc_egress_host_form(
    SC,
    "  egress: [{hosts: ['reviews.ns.svc.cluster.local']}]",
    "spec.egress[0].hosts[0]",
    "host must be of form namespace/dnsname"
)]
#[case::sc_ingress_without_port(
    SC,
    "  ingress: [{defaultEndpoint: '127.0.0.1:8080'}]",
    "spec.ingress[0].port",
    "port is required"
)]
#[case::sc_bad_default_endpoint(
    SC,
    "  ingress: [{port: {number: 80, name: http, protocol: HTTP}, defaultEndpoint: '10.0.0.1:8080'}]",
    "spec.ingress[0].defaultEndpoint",
    "defaultendpoint must be of form"
)]
#[case::sc_egress_proxy_registry_only(
    SC,
    "  outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: p.com, port: {number: 80}}}",
    "spec.outboundTrafficPolicy.egressProxy",
    "only with allow_any"
)]
// WorkloadEntry
#[case::we_without_spec(WE_WITHOUT_SPEC, "", "spec", "required value")]
#[case::we_uds_directory(WE, "  address: unix:///run/sockets/", "spec.address", "uds may not be a dir")]
#[case::we_uds_relative_path(
    WE,
    "  address: unix://run/app.sock",
    "spec.address",
    "uds must be an absolute path or abstract socket"
)]
#[case::we_uds_with_ports(
    WE,
    "  address: unix://@app\n  ports: {grpc: 9000}",
    "spec.ports",
    "uds may not include ports"
)]
#[case::we_port_out_of_range(
    WE,
    "  address: 10.1.2.3\n  ports: {grpc: 65536}",
    "spec.ports[grpc]",
    "port must be between 1-65535"
)]
#[case::we_bad_port_name(WE, "  address: 10.1.2.3\n  ports: {'!': 9000}", "spec.ports", "port name must be valid")]
#[case::we_no_address(WE, "  labels: {app: a}", "spec.address", "address is required")]
#[case::we_bad_label(WE, "  address: 1.1.1.1\n  labels: {'bad key!': a}", "spec.labels", "invalid tag key")]
// PeerAuthentication
#[case::pa_unknown_mode(PA, "  mtls: {mode: LOOSE}", "spec.mtls.mode", "unsupported value: \"loose\"")]
#[case::pa_port_key_not_a_number(
    PA,
    "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {web: {mode: STRICT}}",
    "spec.portLevelMtls",
    "type conversion error from"
)]
#[case::pa_empty_port_level(
    PA,
    "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {}",
    "spec.portLevelMtls",
    "should have at least 1 properties"
)]
#[case::pa_port_zero(
    PA,
    "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {'0': {mode: DISABLE}}",
    "spec.portLevelMtls[0]",
    "port must be between 1-65535"
)]
#[case::pa_port_level_without_selector(
    PA,
    "  portLevelMtls: {'80': {mode: STRICT}}",
    "spec.portLevelMtls",
    "portlevelmtls requires selector"
)]
#[case::pa_port_out_of_range(
    PA,
    "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {'70000': {mode: STRICT}}",
    "spec.portLevelMtls[70000]",
    "port must be between 1-65535"
)]
// Selectors
#[case::selector_empty_key(
    PA,
    "  selector: {matchLabels: {'': a}}",
    "spec.selector.matchLabels[]",
    "empty key is not supported in selector"
)]
#[case::selector_wildcard(
    SC,
    "  workloadSelector: {labels: {app: '*'}}\n  egress: [{hosts: ['./*']}]",
    "spec.workloadSelector.labels[app]",
    "wildcard is not supported in selector"
)]
fn rule_is_enforced(#[case] head: &str, #[case] body: &str, #[case] field: &str, #[case] message: &str) {
    let diags = checked(&format!("{head}{body}\n"));
    let hit = diags
        .iter()
        .any(|d| d.severity == Severity::Error && d.field == field && d.message.to_lowercase().contains(message));
    assert!(hit, "expected an error at {field:?} containing {message:?}, got {:#?}", diags);
}

/// Valid objects, one rule's edge each (from the corpus: warmup settings, empty or partial
/// selectors, UDS and FQDN addresses, partial wildcards, CIDR addresses without resolution).
#[rstest]
#[case::dr_warmup_duration_only(DR, "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {duration: 90s}}}")]
#[case::dr_warmup_minimum_percent(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {duration: 90s, minimumPercent: 10}}}"
)]
#[case::dr_warmup_all_settings(
    DR,
    "  host: a.com\n  trafficPolicy: {loadBalancer: {warmup: {duration: 90s, minimumPercent: 10, aggression: 2.5}}}"
)]
#[case::dr_http2_keepalive(
    DR,
    "  host: a.com\n  trafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 30s, timeout: 3s}}}}"
)]
#[case::pa_selector_mode_and_port(
    PA,
    "  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {'9000': {mode: PERMISSIVE}}"
)]
#[case::pa_empty_selector(PA, "  selector: {}")]
#[case::se_all_fields(
    SE,
    "  hosts: [api.example.org]\n  workloadSelector: {labels: {app: api}}\n  addresses: [10.9.8.7, 'fd00:10::']\n  exportTo: [other, .]\n  location: MESH_EXTERNAL\n  ports: [{name: web, protocol: HTTP, number: 8080, targetPort: 9090}]\n  subjectAltNames: [api]\n  resolution: DNS"
)]
#[case::se_dns_endpoint(
    SE,
    "  hosts: [api.example.org]\n  endpoints: [{address: backend.example.org}]\n  ports: [{name: web, protocol: HTTP, number: 8080}]\n  resolution: DNS"
)]
#[case::se_empty_selector(SE, "  hosts: [api.example.org]\n  workloadSelector: {}")]
#[case::se_partial_wildcard_host(SE, "  hosts: ['*api']")]
#[case::se_cidr_without_resolution(SE, "  hosts: [api.example.org]\n  addresses: [10.9.0.0/16]")]
#[case::we_all_fields(
    WE,
    "  address: 10.1.2.3\n  serviceAccount: api\n  network: lan\n  labels: {app: api}\n  ports: {web: 8080}\n  weight: 3\n  locality: region/zone/subzone"
)]
#[case::we_network_without_address(WE, "  network: lan")]
#[case::we_uds_abstract(WE, "  address: unix://@api")]
#[case::we_uds_absolute_path(WE, "  address: unix:///run/api.sock")]
#[case::we_fqdn_address(WE, "  address: api.example.org")]
fn valid_object_passes(#[case] head: &str, #[case] body: &str) {
    let diags = checked(&format!("{head}{body}\n"));
    assert!(errors(&diags).is_empty(), "{:#?}", errors(&diags));
}

const VALID: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews, reviews.example.com]
  gateways: [mesh, bookinfo/ingress]
  http:
  - name: canary
    match:
    - uri: {prefix: /api}
      headers: {end-user: {exact: jason}, x-present: {}}
      queryParams: {v: {regex: '\d+'}}
      withoutHeaders: {x-skip: {exact: '1'}}
      method: {exact: GET}
      authority: {prefix: reviews}
      scheme: {exact: http}
      port: 9080
      sourceLabels: {app: productpage}
      sourceNamespace: bookinfo
      ignoreUriCase: true
    rewrite: {uri: /v2/api, authority: reviews-v2}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 80
      headers: {request: {set: {x-canary: 'true'}}, response: {remove: [x-internal]}}
    - destination: {host: reviews, subset: v1}
      weight: 20
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: '5xx,connect-failure,503', retryRemoteLocalities: true}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
    mirror: {host: mirror.bookinfo.svc.cluster.local}
    mirrorPercentage: {value: 25}
    corsPolicy:
      allowOrigins: [{exact: 'https://example.com'}, {regex: 'https://.*\.example\.com'}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: ['*']
      maxAge: 24h
      allowCredentials: true
    headers: {request: {add: {x-from: mesh}}}
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: new.example.com, port: 8443, scheme: https, redirectCode: 308}
  - name: teapot
    match: [{uri: {exact: /tea}}]
    directResponse: {status: 418, body: {string: "I'm a teapot"}}
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
  tcp:
  - match: [{port: 3306, destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: mysql.db.svc.cluster.local, port: {number: 3306}}}]
  exportTo: ['.', other]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        distribute: [{from: 'us-west/zone1/*', to: {'us-west/zone1/*': 80, 'us-west/zone2/*': 20}}]
      warmupDurationSecs: 30s
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 3}}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 3, idleTimeout: 1h, h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 5, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50, minHealthPercent: 10}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 1024}}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egress-tls, namespace: bookinfo}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: ratings}}
  exportTo: ['.']
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client-cred, sni: api.example.com}
    tunnel: {protocol: CONNECT, targetHost: proxy.example.com, targetPort: 3128}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['bookinfo/reviews.example.com', '*.example.com']
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['./reviews.example.com']
    tls: {mode: SIMPLE, credentialName: reviews-cert, minProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]}
  - port: {number: 8443, name: mtls, protocol: HTTPS}
    hosts: ['*/*.example.com']
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [client]}
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ['*.local']
    tls: {mode: AUTO_PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
    connectionPool: {http: {http1MaxPendingRequests: 10}}
  egress:
  - port: {number: 3306, protocol: TCP, name: mysql}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ['db/mysql.db.svc.cluster.local']
  - hosts: ['./*', 'istio-system/*']
  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.istio-system.svc.cluster.local, port: {number: 80}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: bookinfo}
spec:
  hosts: [api.example.com]
  addresses: [240.0.0.1]
  ports: [{number: 443, name: https, protocol: TLS, targetPort: 8443}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{address: a.example.com, ports: {https: 9443}, weight: 2, locality: us/east}]
  exportTo: ['*']
  subjectAltNames: ['spiffe://cluster.local/ns/x/sa/y']
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1, namespace: bookinfo}
spec: {address: 10.0.0.5, labels: {app: reviews}, serviceAccount: reviews, network: vpc1}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls: {'8080': {mode: PERMISSIVE}, '9090': {mode: DISABLE}}
"#;

#[test]
fn full_valid_objects_pass() {
    let diags = diagnostics(VALID);
    assert!(errors(&diags).is_empty(), "{:#?}", errors(&diags));
}

#[test]
fn unreachable_rules_are_warnings() {
    let yaml = format!(
        "{VS}  hosts: [a.com]\n  http:\n  - route: [{{destination: {{host: a.com}}}}]\n  - match: [{{uri: {{prefix: /x}}}}]\n    route: [{{destination: {{host: a.com}}}}]\n  - route: [{{destination: {{host: a.com}}}}]\n"
    );
    let diags = diagnostics(&yaml);
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert!(
        diags.iter().any(|d| d.severity == Severity::Warning
            && d.field == "spec.http[2]"
            && d.message.contains("only the last rule")),
        "{diags:?}"
    );
}

const SET: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews.bookinfo.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: bookinfo}
spec: {hosts: ['*.example.com'], ports: [{name: https, number: 443, protocol: TLS}], resolution: NONE}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: local, namespace: bookinfo}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
"#;

fn set_diagnostics(extra: &str) -> Vec<Diagnostic> {
    let objs = objects(&format!("{SET}---\n{extra}"));
    let refs: Vec<&Object> = objs.iter().collect();
    validate_set(&refs)
}

#[rstest]
#[case::known_host_and_subset(
    "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v1}}]}]",
    None
)]
#[case::wildcard_service_entry_host(
    "  hosts: [api.example.com]\n  http: [{route: [{destination: {host: api.example.com}}]}]",
    None
)]
#[case::unknown_host("  hosts: [reviews]\n  http: [{route: [{destination: {host: ratings}}]}]", Some((Severity::Warning, "spec.http[0].route[0].destination.host", "referenced host not found")))]
#[case::unknown_subset("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v9}}]}]", Some((Severity::Error, "spec.http[0].route[0].destination.subset", "host+subset in destinationrule not found")))]
#[case::unknown_gateway("  hosts: [reviews]\n  gateways: [istio-system/egress]\n  http: [{route: [{destination: {host: reviews}}]}]", Some((Severity::Error, "spec.gateways[0]", "referenced gateway not found")))]
#[case::known_gateway(
    "  hosts: [reviews]\n  gateways: [istio-system/ingress, mesh]\n  http: [{route: [{destination: {host: reviews}}]}]",
    None
)]
#[case::short_gateway_in_own_namespace(
    "  hosts: [reviews]\n  gateways: [local]\n  http: [{route: [{destination: {host: reviews}}]}]",
    None
)]
#[case::relative_gateway_in_own_namespace(
    "  hosts: [reviews]\n  gateways: [./local]\n  http: [{route: [{destination: {host: reviews}}]}]",
    None
)]
#[case::relative_gateway_resolved_against_own_namespace("  hosts: [reviews]\n  gateways: [./ingress]\n  http: [{route: [{destination: {host: reviews}}]}]", Some((Severity::Error, "spec.gateways[0]", "referenced gateway not found: \"bookinfo/ingress\"")))]
#[case::legacy_gateway_name(
    "  hosts: [reviews]\n  gateways: [ingress.istio-system.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews}}]}]",
    None
)]
#[case::match_gateway_relative("  hosts: [reviews]\n  gateways: [local]\n  http: [{match: [{gateways: [./nope]}], route: [{destination: {host: reviews}}]}]", Some((Severity::Error, "spec.http[0].match[0].gateways[0]", "referenced gateway not found: \"bookinfo/nope\"")))]
#[case::unknown_delegate("  hosts: [reviews]\n  http: [{delegate: {name: missing}}]", Some((Severity::Error, "spec.http[0].delegate", "referenced virtual service not found")))]
fn references_are_checked(#[case] body: &str, #[case] want: Option<(Severity, &str, &str)>) {
    let diags = set_diagnostics(&format!("{}{body}\n", VS.replace("namespace: ns", "namespace: bookinfo")));
    match want {
        None => assert!(diags.is_empty(), "{diags:#?}"),
        Some((sev, field, msg)) => assert!(
            diags.iter().any(|d| d.severity == sev && d.field == field && d.message.contains(msg)),
            "expected {sev:?} at {field} containing {msg:?}, got {diags:#?}"
        ),
    }
}

#[test]
fn competing_mesh_virtual_services_warn_on_each() {
    let vs = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bookinfo}}\nspec:\n  hosts: [{host}]\n  http: [{{route: [{{destination: {{host: reviews}}}}]}}]\n"
        )
    };
    let diags = set_diagnostics(&format!(
        "{}---\n{}---\n{}",
        vs("a", "reviews"),
        vs("b", "reviews.bookinfo.svc.cluster.local"),
        vs("c", "other.example.com")
    ));
    let conflicts: Vec<&Diagnostic> = diags.iter().filter(|d| d.message.contains("define the same host")).collect();
    assert_eq!(conflicts.len(), 2, "{diags:#?}");
    assert!(conflicts.iter().all(|d| d.severity == Severity::Warning));
    assert!(conflicts.iter().any(|d| d.object == "VirtualService bookinfo/a"));
    assert!(conflicts.iter().any(|d| d.object == "VirtualService bookinfo/b"));
}
