//! The agent with a real Envoy.
//!
//! 1. In-process agent, Envoy with a static TLS listener whose certificate is SDS `default` from the
//!    agent's socket: a client trusting the mesh root sees the workload's SPIFFE identity, and after a
//!    rotation Envoy serves the new certificate.
//! 2. The `sailplane agent --run-envoy` binary, configured by Istio's environment variables: it writes
//!    the bootstrap, Envoy fetches `default`/`ROOTCA` over SDS and completes mTLS to the secure port,
//!    the supervisor restarts Envoy when it exits, and SIGTERM stops both.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sailplane::agent::keys::KeyType;
use sailplane::agent::secrets::SecretCache;
use sailplane::agent::{Agent, CertManager, CertOptions};
use sailplane::ca::CaOptions;
use sailplane_tests::ca::*;
use sailplane_tests::http::dechunk;
use sailplane_tests::paths::{envoy_bin, sailplane_bin};
use sailplane_tests::ports::free_port;
use sailplane_tests::process::Proc;
use sailplane_tests::wait::{eventually, some_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A static bootstrap: admin, one TLS listener answering 200 with SDS `default` as its certificate,
/// and the `sds-grpc` cluster on the agent's socket.
fn tls_listener_bootstrap(admin: u16, port: u16, socket: &Path) -> String {
    format!(
        r#"
node: {{ id: "sidecar~127.0.0.1~p.bookinfo~bookinfo.svc.cluster.local", cluster: "p.bookinfo" }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: tls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config:
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{{ envoy_grpc: {{ cluster_name: sds-grpc }} }}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "hello from envoy" }} }}
  clusters:
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ pipe: {{ path: {socket} }} }} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
"#,
        socket = q(&socket.display().to_string()),
    )
}

/// Connects with TLS trusting `root`, sends a GET, returns (peer leaf DER, HTTP response).
async fn tls_get(port: u16, root: &str) -> std::io::Result<(Vec<u8>, String)> {
    let config = rustls::ClientConfig::builder_with_provider(sailplane::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeVerifier::new(root))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("reviews.bookinfo").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n").await?;
    let mut body = String::new();
    tls.read_to_string(&mut body).await?;
    Ok((leaf, body))
}

/// `GET` (or `POST`) on Envoy's admin port; `None` while nothing answers.
async fn admin(port: u16, method: &str, path: &str) -> Option<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    // HTTP/1.1: Envoy refuses HTTP/1.0 unless told to accept it.
    let request = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        Some(body.to_string())
    }
}

