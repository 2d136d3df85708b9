//! The configuration directory a control plane watches, edited the way a user would.

use std::path::Path;

use anyhow::Context;
use tempfile::TempDir;

/// A temporary directory of YAML files, removed on drop.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    /// An empty directory.
    pub fn new() -> anyhow::Result<ConfigDir> {
        let dir = tempfile::Builder::new().prefix("sailplane-config-").tempdir()?;
        Ok(ConfigDir { dir })
    }

    /// A directory holding a copy of every regular file directly in `src`.
    pub fn copy_of(src: &Path) -> anyhow::Result<ConfigDir> {
        let out = Self::new()?;
        for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), out.path().join(entry.file_name()))?;
            }
        }
        Ok(out)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` with `text`, atomically (a hidden temporary file renamed into place), so the
    /// watcher never reads half a file.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path().join(name)).with_context(|| format!("renaming into {name}"))?;
        Ok(())
    }

    /// Reads `name`.
    pub fn read(&self, name: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path().join(name)).with_context(|| format!("reading {name}"))
    }

    /// Deletes `name`.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.path().join(name)).with_context(|| format!("removing {name}"))
    }
}
