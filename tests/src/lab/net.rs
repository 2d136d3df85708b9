//! The lab's network: one Linux bridge per lab with a private /24, one network namespace per pod
//! attached by a veth pair, Istio-style interception rules and kube-proxy-like service DNAT inside
//! the pod namespaces. Everything here shells out to `ip` and `iptables` (as root), the tools a
//! Kubernetes node uses for the same job.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// The Envoy user of an Istio sidecar: iptables lets its traffic through uncaptured.
pub const PROXY_UID: u32 = 1337;

/// Ports whose inbound traffic is not redirected to Envoy (Istio's defaults: 15090 Prometheus,
/// 15021 health, 15020 agent, and 22 for ssh).
pub const INBOUND_EXCLUDED_PORTS: [u16; 4] = [15090, 15021, 15020, 22];

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs a command and ignores failure (teardown of things that may already be gone).
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// Panics with a clear message unless this process is root and `ip`, `iptables` and `curl` exist:
/// the lab cannot run without them, and skipping would read as a pass.
pub fn require_root_and_tools() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if uid.as_deref() != Some("0") {
        panic!(
            "the mesh lab needs root (network namespaces, veths, iptables); this process runs as uid {uid:?}. \
             Run the lab tests as root, e.g. `sudo -E cargo test -p sailplane-tests --test lab_...`"
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables"), ("curl", "curl"), ("setpriv", "util-linux")] {
        let found = Command::new(tool).arg(if tool == "ip" { "-V" } else { "--version" }).output().is_ok();
        if !found {
            panic!("the mesh lab needs `{tool}` (Debian package {package}); run scripts/setup.sh");
        }
    }
}

/// A lab's /24: `10.<a>.<b>.0/24`, gateway (bridge) `.1`, pods from `.10`, service VIPs from `.200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Second octet.
    pub a: u8,
    /// Third octet.
    pub b: u8,
}

impl Subnet {
    /// Address `10.a.b.host`.
    pub fn host(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, host)
    }

    /// The bridge's address, where the control plane listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Short hex tag used in interface and namespace names (unique while the lab exists).
    pub fn tag(&self) -> String {
        format!("{:02x}{:02x}", self.a, self.b)
    }

    /// The bridge's name (at most 15 characters, the kernel's limit).
    pub fn bridge(&self) -> String {
        format!("splab{}", self.tag())
    }
}

/// Picks a /24 that no interface on this machine uses and creates the lab's bridge on it, under a
/// file lock so that labs in parallel test threads and processes never pick the same one.
pub fn create_bridge() -> anyhow::Result<Subnet> {
    let lock = File::create("/run/sailplane-lab.lock")
        .or_else(|_| File::create(std::env::temp_dir().join("sailplane-lab.lock")))
        .context("creating the lab lock file")?;
    lock.lock().context("locking the lab lock file")?;
    remove_stale_labs();
    let used = String::from_utf8_lossy(&run("ip", &["-4", "-o", "addr", "show"])?.stdout).into_owned();
    let routes = String::from_utf8_lossy(&run("ip", &["-4", "route", "show"])?.stdout).into_owned();
    // Start from the pid so that parallel processes rarely even contend for the same candidate.
    let start = std::process::id() as usize;
    for i in 0..(100 * 256) {
        let n = (start + i) % (100 * 256);
        let subnet = Subnet { a: 150 + (n / 256) as u8, b: (n % 256) as u8 };
        let prefix = format!("10.{}.{}.", subnet.a, subnet.b);
        if used.contains(&prefix) || routes.contains(&prefix) {
            continue;
        }
        let br = subnet.bridge();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        let gw = format!("{}/24", subnet.gateway());
        let setup = run("ip", &["addr", "add", &gw, "dev", &br]).and_then(|_| run("ip", &["link", "set", &br, "up"]));
        if let Err(e) = setup {
            run_quiet("ip", &["link", "del", &br]);
            return Err(e);
        }
        // Who owns the bridge, so that a later lab can clean up after a test process that was killed.
        let _ = std::fs::create_dir_all(OWNERS);
        let _ = std::fs::write(Path::new(OWNERS).join(subnet.tag()), std::process::id().to_string());
        return Ok(subnet);
    }
    bail!("no free 10.150-249.x.0/24 subnet for a lab bridge")
}

/// Where each lab records the pid of the process that owns it (`<dir>/<tag>`).
const OWNERS: &str = "/run/sailplane-lab";

/// Deletes the lab's bridge.
pub fn delete_bridge(subnet: Subnet) {
    run_quiet("ip", &["link", "del", &subnet.bridge()]);
    let _ = std::fs::remove_file(Path::new(OWNERS).join(subnet.tag()));
}

