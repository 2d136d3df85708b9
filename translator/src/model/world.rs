//! Assembling a [`World`] from typed objects.
//!
//! Kubernetes Services (with EndpointSlices, or Pods when no slice exists) and Istio ServiceEntries
//! become [`Service`]s, one per hostname, sorted by hostname. Istio objects are first checked with
//! Istio's own validation rules ([`crate::validate::validate_object`]): an object with errors is
//! skipped and its diagnostics returned, as Istio's admission webhook would have refused it.
//! Routing and policy objects are normalized and indexed into [`World::config`] (oldest first).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::istio::{
    DestinationRule, Gateway, PeerAuthentication, SeLocation, SeResolution, ServiceEntry, Sidecar, VirtualService,
    WorkloadEntry, WorkloadEntrySpec,
};
use crate::api::{DEFAULT_NAMESPACE, Object};
use crate::diag::{Diagnostic, Severity};
use crate::validate::validate_object;

use super::config::{
    Config, ConfigMeta, DestinationRuleConfig, ExportTo, GatewayConfig, SidecarConfig, VirtualServiceConfig,
    WorkloadEntryConfig, merge_delegates, normalize_gateway, normalize_virtual_service,
};
use super::host::{MESH_GATEWAY, resolve_short_name};
use super::{
    CLUSTER_DOMAIN, Endpoint, Labels, Location, MeshConfig, Protocol, Resolution, Service, ServiceOrigin, ServicePort,
    Workload, World,
};

/// Label on an EndpointSlice naming the Service it belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Pod label Istio reads a locality override from (`region.zone.subzone`).
const LOCALITY_LABEL: &str = "istio-locality";

/// Label marking a workload that terminates Istio mTLS (added by sidecar injection).
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Builds the world from every object of every source. Objects that cannot be used become
/// diagnostics; the rest is still assembled.
pub fn build_world<'a>(objects: impl IntoIterator<Item = &'a Object>, mesh: &MeshConfig) -> (World, Vec<Diagnostic>) {
    let mut b = Builder::new(mesh);
    for o in objects {
        b.collect(o);
    }
    b.finish()
}

/// A pod as the world builder needs it.
struct PodInfo {
    workload: Workload,
    ready: bool,
    locality: Option<String>,
}