#[tokio::test]
async fn envoy_terminates_tls_with_the_agent_workload_certificate() {
    let envoy = envoy_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(&dir.path().join("ca"), CaOptions::default()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, ca.token("bookinfo", "reviews")).unwrap();
    let socket = dir.path().join("SDS");
    let cache = SecretCache::new();
    let options = CertOptions {
        identity: identity("bookinfo", "reviews"),
        token_file: token,
        secret_ttl: Duration::from_secs(8),
        key_type: KeyType::Ec,
        output_certs: None,
        grace_ratio: 0.5,
        grace_jitter: 0.01,
    };
    let _agent =
        Agent::start(CertManager::new(options, ca.client(), ca.root_pem(), Arc::clone(&cache)), &socket).unwrap();

    let (admin_port, port) = (free_port().unwrap(), free_port().unwrap());
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, tls_listener_bootstrap(admin_port, port, &socket)).unwrap();
    let mut cmd = Command::new(&envoy);
    cmd.arg("-c").arg(&config).args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]);
    let proc = Proc::spawn("envoy", cmd, &dir.path().join("envoy.log")).unwrap();

    let root = ca.root_pem();
    let (leaf, response) = eventually(
        "envoy to serve TLS with the SDS certificate",
        WAIT,
        some_async(|| {
            let root = root.clone();
            async move { tls_get(port, &root).await.ok() }
        }),
    )
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "response: {response}\n--- envoy log ---\n{}", proc.log());
    assert!(response.ends_with("hello from envoy"), "{response}");
    assert_eq!(uri_sans(&leaf), vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews".to_string()]);
    let first_serial = serial(&leaf);
    let served = cache.workload().expect("agent has a certificate");
    assert_eq!(serial(&certs(&served.chain_pem)[0]), first_serial, "envoy serves the agent's certificate");

    // After the agent rotates (at ~4 s), Envoy serves the new certificate without a restart.
    let rotated = eventually(
        "envoy to serve the rotated certificate",
        WAIT,
        some_async(|| {
            let (root, first) = (root.clone(), first_serial.clone());
            async move {
                let (leaf, response) = tls_get(port, &root).await.ok()?;
                (serial(&leaf) != first && response.starts_with("HTTP/1.1 200")).then_some(leaf)
            }
        }),
    )
    .await
    .unwrap();
    assert_eq!(uri_sans(&rotated), vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews".to_string()]);
    assert_eq!(serial(&rotated), serial(&certs(&cache.workload().unwrap().chain_pem)[0]));
    drop(proc);
    ca.stop().await;
}

/// Decodes base64 (as Envoy's config dump shows bytes) with the PEM decoder.
fn base64_decode(b64: &str) -> Vec<u8> {
    let wrapped: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
    pem::parse(format!("-----BEGIN X-----\n{}\n-----END X-----\n", wrapped.join("\n"))).unwrap().into_contents()
}

#[tokio::test]
async fn agent_binary_runs_and_supervises_envoy() {
    let envoy = envoy_bin().unwrap();
    let bin = sailplane_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = TestCa::start(&ca_dir, CaOptions::default()).await;
    // The token comes from the CLI, signed with the key in the CA's directory.
    let token = dir.path().join("istio-token");
    let status = Command::new(&bin)
        .args(["token", "create", "--namespace", "bookinfo", "--service-account", "reviews", "--ttl", "1h"])
        .arg("--ca-dir")
        .arg(&ca_dir)
        .arg("-o")
        .arg(&token)
        .status()
        .unwrap();
    assert!(status.success());
    let root_file = dir.path().join("root-cert.pem");
    std::fs::write(&root_file, ca.root_pem()).unwrap();

    let admin_port = free_port().unwrap();
    let socket = dir.path().join("etc/istio/proxy/SDS");
    let bootstrap = dir.path().join("etc/istio/proxy/envoy-rev.yaml");
    let out_certs = dir.path().join("out");
    let mut cmd = Command::new(&bin);
    cmd.arg("agent")
        .args(["--run-envoy", "--xds-tls", "--interception-mode", "NONE", "--admin-port", &admin_port.to_string()])
        // xDS to the CA's TLS port: the ADS call itself is not served there (yet), but the mTLS
        // handshake with the SDS certificates is, which is what this test checks.
        .args(["--xds-address", &ca.address()])
        .arg("--token-file")
        .arg(&token)
        .arg("--sds-socket")
        .arg(&socket)
        .arg("--output")
        .arg(&bootstrap)
        .args(["--", "--concurrency", "1", "--log-level", "warn"])
        .env("CA_ADDR", ca.address())
        .env("CA_ROOT_CA", &root_file)
        .env("SECRET_TTL", "1h")
        .env("OUTPUT_CERTS", &out_certs)
        .env("POD_NAME", "reviews-v1")
        .env("POD_NAMESPACE", "bookinfo")
        .env("SERVICE_ACCOUNT", "reviews")
        .env("ENVOY_BIN", &envoy)
        .env("SAILPLANE_LOG", "info,sailplane=debug")
        .env("NO_COLOR", "1");
    let mut agent = Proc::spawn("sailplane agent", cmd, &dir.path().join("agent.log")).unwrap();

    // Envoy got default and ROOTCA from the agent over SDS.
    let dump = eventually(
        "envoy to hold the SDS secrets",
        WAIT,
        some_async(|| async move {
            let body = admin(admin_port, "GET", "/config_dump?resource=dynamic_active_secrets").await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let names: Vec<String> =
                v["configs"].as_array()?.iter().filter_map(|s| s["name"].as_str().map(String::from)).collect();
            (names.contains(&"default".to_string()) && names.contains(&"ROOTCA".to_string())).then_some(v)
        }),
    )
    .await
    .unwrap();
    let default = dump["configs"].as_array().unwrap().iter().find(|s| s["name"] == "default").unwrap();
    let chain_b64 = default["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"].as_str().unwrap();
    let chain = String::from_utf8(base64_decode(chain_b64)).unwrap();
    let leaf = &certs(&chain)[0];
    assert_eq!(
        uri_sans(leaf),
        vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews".to_string()],
        "identity from POD_NAMESPACE/SERVICE_ACCOUNT"
    );
    verify_chain(&certs(&chain), &ca.root_pem()).unwrap();

    // OUTPUT_CERTS (from the environment) holds the same certificate.
    assert_eq!(std::fs::read_to_string(out_certs.join("cert-chain.pem")).unwrap(), chain);
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out_certs.join("key.pem")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);

    // Envoy completed mTLS to the secure port, verifying it with ROOTCA and the istiod SAN.
    eventually(
        "an mTLS handshake on xds-grpc",
        WAIT,
        some_async(|| async move {
            let stats = admin(admin_port, "GET", "/stats?filter=cluster.xds-grpc.ssl.handshake").await?;
            let n: u64 = stats.split(':').nth(1)?.trim().parse().ok()?;
            (n >= 1).then_some(())
        }),
    )
    .await
    .unwrap();
    let boot = std::fs::read_to_string(&bootstrap).unwrap();
    assert!(boot.contains("reviews-v1") && boot.contains("sds-grpc"), "bootstrap written with POD_NAME:\n{boot}");

    // Envoy exits: the supervisor starts it again.
    admin(admin_port, "POST", "/quitquitquit").await.expect("quitquitquit");
    eventually(
        "envoy to exit",
        WAIT,
        some_async(|| async move { admin(admin_port, "GET", "/ready").await.is_none().then_some(()) }),
    )
    .await
    .unwrap();
    eventually(
        "envoy to be restarted",
        WAIT,
        some_async(|| async move { admin(admin_port, "GET", "/ready").await.map(|_| ()) }),
    )
    .await
    .unwrap();
    assert!(agent.log().contains("envoy exited"), "{}", agent.log());

    // SIGTERM stops the agent and its Envoy.
    let pid = rustix::process::Pid::from_raw(i32::try_from(agent.child().id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = eventually(
        "the agent to exit",
        WAIT,
        some_async(|| {
            let s = agent.child().try_wait().unwrap();
            async move { s }
        }),
    )
    .await
    .unwrap();
    assert!(status.success(), "agent exit {status:?}\n{}", agent.log());
    assert!(admin(admin_port, "GET", "/ready").await.is_none(), "envoy stopped with the agent");
    assert!(!socket.exists(), "sds socket removed");
    ca.stop().await;
}

/// Both bootstrap variants the agent writes (plaintext xDS; mTLS xDS with SDS certificates) are
/// accepted by Envoy.
#[test]
fn envoy_validates_the_agent_bootstraps() {
    use clap::Parser;
    use sailplane::cli::agent::{AgentArgs, bootstrap_options};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    let envoy = envoy_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("SDS");
    for extra in [
        &[][..],
        &["--xds-tls", "--xds-address", "127.0.0.1:15012"][..],
        &["--xds-tls", "--xds-root-ca", "/etc/x.pem"][..],
    ] {
        let argv = ["agent", "--pod", "p", "--namespace", "ns", "--sds-socket", socket.to_str().unwrap()];
        let args = Cli::try_parse_from(argv.iter().chain(extra.iter())).unwrap().args;
        let file = dir.path().join("bootstrap.yaml");
        sailplane::agent::envoy::write(&bootstrap_options(&args), &file).unwrap();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy rejected the bootstrap for {extra:?}:\n{}\n{}\n{}",
            std::fs::read_to_string(&file).unwrap(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
