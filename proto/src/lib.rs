//! # sailplane-proto: protocol descriptors
//!
//! Reflection over Envoy's messages, so encoded resources can be shown as JSON in Envoy's own
//! `config_dump` shape (snake_case field names, `@type` on every `Any`), and the .proto
//! definitions envoy-types lacks: the Istio CA API in [`istio::ca`].
//!
//! Inputs are plain encoded bytes plus their type URL: this crate knows nothing about the
//! translator, so both the control plane (`/debug/config_dump`) and the translator's golden tests
//! can use it.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value, json};

/// Istio APIs that envoy-types does not carry, generated from `proto/istio/*.proto` by `build.rs`.
pub mod istio {
    /// `istio.v1.auth`: the certificate authority API (`IstioCertificateService/CreateCertificate`),
    /// wire-compatible with istiod's. `istio_certificate_service_client` and
    /// `istio_certificate_service_server` hold the tonic client and server.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod ca {
        tonic::include_proto!("istio.v1.auth");
    }
}

/// The `FileDescriptorSet` of every Envoy .proto (and its dependencies) that envoy-types was
/// generated from, copied out of the envoy-types sources by `build.rs`.
static ENVOY_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Errors while rendering encoded messages as JSON.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded descriptor set did not decode (a build problem, not user input).
    #[error("embedded envoy descriptor set is invalid: {0}")]
    Descriptors(String),
    /// The bytes are not a `google.protobuf.Any`.
    #[error("not a google.protobuf.Any: {0}")]
    NotAny(#[from] prost::DecodeError),
    /// The type URL names a message the descriptor pool does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The message bytes do not decode as the named type.
    #[error("cannot decode {type_name}: {source}")]
    Decode {
        /// Full message name.
        type_name: String,
        /// Decoder error.
        source: prost::DecodeError,
    },
    /// JSON rendering failed (for example an `Any` of an unknown type nested inside).
    #[error("cannot render {type_name} as JSON: {message}")]
    Json {
        /// Full message name.
        type_name: String,
        /// Serializer error.
        message: String,
    },
}

/// The descriptor pool holding every Envoy message, decoded once.
pub fn pool() -> Result<&'static DescriptorPool, Error> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(ENVOY_DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Descriptors(e.clone()))
}

/// Options matching Envoy's admin output: proto field names (snake_case), enum names,
/// default-valued fields left out, 64-bit integers as strings (proto3 JSON).
fn envoy_json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false)
}

/// The message name from a type URL (`type.googleapis.com/envoy.config.cluster.v3.Cluster`).
fn type_name_of(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

/// Renders the encoded message `bytes` of type `type_name` (full name, or a type URL) as JSON.
pub fn message_to_json(type_name: &str, bytes: &[u8]) -> Result<Value, Error> {
    let type_name = type_name_of(type_name);
    let desc = pool()?.get_message_by_name(type_name).ok_or_else(|| Error::UnknownType(type_name.to_string()))?;
    let msg = DynamicMessage::decode(desc, bytes)
        .map_err(|source| Error::Decode { type_name: type_name.to_string(), source })?;
    msg.serialize_with_options(serde_json::value::Serializer, &envoy_json_options())
        .map(sort_keys)
        .map_err(|e| Error::Json { type_name: type_name.to_string(), message: e.to_string() })
}

/// Orders object keys alphabetically at every level (`@type` first). Protobuf maps decode into
/// hash maps, so without this the output order could change from run to run (and would, should
/// another crate turn on serde_json's `preserve_order`).
fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Renders an encoded `google.protobuf.Any` as JSON: `{"@type": ..., <fields>}`.
pub fn any_to_json(any_bytes: &[u8]) -> Result<Value, Error> {
    let any = prost_types_any::Any::decode(any_bytes)?;
    let mut body = message_to_json(&any.type_url, &any.value)?;
    let mut out = Map::new();
    out.insert("@type".to_string(), Value::String(any.type_url.clone()));
    if let Value::Object(fields) = &mut body {
        out.append(fields);
    }
    Ok(Value::Object(out))
}

/// The JSON of the message inside an encoded `Any`, without the `@type` key.
fn any_body_json(any_bytes: &[u8]) -> Result<(String, Value), Error> {
    let any = prost_types_any::Any::decode(any_bytes)?;
    let body = message_to_json(&any.type_url, &any.value)?;
    Ok((any.type_url, body))
}

/// A minimal `google.protobuf.Any`, so this crate does not need envoy-types.
mod prost_types_any {
    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        /// Type URL.
        #[prost(string, tag = "1")]
        pub type_url: String,
        /// Encoded message.
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
}

/// How one resource is wrapped inside its config-dump section (Envoy's admin API messages differ
/// per type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpLayout {
    /// `{"version_info", "<resource_key>": {..}}` (clusters, endpoints, routes).
    Versioned,
    /// `{"name", "version_info", "<resource_key>": {..}}` (secrets).
    NamedVersioned,
    /// `{"name", "active_state": {"version_info", "<resource_key>": {..}}}` (listeners).
    NamedActiveState,
}