struct Builder<'m> {
    mesh: &'m MeshConfig,
    diags: Vec<Diagnostic>,
    namespaces: BTreeMap<String, Labels>,
    services: Vec<&'m core::Service>,
    slices: Vec<&'m discovery::EndpointSlice>,
    pods: Vec<&'m core::Pod>,
    entries: Vec<&'m ServiceEntry>,
    workload_entries: Vec<&'m WorkloadEntry>,
    virtual_services: Vec<&'m VirtualService>,
    destination_rules: Vec<&'m DestinationRule>,
    gateways: Vec<&'m Gateway>,
    sidecars: Vec<&'m Sidecar>,
    peer_authentications: Vec<&'m PeerAuthentication>,
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// `(namespace, name)` borrowed, for sorting without allocating.
fn key_of(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn created_of(meta: &ObjectMeta) -> String {
    meta.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
}

/// `(created, namespace, name)`: the order istiod resolves conflicts in (oldest first).
fn meta_of(meta: &ObjectMeta) -> ConfigMeta {
    ConfigMeta { created: created_of(meta), namespace: ns_of(meta), name: name_of(meta) }
}

/// `Kind namespace/name`, as diagnostics name objects.
fn object_name(kind: &str, meta: &ObjectMeta) -> String {
    format!("{kind} {}/{}", ns_of(meta), name_of(meta))
}

/// Whether `labels` carries every key/value of `selector`. An empty selector selects nothing
/// (Kubernetes: a Service without selector has manually managed endpoints).
fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The SPIFFE identity of a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn port_u16(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

impl<'m> Builder<'m> {
    fn new(mesh: &'m MeshConfig) -> Self {
        Builder {
            mesh,
            diags: Vec::new(),
            namespaces: BTreeMap::new(),
            services: Vec::new(),
            slices: Vec::new(),
            pods: Vec::new(),
            entries: Vec::new(),
            workload_entries: Vec::new(),
            virtual_services: Vec::new(),
            destination_rules: Vec::new(),
            gateways: Vec::new(),
            sidecars: Vec::new(),
            peer_authentications: Vec::new(),
        }
    }

    /// Istio's webhook would refuse an object with errors: skip it and report why.
    fn valid(&mut self, o: &Object) -> bool {
        let diags = validate_object(o);
        if diags.iter().any(|d| d.severity == Severity::Error) {
            self.diags.extend(diags);
            return false;
        }
        true
    }

    fn collect(&mut self, o: &'m Object) {
        match o {
            Object::Namespace(n) => {
                self.namespaces.insert(name_of(&n.metadata), n.metadata.labels.clone().unwrap_or_default());
            }
            Object::Service(s) => self.services.push(s),
            Object::EndpointSlice(s) => self.slices.push(s),
            Object::Pod(p) => self.pods.push(p),
            Object::Secret(_) | Object::ConfigMap(_) => {}
            Object::ServiceEntry(se) if self.valid(o) => self.entries.push(se),
            Object::WorkloadEntry(we) if self.valid(o) => self.workload_entries.push(we),
            Object::VirtualService(vs) if self.valid(o) => self.virtual_services.push(vs),
            Object::DestinationRule(dr) if self.valid(o) => self.destination_rules.push(dr),
            Object::Gateway(gw) if self.valid(o) => self.gateways.push(gw),
            Object::Sidecar(sc) if self.valid(o) => self.sidecars.push(sc),
            Object::PeerAuthentication(pa) if self.valid(o) => self.peer_authentications.push(pa),
            // Invalid Istio objects: already reported by `valid`.
            _ => {}
        }
    }

    fn finish(mut self) -> (World, Vec<Diagnostic>) {
        // Stable processing order regardless of the order files were read in.
        self.services.sort_by(|a, b| key_of(&a.metadata).cmp(&key_of(&b.metadata)));
        self.slices.sort_by(|a, b| key_of(&a.metadata).cmp(&key_of(&b.metadata)));
        self.pods.sort_by(|a, b| key_of(&a.metadata).cmp(&key_of(&b.metadata)));
        self.entries.sort_by(|a, b| key_of(&a.metadata).cmp(&key_of(&b.metadata)));

        let config = self.config();
        let pods = self.pod_infos();
        let by_ip: HashMap<&str, &PodInfo> =
            pods.values().flat_map(|p| p.workload.ips.iter().map(move |ip| (ip.as_str(), p))).collect();
        let mut slices_by_service: HashMap<(String, String), Vec<&discovery::EndpointSlice>> = HashMap::new();
        for s in &self.slices {
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                slices_by_service.entry((ns_of(&s.metadata), svc.clone())).or_default().push(s);
            }
        }

        let mut kube: Vec<Service> = Vec::new();
        for svc in std::mem::take(&mut self.services) {
            let key = (ns_of(&svc.metadata), name_of(&svc.metadata));
            let slices = slices_by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            if let Some(s) = self.kube_service(svc, slices, &pods, &by_ip, &config) {
                kube.push(s);
            }
        }

        let mut from_entries: Vec<Service> = Vec::new();
        for se in std::mem::take(&mut self.entries) {
            from_entries.extend(self.service_entry(se, &pods, &config));
        }

        // One service per host. A Kubernetes Service wins over a ServiceEntry; between entries the
        // oldest wins (then namespace/name), as Istio resolves conflicting declarations.
        let mut by_host: BTreeMap<String, Service> = BTreeMap::new();
        for s in kube {
            by_host.insert(s.hostname.clone(), s);
        }
        from_entries.sort_by(|a, b| (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name)));
        for s in from_entries {
            let object = format!("ServiceEntry {}/{}", s.namespace, s.name);
            match by_host.get(&s.hostname) {
                Some(existing) if existing.origin == ServiceOrigin::Kubernetes => {
                    self.diags.push(Diagnostic::warning(
                        object,
                        "spec.hosts",
                        format!(
                            "host {} is also the Kubernetes Service {}/{}; the Service wins",
                            s.hostname, existing.namespace, existing.name
                        ),
                    ));
                }
                Some(existing) => {
                    self.diags.push(Diagnostic::warning(
                        object,
                        "spec.hosts",
                        format!(
                            "host {} is already declared by ServiceEntry {}/{}; the older declaration wins",
                            s.hostname, existing.namespace, existing.name
                        ),
                    ));
                }
                None => {
                    by_host.insert(s.hostname.clone(), s);
                }
            }
        }

        for s in by_host.values_mut() {
            super::mtls::mark_disabled_endpoints(s, &config, &self.mesh.root_namespace);
        }
        let world = World {
            mesh: self.mesh.clone(),
            services: by_host.into_values().map(Arc::new).collect(),
            namespaces: self.namespaces,
            workloads: pods.into_iter().map(|(k, p)| (k, p.workload)).collect(),
            config,
        };
        (world, self.diags)
    }

    /// Routing and policy objects, normalized, oldest first (ties by namespace/name), indexed.
    fn config(&mut self) -> Config {
        let mut virtual_services: Vec<VirtualServiceConfig> = self
            .virtual_services
            .iter()
            .map(|vs| {
                let meta = meta_of(&vs.metadata);
                let mut spec = vs.spec.clone();
                normalize_virtual_service(&mut spec, &meta.namespace);
                let gateways =
                    if spec.gateways.is_empty() { vec![MESH_GATEWAY.to_string()] } else { spec.gateways.clone() };
                VirtualServiceConfig {
                    export_to: ExportTo::parse(&spec.export_to, &meta.namespace),
                    meta,
                    spec,
                    gateways,
                }
            })
            .collect();
        virtual_services.sort_by(|a, b| a.meta.cmp(&b.meta));
        let mut destination_rules: Vec<DestinationRuleConfig> = self
            .destination_rules
            .iter()
            .map(|dr| {
                let meta = meta_of(&dr.metadata);
                DestinationRuleConfig {
                    host: resolve_short_name(&dr.spec.host, &meta.namespace),
                    export_to: ExportTo::parse(&dr.spec.export_to, &meta.namespace),
                    selector: dr.spec.workload_selector.as_ref().map(|s| s.match_labels.clone()),
                    spec: dr.spec.clone(),
                    meta,
                }
            })
            .collect();
        destination_rules.sort_by(|a, b| a.meta.cmp(&b.meta));
        let mut gateways: Vec<GatewayConfig> = self
            .gateways
            .iter()
            .map(|g| {
                let meta = meta_of(&g.metadata);
                let mut spec = g.spec.clone();
                normalize_gateway(&mut spec, &meta.namespace);
                GatewayConfig { meta, spec }
            })
            .collect();
        gateways.sort_by(|a, b| a.meta.cmp(&b.meta));
        let mut sidecars: Vec<SidecarConfig> =
            self.sidecars.iter().map(|s| SidecarConfig { meta: meta_of(&s.metadata), spec: s.spec.clone() }).collect();
        sidecars.sort_by(|a, b| a.meta.cmp(&b.meta));
        let mut workload_entries: Vec<WorkloadEntryConfig> = self
            .workload_entries
            .iter()
            .map(|w| WorkloadEntryConfig { meta: meta_of(&w.metadata), spec: w.spec.clone() })
            .collect();
        workload_entries.sort_by(|a, b| a.meta.cmp(&b.meta));
        let mut peer_authentications: Vec<&PeerAuthentication> = self.peer_authentications.clone();
        peer_authentications.sort_by_cached_key(|p| meta_of(&p.metadata));

        let mut config = Config {
            virtual_services: merge_delegates(virtual_services).into_iter().map(Arc::new).collect(),
            destination_rules: destination_rules.into_iter().map(Arc::new).collect(),
            gateways: gateways.into_iter().map(Arc::new).collect(),
            sidecars: sidecars.into_iter().map(Arc::new).collect(),
            workload_entries: workload_entries.into_iter().map(Arc::new).collect(),
            peer_authentications: peer_authentications.into_iter().map(|p| Arc::new(p.clone())).collect(),
            index: Default::default(),
        };
        config.reindex();
        config
    }

    /// Pods by `namespace/name`, with what endpoints need from them.
    fn pod_infos(&self) -> BTreeMap<String, PodInfo> {
        let mut out = BTreeMap::new();
        for pod in &self.pods {
            let namespace = ns_of(&pod.metadata);
            let name = name_of(&pod.metadata);
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let spec = pod.spec.as_ref();
            let status = pod.status.as_ref();
            let mut ips: Vec<String> = Vec::new();
            if let Some(st) = status {
                if let Some(ip) = st.pod_ip.as_ref().filter(|ip| !ip.is_empty()) {
                    ips.push(ip.clone());
                }
                for ip in st.pod_ips.iter().flatten() {
                    if !ip.ip.is_empty() && !ips.contains(&ip.ip) {
                        ips.push(ip.ip.clone());
                    }
                }
            }
            let mut named_ports = BTreeMap::new();
            for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
                for p in c.ports.iter().flatten() {
                    if let (Some(n), Some(port)) = (p.name.as_ref(), port_u16(i64::from(p.container_port))) {
                        named_ports.entry(n.clone()).or_insert(port);
                    }
                }
            }
            let service_account = spec
                .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
                .unwrap_or_else(|| "default".to_string());
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Running");
            let ready_condition = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True");
            // A pod written by hand without status is taken as running and ready, so a plain
            // directory of Services and Pods works; a reported phase or Ready condition is honoured.
            let ready = !terminating && phase == "Running" && ready_condition.unwrap_or(true);
            let locality = labels.get(LOCALITY_LABEL).map(|l| l.replace('.', "/"));
            out.insert(
                format!("{namespace}/{name}"),
                PodInfo {
                    workload: Workload { name, namespace, ips, labels, service_account, named_ports },
                    ready,
                    locality,
                },
            );
        }
        out
    }

    fn kube_service(
        &mut self,
        svc: &core::Service,
        slices: &[&discovery::EndpointSlice],
        pods: &BTreeMap<String, PodInfo>,
        by_ip: &HashMap<&str, &PodInfo>,
        config: &Config,
    ) -> Option<Service> {
        let object = object_name("Service", &svc.metadata);
        let namespace = ns_of(&svc.metadata);
        let name = name_of(&svc.metadata);
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            self.diags.push(Diagnostic::warning(
                object,
                "spec.type",
                "ExternalName services are not supported yet; the service is skipped",
            ));
            return None;
        }
        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if !proto.eq_ignore_ascii_case("TCP") {
                // Istio builds nothing for UDP/SCTP ports; Envoy sidecars only proxy TCP.
                continue;
            }
            let Some(number) = port_u16(i64::from(p.port)) else {
                self.diags.push(Diagnostic::error(
                    &object,
                    format!("spec.ports[{i}].port"),
                    format!("port {} is outside 1-65535; the port is skipped", p.port),
                ));
                continue;
            };
            if !seen.insert(number) {
                self.diags.push(Diagnostic::error(
                    &object,
                    format!("spec.ports[{i}].port"),
                    format!("duplicate port {number}; the port is skipped"),
                ));
                continue;
            }
            let port_name = p.name.clone().unwrap_or_default();
            let (target_port, target_port_name) = match &p.target_port {
                None => (None, None),
                Some(IntOrString::Int(t)) => match port_u16(i64::from(*t)) {
                    Some(t) => (Some(t), None),
                    None => {
                        self.diags.push(Diagnostic::error(
                            &object,
                            format!("spec.ports[{i}].targetPort"),
                            format!("target port {t} is outside 1-65535; the port is skipped"),
                        ));
                        continue;
                    }
                },
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(t) if t != 0 => (Some(t), None),
                    _ => (None, Some(s.clone())),
                },
            };
            ports.push(ServicePort {
                protocol: Protocol::infer(&port_name, p.app_protocol.as_deref(), number),
                name: port_name,
                port: number,
                target_port,
                target_port_name,
            });
        }

        let headless = spec.cluster_ip.as_deref() == Some("None");
        let addresses: Vec<String> = if headless {
            Vec::new()
        } else {
            let mut a: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
            if a.is_empty() {
                a.extend(spec.cluster_ip.clone());
            }
            a.into_iter().filter(|ip| is_ip(ip)).collect()
        };
        let selector = spec.selector.clone().filter(|s| !s.is_empty());

        let mut endpoints = if !slices.is_empty() {
            endpoints_from_slices(&ports, slices, pods, by_ip, &namespace)
        } else if let Some(sel) = &selector {
            endpoints_from_pods(&ports, sel, pods, &namespace)
        } else {
            Vec::new()
        };
        // A Service selector also selects WorkloadEntries of its namespace (istiod's
        // PILOT_ENABLE_K8S_SELECT_WORKLOAD_ENTRIES, on by default): VMs behind a Kubernetes Service.
        if let Some(sel) = &selector {
            let mut from_entries: Vec<Endpoint> = config
                .workload_entries_in(&namespace)
                .filter(|we| selects(sel, &we.spec.labels))
                .map(|we| {
                    let mut e = endpoint_from_entry(&we.spec, &namespace);
                    // Kubernetes endpoints list every served port explicitly.
                    e.ports = ports
                        .iter()
                        .filter_map(|sp| {
                            let named = |n: &str| we.spec.ports.get(n).and_then(|p| port_u16(i64::from(*p)));
                            let p = named(&sp.name)
                                .or_else(|| sp.target_port_name.as_deref().and_then(named))
                                .or(sp.target_port)
                                .or(sp.target_port_name.is_none().then_some(sp.port))?;
                            Some((sp.key(), p))
                        })
                        .collect();
                    e
                })
                .filter(|e| !endpoints.iter().any(|x| x.address == e.address))
                .collect();
            if !from_entries.is_empty() {
                endpoints.append(&mut from_entries);
                endpoints.sort_by(|a, b| a.address.cmp(&b.address));
            }
        }
        let service_accounts = endpoints
            .iter()
            .filter_map(|e| e.service_account.as_ref().map(|sa| spiffe_id(&self.mesh.trust_domain, &e.namespace, sa)))
            .collect();

        Some(Service {
            hostname: format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}"),
            namespace,
            name,
            addresses,
            ports,
            resolution: if headless { Resolution::Passthrough } else { Resolution::Static },
            location: Location::MeshInternal,
            origin: ServiceOrigin::Kubernetes,
            selector,
            endpoints,
            service_accounts,
            export_to: export_to_of(svc.metadata.annotations.as_ref(), &ns_of(&svc.metadata)),
            created: created_of(&svc.metadata),
        })
    }

    /// Services of a (validated) ServiceEntry, one per host. Endpoints come from `endpoints`, or
    /// from the Pods and WorkloadEntries of its namespace its `workloadSelector` selects.
    fn service_entry(&mut self, se: &ServiceEntry, pods: &BTreeMap<String, PodInfo>, config: &Config) -> Vec<Service> {
        let namespace = ns_of(&se.metadata);
        let spec = &se.spec;
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .filter_map(|p| {
                let number = port_u16(i64::from(p.number))?;
                let protocol = match p.protocol.as_deref().filter(|s| !s.is_empty()) {
                    // Protocols Envoy sidecars do not proxy (UDP) build nothing, as in istiod.
                    Some(s) => Protocol::parse(s)?,
                    None => Protocol::infer(&p.name, None, number),
                };
                Some(ServicePort {
                    name: p.name.clone(),
                    port: number,
                    protocol,
                    target_port: p.target_port.and_then(|t| port_u16(i64::from(t))),
                    target_port_name: None,
                })
            })
            .collect();

        let td = &self.mesh.trust_domain;
        let mut endpoints: Vec<Endpoint> = if let Some(ws) = &spec.workload_selector {
            let mut eps: Vec<Endpoint> = endpoints_from_pods(&ports, &ws.labels, pods, &namespace)
                .into_iter()
                .map(|mut e| {
                    // A ServiceEntry selecting pods reaches them on the target port (or service port).
                    e.ports = ports.iter().map(|p| (p.key(), p.target_port.unwrap_or(p.port))).collect();
                    e
                })
                .collect();
            eps.extend(
                config
                    .workload_entries_in(&namespace)
                    .filter(|we| selects(&ws.labels, &we.spec.labels))
                    .map(|we| endpoint_from_entry(&we.spec, &namespace)),
            );
            eps
        } else {
            spec.endpoints.iter().map(|e| endpoint_from_entry(e, &namespace)).collect()
        };
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        let mut service_accounts: BTreeSet<String> = spec.subject_alt_names.iter().cloned().collect();
        service_accounts.extend(
            endpoints.iter().filter_map(|e| e.service_account.as_ref().map(|sa| spiffe_id(td, &e.namespace, sa))),
        );
        let export_to = spec
            .export_to
            .iter()
            .map(|e| if e == "." { namespace.clone() } else { e.clone() })
            .collect::<BTreeSet<_>>();
        let resolution = match spec.resolution.unwrap_or(SeResolution::None) {
            SeResolution::None => Resolution::Passthrough,
            SeResolution::Static => Resolution::Static,
            SeResolution::Dns => Resolution::Dns,
            SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        };
        let location = match spec.location {
            Some(SeLocation::MeshInternal) => Location::MeshInternal,
            // Istio's default for ServiceEntry is MESH_EXTERNAL.
            Some(SeLocation::MeshExternal) | None => Location::MeshExternal,
        };
        let mut hosts: Vec<String> = spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
            .into_iter()
            .map(|hostname| Service {
                hostname,
                namespace: namespace.clone(),
                name: name_of(&se.metadata),
                addresses: spec.addresses.clone(),
                ports: ports.clone(),
                resolution,
                location,
                origin: ServiceOrigin::ServiceEntry,
                selector: spec.workload_selector.as_ref().map(|w| w.labels.clone()),
                endpoints: endpoints.clone(),
                service_accounts: service_accounts.clone(),
                export_to: export_to.clone(),
                created: created_of(&se.metadata),
            })
            .collect()
    }
}

