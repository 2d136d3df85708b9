//! What the egress scenarios (seed 003) need beyond pods and sidecars:
//!
//! - [`Lab::mesh_cert`]: a certificate from the lab's own mesh CA (the control plane's CA on
//!   15012, with a `sailplane token create` token), for an external server that shares the mesh's
//!   root ("common CA");
//! - [`Lab::serve_tls`]: (re)starts a pod's app with an HTTPS port serving a certificate made after
//!   the lab started (the mesh CA exists only once the control plane runs);
//! - [`Lab::mount_files`]: files readable by the sidecar's agent and Envoy (uid 1337), as
//!   `sidecar.istio.io/userVolumeMount` mounts a Secret into the `istio-proxy` container.
//!
//! Gateway pods (the egress gateway) are [`super::gateway`]'s.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Lab, PROXY_UID, net};
use crate::log_tail;
use crate::tls_echo::CertKey;

impl Lab {
    /// The mesh root certificate (PEM) of the lab's control plane.
    pub fn mesh_root_pem(&self) -> anyhow::Result<String> {
        let path = self.ca_dir.join("root-cert.pem");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// A workload certificate for `spiffe://cluster.local/ns/<ns>/sa/<sa>` signed by the lab's mesh
    /// CA over its gRPC API (key and CSR made here), chain ending with the mesh root.
    pub fn mesh_cert(&self, ns: &str, sa: &str) -> anyhow::Result<CertKey> {
        use sailplane::agent::ca_client::CaClient;
        use sailplane::agent::keys::{self, KeyType};

        let scratch = tempfile::Builder::new().prefix("sailplane-lab-token-").tempdir()?;
        let token_file = scratch.path().join("token");
        let sailplane = self.sailplane.display().to_string();
        let ca_dir = self.ca_dir.display().to_string();
        let out = token_file.display().to_string();
        net::run(
            &sailplane,
            &["token", "create", "--namespace", ns, "--service-account", sa, "--ca-dir", &ca_dir, "--output", &out],
        )?;
        let token = std::fs::read_to_string(&token_file)?.trim().to_string();
        let identity = sailplane::identity::Identity {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        };
        let keys = keys::generate(KeyType::Ec, &identity)?;
        let addr = format!("{}:15012", self.subnet.gateway());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // The gRPC channel is built (lazily) on the runtime.
        let _in_runtime = runtime.enter();
        let client = CaClient::new(&addr, &self.mesh_root_pem()?, Some("istiod.istio-system.svc"))?;
        let chain = runtime
            .block_on(client.sign(keys.csr_pem, Duration::from_secs(3600), &token))
            .context("CA CreateCertificate")?;
        let chain_pem = chain.iter().map(|c| if c.ends_with('\n') { c.clone() } else { format!("{c}\n") }).collect();
        Ok(CertKey { chain_pem, key_pem: keys.key_pem })
    }

    /// Restarts pod `key`'s app with, besides its plain ports, HTTPS on `port` serving `cert` and,
    /// when `client_ca_pem` is set, requiring client certificates that chain to it. Returns once
    /// the port accepts connections.
    pub fn serve_tls(
        &mut self,
        key: &str,
        port: u16,
        cert: &CertKey,
        client_ca_pem: Option<&str>,
    ) -> anyhow::Result<()> {
        let i = self.pod_index(key)?;
        if let Some(mut old) = self.pods[i].echo.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let p = &self.pods[i];
        let (chain, key_path) = cert.write(&p.dir, &format!("app-tls-{port}"))?;
        let log = File::create(p.dir.join(format!("app-tls-{port}.log")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &p.netns]).arg(&self.echo_bin).args(["--name", &p.spec.name]);
        for plain in &p.spec.ports {
            cmd.args(["--port", &plain.to_string()]);
        }
        cmd.args(["--tls-port", &port.to_string()]).arg("--cert").arg(&chain).arg("--key").arg(&key_path);
        if let Some(ca) = client_ca_pem {
            let path = p.dir.join(format!("app-client-ca-{port}.pem"));
            std::fs::write(&path, ca)?;
            cmd.arg("--client-ca").arg(path);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the TLS app of {key}"))?;
        self.pods[i].echo = Some(child);
        // Any TLS outcome (even a refused handshake) means the port is up; exit 7 means not yet.
        let url = format!("https://127.0.0.1:{port}/");
        let deadline = Instant::now() + super::READY;
        loop {
            let r = self.curl_in(&self.pods[i].netns, &url, &["-k"])?;
            if r.exit != 7 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "TLS app of {key} not listening on {port}: {}\n{}",
                    r.summary(),
                    log_tail(&self.pods[i].dir.join(format!("app-tls-{port}.log")), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `files` (name, content) into a directory of pod `key` that its sidecar (uid 1337)
    /// can read, as a Secret mounted into the proxy container; returns the directory. A
    /// DestinationRule names these files by their paths there.
    pub fn mount_files(&self, key: &str, mount: &str, files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
        let i = self.pod_index(key)?;
        let dir = self.pods[i].dir.join(mount);
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(PROXY_UID), Some(PROXY_UID))?;
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))?;
        }
        Ok(dir)
    }
}
