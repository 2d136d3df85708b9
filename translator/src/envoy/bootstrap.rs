//! A static Envoy bootstrap from a [`ResourceSet`]: the same listeners and clusters, with RDS inlined
//! into the HTTP connection managers and EDS inlined as `load_assignment`.
//!
//! Used by `sailplane translate` (inspect or run a proxy's config without a control plane) and by
//! the golden tests, which load every output into real Envoy with `envoy --mode validate`.

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::{any, cluster::is_eds, socket_addr};
use crate::resources::{Resource, ResourceSet, TypeUrl};

/// A resource in the set that does not decode as its type (a translator bug, not user input).
#[derive(Debug, thiserror::Error)]
#[error("resource {name:?} of type {type_url} does not decode: {source}")]
pub struct BootstrapError {
    /// Resource name.
    pub name: String,
    /// Its type URL.
    pub type_url: &'static str,
    /// Decoder error.
    pub source: prost::DecodeError,
}

fn decode_any<M: Message + Default>(r: &Resource, t: TypeUrl) -> Result<M, BootstrapError> {
    let err = |source| BootstrapError { name: r.name.clone(), type_url: t.as_str(), source };
    let any = Any::decode(r.any.clone()).map_err(err)?;
    M::decode(any.value.as_slice()).map_err(err)
}

/// The static bootstrap of `set` for a node `node_id` in `node_cluster`, with the admin interface on
/// 127.0.0.1 at a kernel-chosen port.
pub fn static_bootstrap(set: &ResourceSet, node_id: &str, node_cluster: &str) -> Result<Bootstrap, BootstrapError> {
    let mut clusters = Vec::with_capacity(set.of(TypeUrl::Cluster).len());
    for r in set.of(TypeUrl::Cluster).values() {
        let mut c: Cluster = decode_any(r, TypeUrl::Cluster)?;
        if is_eds(&c) {
            let service = c
                .eds_cluster_config
                .take()
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let cla = match set.get(TypeUrl::Endpoint, &service) {
                Some(r) => decode_any::<ClusterLoadAssignment>(r, TypeUrl::Endpoint)?,
                None => ClusterLoadAssignment { cluster_name: service, ..Default::default() },
            };
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.load_assignment = Some(ClusterLoadAssignment { cluster_name: c.name.clone(), ..cla });
        }
        clusters.push(c);
    }
    let mut listeners = Vec::with_capacity(set.of(TypeUrl::Listener).len());
    for r in set.of(TypeUrl::Listener).values() {
        let mut l: Listener = decode_any(r, TypeUrl::Listener)?;
        for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
            inline_routes(set, chain, &r.name)?;
        }
        listeners.push(l);
    }
    Ok(Bootstrap {
        node: Some(Node { id: node_id.to_string(), cluster: node_cluster.to_string(), ..Default::default() }),
        admin: Some(Admin { address: socket_addr("127.0.0.1", 0), ..Default::default() }),
        static_resources: Some(StaticResources { listeners, clusters, ..Default::default() }),
        ..Default::default()
    })
}

/// Replaces RDS references in the chain's HTTP connection managers with the route configuration
/// itself (empty when the set has none by that name, as istiod answers unknown names).
fn inline_routes(set: &ResourceSet, chain: &mut FilterChain, listener: &str) -> Result<(), BootstrapError> {
    for f in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(cfg)) = &mut f.config_type else { continue };
        if cfg.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let mut hcm = HttpConnectionManager::decode(cfg.value.as_slice()).map_err(|source| BootstrapError {
            name: listener.to_string(),
            type_url: TypeUrl::Listener.as_str(),
            source,
        })?;
        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let route = match set.get(TypeUrl::Route, &rds.route_config_name) {
                Some(r) => decode_any::<RouteConfiguration>(r, TypeUrl::Route)?,
                None => RouteConfiguration { name: rds.route_config_name.clone(), ..Default::default() },
            };
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig(route));
            *cfg = any(&hcm);
        }
    }
    Ok(())
}