/// An endpoint from a ServiceEntry `endpoints` entry or a selected WorkloadEntry. As istiod does,
/// an entry with a service account but no `security.istio.io/tlsMode` label is taken to run a
/// sidecar (Istio mTLS).
fn endpoint_from_entry(e: &WorkloadEntrySpec, namespace: &str) -> Endpoint {
    let mut labels = e.labels.clone();
    if !e.service_account.is_empty() && !labels.contains_key(TLS_MODE_LABEL) {
        labels.insert(TLS_MODE_LABEL.to_string(), "istio".to_string());
    }
    Endpoint {
        address: e.address.clone(),
        ports: e.ports.iter().filter_map(|(n, p)| port_u16(i64::from(*p)).map(|p| (n.clone(), p))).collect(),
        labels,
        service_account: Some(e.service_account.clone()).filter(|s| !s.is_empty()),
        namespace: namespace.to_string(),
        weight: e.weight,
        locality: Some(e.locality.clone()).filter(|l| !l.is_empty()),
        ready: true,
        mtls_disabled_ports: Default::default(),
    }
}

/// `networking.istio.io/exportTo` annotation on a Kubernetes Service (comma separated).
fn export_to_of(annotations: Option<&BTreeMap<String, String>>, namespace: &str) -> BTreeSet<String> {
    annotations
        .and_then(|a| a.get("networking.istio.io/exportTo"))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| if s == "." { namespace.to_string() } else { s.to_string() })
                .collect()
        })
        .unwrap_or_default()
}

