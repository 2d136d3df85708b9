//! Per-type builders: one proxy's listeners, routes, clusters and endpoints.

use crate::model::{ProxyProfile, World};
use crate::resources::ResourceSet;

/// Translates the world for one proxy.
pub fn build(world: &World, proxy: &ProxyProfile) -> ResourceSet {
    let _ = (world, proxy);
    ResourceSet::new()
}
