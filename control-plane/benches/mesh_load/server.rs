//! The `sailplane discovery` child process: start, readiness, CPU and RSS from /proc, and a guard that
//! kills exactly this child (by its handle, i.e. its PID) when dropped, also on panic. A watchdog
//! kills it when its RSS passes a limit, so a run cannot exhaust the shared machine's memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// utime + stime in seconds.
    pub cpu_s: f64,
    /// Resident set size in MiB.
    pub rss_mb: f64,
    /// Peak resident set size in MiB.
    pub hwm_mb: f64,
}

/// Reads /proc/PID/stat and /proc/PID/status.
pub fn proc_stats(pid: u32) -> ProcStats {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces; the fields after it start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // Fields 14 and 15 (utime, stime), in clock ticks of 10 ms (USER_HZ = 100).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ProcStats { cpu_s: ticks as f64 / 100.0, rss_mb: kb("VmRSS:") / 1024.0, hwm_mb: kb("VmHWM:") / 1024.0 }
}

/// A free loopback port (bound and released; the window for a clash is small).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `sailplane discovery`.
pub struct Server {
    child: Child,
    /// Its PID.
    pub pid: u32,
    /// ADS address.
    pub xds: SocketAddr,
    /// Monitoring address (`/ready`, `/metrics`).
    pub monitoring: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    stop: Arc<AtomicBool>,
    /// Set when the watchdog killed it for its memory.
    pub killed_for_rss: Arc<AtomicBool>,
}

impl Server {
    /// Starts `sailplane discovery` on `config`, with its state (CA) under `scratch`.
    pub fn start(config: &Path, scratch: &Path, extra: &[String], max_rss_mb: f64) -> Server {
        let bin = env!("CARGO_BIN_EXE_sailplane");
        let (xds, mon, secure) = (free_port(), free_port(), free_port());
        let log = scratch.join("sailplane.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(bin)
            .arg("discovery")
            .arg("--config")
            .arg(config)
            .args(["--xds-port", &xds.to_string()])
            .args(["--monitoring-port", &mon.to_string()])
            .args(["--secure-port", &secure.to_string()])
            .args(["--listen-address", "127.0.0.1"])
            .arg("--ca-dir")
            .arg(scratch.join("ca"))
            .args(extra)
            .env("RUST_LOG", std::env::var("MESH_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let pid = child.id();
        let stop = Arc::new(AtomicBool::new(false));
        let killed_for_rss = Arc::new(AtomicBool::new(false));
        {
            let (stop, killed) = (stop.clone(), killed_for_rss.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if proc_stats(pid).rss_mb > max_rss_mb && !stop.load(Ordering::Acquire) {
                        eprintln!("!! server RSS above --max-rss-mb {max_rss_mb}: killing it (pid {pid})");
                        killed.store(true, Ordering::Release);
                        // Our own child: it stays a zombie (the PID is not reused) until the guard
                        // waits for it.
                        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
        Server {
            child,
            pid,
            xds: SocketAddr::from(([127, 0, 0, 1], xds)),
            monitoring: SocketAddr::from(([127, 0, 0, 1], mon)),
            log,
            stop,
            killed_for_rss,
        }
    }

    /// Waits for `/ready` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited ({status}); log:\n{}", self.log_tail(20)));
            }
            if let Ok((200, _)) = http_get(self.monitoring, "/ready", "localhost", Duration::from_secs(2)) {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not ready after {timeout:?}; log:\n{}", self.log_tail(20)))
    }

    /// CPU and memory now.
    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid)
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Counts of ERROR and WARN lines in its log, and a few distinct examples.
    pub fn log_summary(&self) -> (usize, usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let (mut errors, mut warns, mut examples) = (0, 0, Vec::<String>::new());
        for l in text.lines() {
            let e = l.contains("ERROR");
            let w = l.contains("WARN");
            errors += usize::from(e);
            warns += usize::from(w);
            if (e || w) && examples.len() < 5 {
                // Drop the timestamp so repeats collapse.
                let key: String = l.split_once(' ').map_or(l, |(_, r)| r).chars().take(300).collect();
                if !examples.contains(&key) {
                    examples.push(key);
                }
            }
        }
        (errors, warns, examples)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Our own child, by its handle (SIGKILL to its PID), then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on a fresh connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, host: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    // Read until the body is complete (content-length): Envoy keeps a closed-by-header connection
    // open for its delayed-close timeout (1 s), so waiting for EOF would time every request at 1 s.
    let mut resp = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&chunk[..n]);
        if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| resp.len() >= end + 4 + len) {
                break;
            }
        }
    }
    parse_http(&resp)
}

/// Status and body of an HTTP/1.1 response (body as received; no chunked decoding needed for a
/// substring check).
pub fn parse_http(resp: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(resp);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        std::io::Error::other(format!("bad response {:?}", text.chars().take(80).collect::<String>()))
    })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