/// Copies pod facts onto an endpoint.
fn endpoint_for_pod(address: String, pod: Option<&PodInfo>, namespace: &str) -> Endpoint {
    Endpoint {
        address,
        ports: BTreeMap::new(),
        labels: pod.map(|p| p.workload.labels.clone()).unwrap_or_default(),
        service_account: pod.map(|p| p.workload.service_account.clone()),
        namespace: pod.map_or_else(|| namespace.to_string(), |p| p.workload.namespace.clone()),
        weight: 0,
        locality: pod.and_then(|p| p.locality.clone()),
        ready: true,
        mtls_disabled_ports: Default::default(),
    }
}

fn endpoints_from_slices(
    ports: &[ServicePort],
    slices: &[&discovery::EndpointSlice],
    pods: &BTreeMap<String, PodInfo>,
    by_ip: &HashMap<&str, &PodInfo>,
    namespace: &str,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        // EndpointSlice ports carry the Service port's name; map them to our port keys.
        let mut served: Vec<(String, u16)> = Vec::new();
        for sp in slice.ports.iter().flatten() {
            let name = sp.name.clone().unwrap_or_default();
            let Some(port) = sp.port.and_then(|p| port_u16(i64::from(p))) else { continue };
            if let Some(svc_port) = ports.iter().find(|p| p.name == name) {
                served.push((svc_port.key(), port));
            }
        }
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let by_ref = ep.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
                pods.get(&format!("{ns}/{}", r.name.clone().unwrap_or_default()))
            });
            for address in &ep.addresses {
                let pod = by_ref.or_else(|| by_ip.get(address.as_str()).copied());
                let e = out.entry(address.clone()).or_insert_with(|| endpoint_for_pod(address.clone(), pod, namespace));
                e.ready = ready;
                for (k, p) in &served {
                    e.ports.insert(k.clone(), *p);
                }
            }
        }
    }
    out.into_values().collect()
}

