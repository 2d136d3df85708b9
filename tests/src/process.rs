//! Child processes a test starts by hand (an Envoy with a hand-written bootstrap, `sailplane agent`):
//! [`Proc`] owns one, sends its output to a log file, and stops it on drop, printing the log's tail
//! (captured by the test harness, so shown for failing tests only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::log_tail;

/// A child process stopped (and reaped) on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
    terminate_first: bool,
}

impl Proc {
    /// Spawns `cmd` named `name` (for messages), stdin closed, stdout and stderr to the file `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().with_context(|| format!("spawning {name}"))?;
        Ok(Proc { child, log: log.to_path_buf(), name: name.to_string(), terminate_first: false })
    }

    /// On drop, sends SIGTERM first and waits up to 10 s before SIGKILL (`sailplane agent` then stops
    /// the Envoy it supervises; a SIGKILL would orphan it).
    pub fn terminate_first(mut self) -> Proc {
        self.terminate_first = true;
        self
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The child itself (to wait for it, or signal it).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    fn terminate(&mut self) -> bool {
        let Some(pid) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) else {
            return false;
        };
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !(self.terminate_first && self.terminate()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        eprintln!("--- {} log (last lines) ---\n{}", self.name, log_tail(&self.log, 40));
    }
}
