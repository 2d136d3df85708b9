//! Config sources: where objects come from. Each source sends whole origins to the
//! [`crate::store::Store`] as [`crate::store::ConfigEvent`]s.

pub mod files;
pub mod kube;
pub mod yaml;