fn endpoints_from_pods(
    ports: &[ServicePort],
    selector: &Labels,
    pods: &BTreeMap<String, PodInfo>,
    namespace: &str,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
    // Pods are keyed `namespace/name`: only this namespace's range is scanned.
    let prefix = format!("{namespace}/");
    let in_namespace = pods
        .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, p)| p);
    for pod in in_namespace {
        if pod.workload.namespace != namespace || !selects(selector, &pod.workload.labels) {
            continue;
        }
        let Some(ip) = pod.workload.ips.first() else { continue };
        let mut e = endpoint_for_pod(ip.clone(), Some(pod), namespace);
        e.ready = pod.ready;
        for sp in ports {
            let port = match (&sp.target_port_name, sp.target_port) {
                (Some(name), _) => pod.workload.named_ports.get(name).copied(),
                (None, Some(t)) => Some(t),
                (None, None) => Some(sp.port),
            };
            if let Some(p) = port {
                e.ports.insert(sp.key(), p);
            }
        }
        out.insert(ip.clone(), e);
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;
    use serde_json::json;

    use super::*;
    use crate::api::parse_object;

    fn objects(docs: Vec<serde_json::Value>) -> Vec<Object> {
        docs.into_iter().map(|d| parse_object(d).unwrap()).collect()
    }

    fn world(docs: Vec<serde_json::Value>) -> (World, Vec<Diagnostic>) {
        let objs = objects(docs);
        build_world(&objs, &MeshConfig::default())
    }

    fn mk_service(name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn mk_pod(name: &str, ip: &str, labels: serde_json::Value, ports: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"serviceAccountName": "sa-".to_string() + name, "containers": [{"name": "app", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running"}})
    }

    fn mk_service_entry(name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn kubernetes_service_with_pods_and_named_target_port() {
        let (w, d) = world(vec![
            mk_service(
                "reviews",
                json!({"clusterIP": "10.0.0.5", "selector": {"app": "reviews"},
                "ports": [{"name": "http", "port": 9080, "targetPort": "web"}, {"name": "grpc-x", "port": 7070, "targetPort": 7071}]}),
            ),
            mk_pod("r1", "10.1.0.2", json!({"app": "reviews"}), json!([{"name": "web", "containerPort": 8080}])),
            mk_pod("r2", "10.1.0.3", json!({"app": "reviews"}), json!([{"name": "web", "containerPort": 8081}])),
            mk_pod("other", "10.1.0.9", json!({"app": "ratings"}), json!([])),
        ]);
        assert!(d.is_empty(), "{d:?}");
        let s = w.service("reviews.default.svc.cluster.local").unwrap();
        assert_eq!(s.addresses, vec!["10.0.0.5"]);
        assert_eq!(s.resolution, Resolution::Static);
        assert_eq!(s.ports[0].protocol, Protocol::Http);
        assert_eq!(s.ports[0].target_port_name.as_deref(), Some("web"));
        assert_eq!(s.ports[1].protocol, Protocol::Grpc);
        let eps: Vec<_> = s.endpoints.iter().map(|e| (e.address.as_str(), e.ports.get("http").copied())).collect();
        assert_eq!(eps, vec![("10.1.0.2", Some(8080)), ("10.1.0.3", Some(8081))]);
        assert_eq!(s.endpoints[0].ports.get("grpc-x"), Some(&7071));
        assert_eq!(
            s.service_accounts.iter().cloned().collect::<Vec<_>>(),
            vec!["spiffe://cluster.local/ns/default/sa/sa-r1", "spiffe://cluster.local/ns/default/sa/sa-r2"]
        );
        assert_eq!(w.workloads.len(), 3);
    }

    #[test]
    fn endpoint_slices_win_over_pod_selection() {
        let (w, _) = world(vec![
            mk_service(
                "db",
                json!({"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432}]}),
            ),
            mk_pod("db-0", "10.1.0.7", json!({"app": "db", "security.istio.io/tlsMode": "istio"}), json!([])),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 5433}],
            "endpoints": [
                {"addresses": ["10.1.0.7"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.8"], "conditions": {"ready": false}}
            ]}),
        ]);
        let s = w.service("db.default.svc.cluster.local").unwrap();
        assert_eq!(s.resolution, Resolution::Passthrough);
        assert!(s.addresses.is_empty());
        assert_eq!(s.endpoints.len(), 2);
        // The pod is found by IP: labels and service account come from it.
        assert!(s.endpoints[0].has_sidecar());
        assert_eq!(s.endpoints[0].service_account.as_deref(), Some("sa-db-0"));
        assert_eq!(s.endpoints[0].ports.get("tcp"), Some(&5433));
        assert!(s.endpoints[0].ready);
        assert!(!s.endpoints[1].ready);
        assert!(s.endpoints[1].service_account.is_none());
    }

    #[test]
    fn service_entry_hosts_ports_and_defaults() {
        let (w, d) = world(vec![mk_service_entry(
            "ext",
            json!({
            "hosts": ["api.example.com", "b.example.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}, {"number": 80, "name": "web", "protocol": "HTTP"}],
            "resolution": "DNS", "exportTo": ["."], "subjectAltNames": ["spiffe://x/y"]}),
        )]);
        assert!(d.is_empty(), "{d:?}");
        let s = w.service("api.example.com").unwrap();
        assert_eq!(s.resolution, Resolution::Dns);
        assert_eq!(s.location, Location::MeshExternal);
        assert_eq!(s.ports[0].protocol, Protocol::Tls);
        assert_eq!(s.ports[1].protocol, Protocol::Http);
        assert!(s.visible_from("default") && !s.visible_from("other"));
        assert!(s.service_accounts.contains("spiffe://x/y"));
        assert!(w.service("b.example.com").is_some());
        assert_eq!(w.services.len(), 2);
    }

    #[rstest]
    #[case::no_hosts(json!({"ports": [{"number": 80, "name": "http"}]}), "spec.hosts")]
    #[case::wildcard_host(json!({"hosts": ["*"]}), "spec.hosts[0]")]
    #[case::duplicate_number(json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]}), "spec.ports[1].number")]
    #[case::duplicate_name(json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "a"}, {"number": 81, "name": "a"}]}), "spec.ports[1].name")]
    #[case::bad_port(json!({"hosts": ["a.com"], "ports": [{"number": 99999, "name": "a"}]}), "spec.ports[0].number")]
    #[case::bad_target_port(json!({"hosts": ["a.com"], "ports": [{"number": 1, "name": "a", "targetPort": 99999}]}), "spec.ports[0].targetPort")]
    #[case::cidr_dns(json!({"hosts": ["a.com"], "addresses": ["1.2.3.4/16"], "resolution": "DNS"}), "spec.addresses")]
    #[case::none_with_endpoints(json!({"hosts": ["a.com"], "endpoints": [{"address": "1.2.3.4"}], "resolution": "NONE"}), "spec.endpoints")]
    #[case::dns_rr_many(json!({"hosts": ["a.com"], "resolution": "DNS_ROUND_ROBIN", "endpoints": [{"address": "a"}, {"address": "b"}]}), "spec.endpoints")]
    #[case::selector_and_endpoints(json!({"hosts": ["a.com"], "resolution": "STATIC", "workloadSelector": {"labels": {"a": "b"}}, "endpoints": [{"address": "1.2.3.4"}]}), "spec")]
    #[case::selector_wildcard(json!({"hosts": ["a.com"], "workloadSelector": {"labels": {"val": "*"}}}), "spec.workloadSelector.labels[val]")]
    #[case::unknown_endpoint_port(json!({"hosts": ["a.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}], "endpoints": [{"address": "1.2.3.4", "ports": {"htp": 8080}}]}), "spec.endpoints[0].ports[htp]")]
    #[case::static_hostname(json!({"hosts": ["a.com"], "resolution": "STATIC", "endpoints": [{"address": "foo.com"}]}), "spec.endpoints[0].address")]
    #[case::unknown_protocol(json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "a", "protocol": "FTP"}]}), "spec.ports[0].protocol")]
    fn invalid_service_entries_are_skipped_with_a_field_path(#[case] spec: serde_json::Value, #[case] field: &str) {
        let (w, d) = world(vec![mk_service_entry("bad", spec)]);
        assert!(w.services.is_empty());
        assert!(d.iter().any(|d| d.field == field && d.object == "ServiceEntry default/bad"), "{d:#?}");
    }

    #[test]
    fn kubernetes_service_wins_over_service_entry() {
        let (w, d) = world(vec![
            mk_service("reviews", json!({"clusterIP": "10.0.0.5", "ports": [{"name": "http", "port": 9080}]})),
            mk_service_entry(
                "dup",
                json!({"hosts": ["reviews.default.svc.cluster.local"], "ports": [{"number": 80, "name": "http"}]}),
            ),
        ]);
        assert_eq!(w.services.len(), 1);
        assert_eq!(w.services[0].origin, ServiceOrigin::Kubernetes);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].severity, crate::diag::Severity::Warning);
        assert_eq!(d[0].object, "ServiceEntry default/dup");
    }

    #[test]
    fn service_entry_selects_pods() {
        let (w, _) = world(vec![
            mk_service_entry(
                "vm",
                json!({"hosts": ["vm.internal"], "resolution": "STATIC", "location": "MESH_INTERNAL",
                "ports": [{"number": 80, "name": "http", "targetPort": 8080}], "workloadSelector": {"labels": {"app": "vm"}}}),
            ),
            mk_pod("vm-1", "10.2.0.1", json!({"app": "vm"}), json!([])),
        ]);
        let s = w.service("vm.internal").unwrap();
        assert_eq!(s.location, Location::MeshInternal);
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoint_port(&s.endpoints[0], &s.ports[0]), Some(8080));
    }

    #[test]
    fn service_entry_selects_workload_entries_of_its_namespace() {
        let (w, d) = world(vec![
            mk_service_entry(
                "vm",
                json!({"hosts": ["vm.internal"], "resolution": "STATIC", "location": "MESH_INTERNAL",
                "ports": [{"number": 80, "name": "http", "targetPort": 8080}], "workloadSelector": {"labels": {"app": "vm"}}}),
            ),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "vm-1", "namespace": "default"},
                "spec": {"address": "10.9.0.1", "labels": {"app": "vm"}, "serviceAccount": "vm-sa", "ports": {"http": 9090}}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "vm-other-ns", "namespace": "other"},
                "spec": {"address": "10.9.0.2", "labels": {"app": "vm"}}}),
            mk_pod("vm-pod", "10.2.0.1", json!({"app": "vm"}), json!([])),
        ]);
        assert!(d.is_empty(), "{d:?}");
        let s = w.service("vm.internal").unwrap();
        let eps: Vec<_> = s.endpoints.iter().map(|e| (e.address.as_str(), s.endpoint_port(e, &s.ports[0]))).collect();
        assert_eq!(eps, vec![("10.2.0.1", Some(8080)), ("10.9.0.1", Some(9090))]);
        // A WorkloadEntry with a service account is taken to run a sidecar.
        assert!(s.endpoints[1].has_sidecar());
        assert!(s.service_accounts.contains("spiffe://cluster.local/ns/default/sa/vm-sa"));
        assert_eq!(w.config.workload_entries.len(), 2);
    }

    #[test]
    fn kubernetes_service_selects_workload_entries() {
        let (w, d) = world(vec![
            mk_service(
                "vm-backed",
                json!({"clusterIP": "10.0.0.9", "selector": {"app": "legacy"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
            ),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "vm", "namespace": "default"},
                "spec": {"address": "10.9.0.7", "labels": {"app": "legacy"}}}),
        ]);
        assert!(d.is_empty(), "{d:?}");
        let s = w.service("vm-backed.default.svc.cluster.local").unwrap();
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoint_port(&s.endpoints[0], &s.ports[0]), Some(8080));
        assert!(!s.endpoints[0].has_sidecar());
    }

    #[test]
    fn invalid_istio_objects_are_skipped_and_valid_ones_kept_oldest_first() {
        let vs = |name: &str, created: &str, spec: serde_json::Value| {
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created}, "spec": spec})
        };
        let route = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        let (w, d) = world(vec![
            vs("newer", "2024-02-01T00:00:00Z", route.clone()),
            vs("older", "2024-01-01T00:00:00Z", route),
            vs("bad", "2024-01-01T00:00:00Z", json!({"hosts": ["a.com"]})),
        ]);
        let names: Vec<&str> = w.config.virtual_services.iter().map(|v| v.meta.name.as_str()).collect();
        assert_eq!(names, vec!["older", "newer"]);
        assert_eq!(w.config.virtual_services[0].spec.hosts, vec!["reviews.default.svc.cluster.local"]);
        assert!(d.iter().all(|d| d.object == "VirtualService default/bad"), "{d:?}");
        assert!(d.iter().any(|d| d.severity == crate::diag::Severity::Error));
    }

    #[rstest]
    #[case(json!({}), MeshConfig::default())]
    #[case(json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}, "trustDomain": "example.org", "unknownKey": 1}),
        MeshConfig { outbound_traffic_policy: crate::model::OutboundTrafficPolicy::RegistryOnly, trust_domain: "example.org".into(), ..MeshConfig::default() })]
    #[case(json!({"rootNamespace": "mesh", "enableAutoMtls": false, "defaultConfig": {"proxyMetadata": {"A": "1", "B": 2}}}),
        MeshConfig { root_namespace: "mesh".into(), enable_auto_mtls: false,
            proxy_metadata: [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())].into_iter().collect(), ..MeshConfig::default() })]
    fn mesh_config_parses(#[case] v: serde_json::Value, #[case] want: MeshConfig) {
        assert_eq!(MeshConfig::from_yaml_value(&v).unwrap(), want);
    }

    #[rstest]
    #[case(json!({"outboundTrafficPolicy": {"mode": "SOMETIMES"}}), "outboundTrafficPolicy.mode")]
    #[case(json!({"enableAutoMtls": "yes"}), "enableAutoMtls")]
    #[case(json!({"trustDomain": 3}), "trustDomain")]
    fn mesh_config_errors_name_the_key(#[case] v: serde_json::Value, #[case] field: &str) {
        assert_eq!(MeshConfig::from_yaml_value(&v).unwrap_err().field, field);
    }
}