/// Removes the namespaces and bridges of labs whose owning process no longer exists (a test run
/// killed before its labs' teardown). Processes are left alone: only this run's are ours to stop.
fn remove_stale_labs() {
    let Ok(entries) = std::fs::read_dir(OWNERS) else { return };
    let netns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let netns = String::from_utf8_lossy(&netns).into_owned();
    for entry in entries.flatten() {
        let tag = entry.file_name().to_string_lossy().into_owned();
        let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let alive = !pid.trim().is_empty() && Path::new("/proc").join(pid.trim()).exists();
        if alive {
            continue;
        }
        for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&format!("sp{tag}-")) {
                delete_pod_netns(name);
            }
        }
        run_quiet("ip", &["link", "del", &format!("splab{tag}")]);
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Creates network namespace `netns` with `ip`/24 on a veth plugged into the lab bridge, loopback
/// up, and `/etc/netns/<netns>/hosts` (which `ip netns exec` mounts over `/etc/hosts`).
pub fn create_pod_netns(subnet: Subnet, netns: &str, veth: &str, ip: Ipv4Addr, hosts: &str) -> anyhow::Result<()> {
    let etc = Path::new("/etc/netns").join(netns);
    std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    std::fs::write(etc.join("hosts"), hosts).with_context(|| format!("writing {}/hosts", etc.display()))?;
    run("ip", &["netns", "add", netns])?;
    let peer = format!("{veth}p");
    run("ip", &["link", "add", veth, "type", "veth", "peer", "name", &peer])?;
    run("ip", &["link", "set", veth, "master", &subnet.bridge()])?;
    run("ip", &["link", "set", veth, "up"])?;
    run("ip", &["link", "set", &peer, "netns", netns])?;
    let addr = format!("{ip}/24");
    let gw = subnet.gateway().to_string();
    let in_ns: [&[&str]; 5] = [
        &["ip", "link", "set", "lo", "up"],
        &["ip", "link", "set", &peer, "name", "eth0"],
        &["ip", "addr", "add", &addr, "dev", "eth0"],
        &["ip", "link", "set", "eth0", "up"],
        &["ip", "route", "add", "default", "via", &gw],
    ];
    for cmd in in_ns {
        exec_in(netns, cmd)?;
    }
    Ok(())
}

/// Deletes a pod namespace (its veth goes with it) and its `/etc/netns` directory.
pub fn delete_pod_netns(netns: &str) {
    run_quiet("ip", &["netns", "del", netns]);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(netns));
}

/// Runs `cmd` inside `netns` and fails with its stderr on a non-zero exit.
pub fn exec_in(netns: &str, cmd: &[&str]) -> anyhow::Result<Output> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(cmd);
    run("ip", &args)
}

/// PIDs of every process in `netns` (all of them started by the lab, which made the namespace).
pub fn netns_pids(netns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Istio's `istio-iptables` rules for REDIRECT mode, in the pod's namespace: outbound TCP to 15001
/// except Envoy's own (uid 1337), loopback destinations and inbound-passthrough replies from
/// 127.0.0.6; inbound TCP to 15006 except the excluded ports.
pub fn install_istio_rules(netns: &str) -> anyhow::Result<()> {
    let uid = PROXY_UID.to_string();
    let excluded: Vec<String> = INBOUND_EXCLUDED_PORTS.iter().map(u16::to_string).collect();
    let excluded = excluded.join(",");
    let rules: Vec<Vec<&str>> = vec![
        vec!["-N", "ISTIO_INBOUND"],
        vec!["-N", "ISTIO_IN_REDIRECT"],
        vec!["-N", "ISTIO_OUTPUT"],
        vec!["-N", "ISTIO_REDIRECT"],
        vec!["-A", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        vec!["-A", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
        vec!["-A", "ISTIO_INBOUND", "-p", "tcp", "-m", "multiport", "--dports", &excluded, "-j", "RETURN"],
        vec!["-A", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT"],
        vec!["-A", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"],
        // Envoy's inbound passthrough binds 127.0.0.6 and connects to the pod IP over lo.
        vec!["-A", "ISTIO_OUTPUT", "-o", "lo", "-s", "127.0.0.6/32", "-j", "RETURN"],
        vec!["-A", "ISTIO_OUTPUT", "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
        vec!["-A", "ISTIO_OUTPUT", "-m", "owner", "--gid-owner", &uid, "-j", "RETURN"],
        vec!["-A", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"],
        vec!["-A", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"],
        vec!["-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"],
    ];
    for rule in rules {
        let mut cmd = vec!["iptables", "-w", "-t", "nat"];
        cmd.extend(rule);
        exec_in(netns, &cmd)?;
    }
    Ok(())
}

/// One service VIP port as kube-proxy programs it: traffic to `vip:port` is DNATed to one of
/// `endpoints` (`ip:targetPort`), chosen at random with equal weights.
#[derive(Debug, Clone)]
pub struct VipRule {
    /// Service cluster IP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// `(pod ip, target port)` of each ready endpoint.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// (Re)writes the pod's `LAB_SERVICES` chain with `rules`, jumped to from nat OUTPUT after the Istio
/// rules: application traffic of a sidecar pod is redirected to Envoy before it gets here, so only
/// pods without sidecars and Envoy's own passthrough connections use the DNAT.
pub fn install_service_rules(netns: &str, rules: &[VipRule]) -> anyhow::Result<()> {
    let chain = "LAB_SERVICES";
    let exists = exec_in(netns, &["iptables", "-w", "-t", "nat", "-L", chain, "-n"]).is_ok();
    if exists {
        exec_in(netns, &["iptables", "-w", "-t", "nat", "-F", chain])?;
    } else {
        exec_in(netns, &["iptables", "-w", "-t", "nat", "-N", chain])?;
        exec_in(netns, &["iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", chain])?;
    }
    for rule in rules {
        let n = rule.endpoints.len();
        for (i, (ip, target)) in rule.endpoints.iter().enumerate() {
            let vip = rule.vip.to_string();
            let dport = rule.port.to_string();
            let to = format!("{ip}:{target}");
            // kube-proxy's scheme: endpoint i of n matches with probability 1/(n-i), the last always.
            let probability = format!("{:.5}", 1.0 / (n - i) as f64);
            let mut cmd = vec!["iptables", "-w", "-t", "nat", "-A", chain, "-p", "tcp", "-d", &vip, "--dport", &dport];
            if i + 1 < n {
                cmd.extend(["-m", "statistic", "--mode", "random", "--probability", &probability]);
            }
            cmd.extend(["-j", "DNAT", "--to-destination", &to]);
            exec_in(netns, &cmd)?;
        }
    }
    Ok(())
}
