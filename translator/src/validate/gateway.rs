//! Gateway rules (Istio's `ValidateGateway`), and the server TLS checks Sidecar ingress shares.

use std::collections::BTreeSet;

use crate::api::istio::{GatewaySpec, Port, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};

use super::common::{
    Proto, Report, VALID_CIPHER_SUITES, at, idx, is_dns1123_label, validate_ip, validate_namespace_slash_host,
    validate_port, validate_unix_address,
};

const UNIX_PREFIX: &str = "unix://";

pub(crate) fn check(r: &mut Report, name: &str, spec: &GatewaySpec) {
    if !is_dns1123_label(name) {
        r.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if spec.servers.is_empty() {
        r.error("spec.servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    let mut server_names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let path = idx("spec.servers", i);
        check_server(r, &path, server);
        if let Some(port) = &server.port {
            if !port_names.insert(port.name.as_str()) {
                r.error(
                    at(&path, "port.name"),
                    format!("port names in servers must be unique: duplicate name {}", port.name),
                );
            }
            let https_redirect = server.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false);
            if !Proto::parse(&port.protocol).is_http() && https_redirect {
                r.warn(at(&path, "tls.httpsRedirect"), "tls.httpsRedirect should only be used with http servers");
            }
        }
        if let Some(n) = server.name.as_deref().filter(|n| !n.is_empty())
            && !server_names.insert(n)
        {
            r.error(at(&path, "name"), format!("server name must be unique across servers: duplicate name {n}"));
        }
    }
}

fn check_server(r: &mut Report, path: &str, server: &Server) {
    if server.hosts.is_empty() {
        r.error(at(path, "hosts"), "server config must contain at least one host");
    }
    for (i, h) in server.hosts.iter().enumerate() {
        for e in validate_namespace_slash_host(h, true) {
            r.error(idx(&at(path, "hosts"), i), e);
        }
    }
    let bind = server.bind.as_deref().unwrap_or_default();
    let port_ok = match &server.port {
        None => {
            r.error(at(path, "port"), "port is required");
            false
        }
        Some(port) => check_server_port(r, &at(path, "port"), port, bind),
    };
    if let Some(stripped) = bind.strip_prefix(UNIX_PREFIX) {
        r.check(at(path, "bind"), validate_unix_address(stripped));
        if server.port.as_ref().is_some_and(|p| p.number != 0) {
            r.error(at(path, "port.number"), "port number must be 0 for unix domain socket");
        }
    } else if !bind.is_empty() {
        r.check(at(path, "bind"), validate_ip(bind));
    }
    if let Some(tls) = &server.tls {
        check_server_tls(r, &at(path, "tls"), tls);
    }
    if let (true, Some(port)) = (port_ok, &server.port) {
        let p = Proto::parse(&port.protocol);
        match &server.tls {
            None if p.is_tls() => r.error(at(path, "tls"), "server must have TLS settings for HTTPS/TLS protocols"),
            Some(tls) if !p.is_tls() => {
                if p.is_http() {
                    let passthrough = matches!(
                        tls.mode.unwrap_or(ServerTlsMode::Passthrough),
                        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
                    );
                    let files = [&tls.ca_certificates, &tls.private_key, &tls.server_certificate]
                        .iter()
                        .any(|f| f.as_deref().is_some_and(|v| !v.is_empty()));
                    if !passthrough || files {
                        r.error(at(path, "tls"), "server cannot have TLS settings for plain text HTTP ports");
                    }
                } else {
                    r.error(at(path, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports");
                }
            }
            _ => {}
        }
    }
}

/// Returns whether the port is usable (protocol known, number valid) for the TLS checks after it.
fn check_server_port(r: &mut Report, path: &str, port: &Port, bind: &str) -> bool {
    let mut ok = true;
    if Proto::parse(&port.protocol) == Proto::Unsupported {
        r.error(
            at(path, "protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
        ok = false;
    }
    if (port.number > 0 || !bind.starts_with(UNIX_PREFIX))
        && let Err(e) = validate_port(i64::from(port.number))
    {
        r.error(at(path, "number"), e);
        ok = false;
    }
    if port.target_port.is_some_and(|t| t > 0) {
        r.error(at(path, "targetPort"), "targetPort has no impact on Gateways");
        ok = false;
    }
    if port.name.is_empty() {
        r.error(at(path, "name"), "port name must be set");
        ok = false;
    }
    ok
}

/// Server TLS settings of a Gateway server or a Sidecar ingress listener.
pub(crate) fn check_server_tls(r: &mut Report, path: &str, tls: &ServerTlsSettings) {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    if matches!(tls.min_protocol_version, Some(TlsProtocol::Tlsv10 | TlsProtocol::Tlsv11))
        && tls.cipher_suites.is_empty()
    {
        r.warn(
            at(path, "minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        r.error(at(path, "maxProtocolVersion"), "maxProtocolVersion must not be lower than minProtocolVersion");
    }
    let mut valid = BTreeSet::new();
    let mut invalid = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for c in &tls.cipher_suites {
        if !VALID_CIPHER_SUITES.contains(&c.as_str()) {
            invalid.insert(c.as_str());
        } else if !valid.insert(c.as_str()) {
            duplicate.insert(c.as_str());
        }
    }
    if !invalid.is_empty() {
        r.warn(at(path, "cipherSuites"), format!("ignoring invalid cipher suites: {invalid:?}"));
    }
    if !duplicate.is_empty() {
        r.warn(at(path, "cipherSuites"), format!("ignoring duplicate cipher suites: {duplicate:?}"));
    }

    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    if mode == ServerTlsMode::IstioMutual {
        for (field, v, what) in [
            ("serverCertificate", &tls.server_certificate, "server certificate"),
            ("privateKey", &tls.private_key, "private key"),
            ("caCertificates", &tls.ca_certificates, "CA bundle"),
            ("credentialName", &tls.credential_name, "credentialName"),
        ] {
            if set(v) {
                r.error(at(path, field), format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
            }
        }
        if !tls.credential_names.is_empty() {
            r.error(at(path, "credentialNames"), "ISTIO_MUTUAL TLS cannot have associated credentialNames");
        }
        if !tls.tls_certificates.is_empty() {
            r.error(at(path, "tlsCertificates"), "ISTIO_MUTUAL TLS cannot have associated tlsCertificates");
        }
        return;
    }
    let has_credential = set(&tls.credential_name) || !tls.credential_names.is_empty();
    if matches!(mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)
        && (set(&tls.ca_crl)
            || set(&tls.server_certificate)
            || set(&tls.private_key)
            || set(&tls.ca_certificates)
            || has_credential)
    {
        r.warn(path, format!("{} mode does not use certificates, they will be ignored", mode.as_str()));
    }
    if set(&tls.credential_name) && !tls.credential_names.is_empty() {
        r.error(at(path, "credentialNames"), "only one of credentialName or credentialNames may be set");
    }
    let terminating = matches!(mode, ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    if terminating && has_credential {
        // Credentials come from a Secret: no file fields are required.
        if set(&tls.ca_crl) {
            r.error(
                at(path, "caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        return;
    }
    let has_files = set(&tls.server_certificate) || !tls.tls_certificates.is_empty();
    let has_key = set(&tls.private_key) || !tls.tls_certificates.is_empty();
    match mode {
        ServerTlsMode::Simple => {
            if !has_files {
                r.error(at(path, "serverCertificate"), "SIMPLE TLS requires a server certificate");
            }
            if !has_key {
                r.error(at(path, "privateKey"), "SIMPLE TLS requires a private key");
            }
            if set(&tls.ca_crl) {
                r.error(at(path, "caCrl"), "CRL is not supported with SIMPLE TLS");
            }
        }
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if !has_files {
                r.error(at(path, "serverCertificate"), "MUTUAL TLS requires a server certificate");
            }
            if !has_key {
                r.error(at(path, "privateKey"), "MUTUAL TLS requires a private key");
            }
            let has_ca = set(&tls.ca_certificates) || tls.tls_certificates.iter().any(|c| c.ca_certificates.is_some());
            if !has_ca {
                r.error(at(path, "caCertificates"), "MUTUAL TLS requires a client CA bundle");
            }
        }
        _ => {}
    }
}
