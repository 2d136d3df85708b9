//! The mesh certificate authority: SPIFFE workload certificates signed by a self-signed root (kept in a
//! state directory) or by a plug-in CA in Istio's `cacerts` layout, and the bearer tokens that
//! authenticate callers in file mode.
//!
//! The identity in a certificate comes only from the caller's authenticated identity, never from the
//! CSR: a CSR that asks for any other SAN is refused.

mod authority;
pub mod server;
pub mod token;

pub use authority::{Authority, CA_CERT, CA_KEY, CERT_CHAIN, CaError, CaOptions, ROOT_CERT};
