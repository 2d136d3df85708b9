//! Every Envoy-visible name Sailplane generates, in Istio's exact form.