/// One section of Envoy's admin `/config_dump`: the admin message that holds a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpSection {
    /// Type URL of the admin message (`type.googleapis.com/envoy.admin.v3.ClustersConfigDump`).
    pub dump_type: &'static str,
    /// Its repeated field holding the dynamic resources (`dynamic_active_clusters`).
    pub field: &'static str,
    /// The key of the resource inside each item (`cluster`).
    pub resource_key: &'static str,
    /// How each item is shaped.
    pub layout: DumpLayout,
}

/// One resource to put into a config dump.
#[derive(Debug, Clone, Copy)]
pub struct DumpEntry<'a> {
    /// The section of the resource's type.
    pub section: &'a DumpSection,
    /// Resource name.
    pub name: &'a str,
    /// Version the resource was sent with.
    pub version: &'a str,
    /// The resource as an encoded `google.protobuf.Any`.
    pub any: &'a [u8],
}

/// Renders resources in the shape of Envoy's admin `/config_dump`:
///
/// ```json
/// {"configs": [
///   {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
///    "dynamic_active_clusters": [{"version_info": "..", "cluster": {"@type": .., ..}}]},
///   {"@type": "...ListenersConfigDump", "dynamic_listeners": [{"name": .., "active_state": {"version_info": .., "listener": {..}}}]},
///   {"@type": "...RoutesConfigDump", "dynamic_route_configs": [{"version_info": .., "route_config": {..}}]},
///   {"@type": "...EndpointsConfigDump", "dynamic_endpoint_configs": [{"version_info": .., "endpoint_config": {..}}]}
/// ]}
/// ```
///
/// Sections appear in the order their first entry comes (callers pass entries in push order, which is
/// Envoy's order: clusters, endpoints, listeners, routes, secrets), only for types that have entries;
/// entries keep the order they were given in. Object keys are sorted at every level, and fields
/// Envoy fills from its own clock (`last_updated`) are left out, so the output is deterministic.
pub fn config_dump<'a>(entries: impl IntoIterator<Item = DumpEntry<'a>>) -> Result<Value, Error> {
    let mut sections: Vec<(&DumpSection, Vec<Value>)> = Vec::new();
    for e in entries {
        let (type_url, body) = any_body_json(e.any)?;
        let mut resource = Map::new();
        resource.insert("@type".to_string(), Value::String(type_url));
        if let Value::Object(mut fields) = body {
            resource.append(&mut fields);
        }
        let mut inner = Map::new();
        inner.insert("version_info".to_string(), Value::String(e.version.to_string()));
        inner.insert(e.section.resource_key.to_string(), Value::Object(resource));
        let item = match e.section.layout {
            DumpLayout::Versioned => Value::Object(inner),
            DumpLayout::NamedVersioned => {
                inner.insert("name".to_string(), Value::String(e.name.to_string()));
                Value::Object(inner)
            }
            DumpLayout::NamedActiveState => json!({"name": e.name, "active_state": Value::Object(inner)}),
        };
        match sections.iter_mut().find(|(s, _)| *s == e.section) {
            Some((_, items)) => items.push(item),
            None => sections.push((e.section, vec![item])),
        }
    }
    let configs: Vec<Value> = sections
        .into_iter()
        .map(|(s, items)| {
            let mut section = Map::new();
            section.insert("@type".to_string(), Value::String(s.dump_type.to_string()));
            section.insert(s.field.to_string(), Value::Array(items));
            Value::Object(section)
        })
        .collect();
    // Sorted like the resources inside, so the whole dump is stable whatever serde_json's map is.
    Ok(sort_keys(json!({ "configs": configs })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Encodes a message by hand with the descriptor pool, so the test does not depend on
    /// envoy-types: a Cluster named `c1` with `type: STATIC` and `connect_timeout: 10s`.
    fn cluster_any() -> Vec<u8> {
        let pool = pool().unwrap();
        let desc = pool.get_message_by_name("envoy.config.cluster.v3.Cluster").unwrap();
        let json = r#"{"name":"c1","type":"STATIC","connectTimeout":"10s",
            "typedExtensionProtocolOptions":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":
            {"@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
             "explicitHttpConfig":{"http2ProtocolOptions":{}}}}}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let msg = DynamicMessage::deserialize(desc, &mut de).unwrap();
        prost_types_any::Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: msg.encode_to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn any_renders_with_type_and_snake_case_fields() {
        let v = any_to_json(&cluster_any()).unwrap();
        assert_eq!(v["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
        assert_eq!(v["name"], "c1");
        assert_eq!(v["type"], "STATIC");
        assert_eq!(v["connect_timeout"], "10s");
        let opts = &v["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(opts["@type"], "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
    }

    #[test]
    fn config_dump_has_envoy_shape() {
        let any = cluster_any();
        let dump = config_dump([
            DumpEntry { section: &CLUSTERS, name: "c1", version: "v1", any: &any },
            DumpEntry { section: &AS_LISTENERS, name: "c1", version: "v2", any: &any },
            DumpEntry { section: &CLUSTERS, name: "c1", version: "v3", any: &any },
        ])
        .unwrap();
        let section = &dump["configs"][0];
        assert_eq!(section["@type"], "type.googleapis.com/envoy.admin.v3.ClustersConfigDump");
        assert_eq!(section["dynamic_active_clusters"][0]["version_info"], "v1");
        assert_eq!(section["dynamic_active_clusters"][0]["cluster"]["name"], "c1");
        assert_eq!(section["dynamic_active_clusters"][1]["version_info"], "v3");
        let listeners = &dump["configs"][1]["dynamic_listeners"][0];
        assert_eq!(listeners["name"], "c1");
        assert_eq!(listeners["active_state"]["version_info"], "v2");
        assert_eq!(listeners["active_state"]["listener"]["name"], "c1");
        assert_eq!(dump["configs"].as_array().unwrap().len(), 2);
    }

    const CLUSTERS: DumpSection = DumpSection {
        dump_type: "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        field: "dynamic_active_clusters",
        resource_key: "cluster",
        layout: DumpLayout::Versioned,
    };

    /// A listener-shaped section (the payload is a cluster; only the wrapping is checked).
    const AS_LISTENERS: DumpSection = DumpSection {
        dump_type: "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        field: "dynamic_listeners",
        resource_key: "listener",
        layout: DumpLayout::NamedActiveState,
    };

    #[test]
    fn unknown_types_are_errors() {
        let any = prost_types_any::Any { type_url: "type.googleapis.com/no.such.Message".into(), value: vec![] }
            .encode_to_vec();
        assert!(matches!(any_to_json(&any), Err(Error::UnknownType(_))));
        let err = config_dump([DumpEntry { section: &CLUSTERS, name: "n", version: "v", any: &any }]).unwrap_err();
        assert!(matches!(err, Error::UnknownType(_)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(any_to_json(&[0xff, 0xff, 0xff]).is_err());
    }
}
