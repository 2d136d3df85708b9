//! The component tier: the control plane in process, one test binary (one link instead of one per
//! file). Each module is one former test file. Helpers come from the `sailplane-tests` library;
//! nothing here starts the `sailplane` binary or Envoy (those tests are in `tests/tests/e2e`).
//!
//! Nothing in these modules depends on running in its own process: no environment variables are
//! set, and every server binds its own free port. `webhook_inject`'s iptables test runs in its own
//! network namespace (`unshare`).

mod agent_sds;
mod ca_grpc;
mod kube_ca;
mod kube_chart;
mod kube_crds;
mod kube_source;
mod push;
mod webhook_inject;
mod webhook_validate;
mod xds_delta;
mod xds_incremental;
mod xds_sotw;
