//! The file source: a directory of multi-document YAML files, watched for changes.
//!
//! Each file is one origin. Editors save in many ways (write in place, write-and-rename, delete and
//! recreate), so a filesystem event only triggers a rescan of the directory; files whose content did
//! not change are not re-read into the store, so a rescan of an unchanged tree pushes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::store::{ConfigEvent, Store};

use super::yaml::parse_documents;

/// Name under which the file source reports its initial sync.
pub const SOURCE_NAME: &str = "files";

/// Errors starting the file source.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// The directory cannot be read.
    #[error("config directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The watcher could not be set up.
    #[error("watching {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The watcher error.
        source: notify::Error,
    },
}

/// Watches one directory and feeds the store.
pub struct FileSource {
    dir: PathBuf,
    store: Arc<Store>,
    /// Content hash per file, as last sent to the store.
    known: BTreeMap<PathBuf, u64>,
}

impl FileSource {
    /// A source for `dir`.
    pub fn new(dir: impl Into<PathBuf>, store: Arc<Store>) -> Self {
        Self { dir: dir.into(), store, known: BTreeMap::new() }
    }

    /// Reads the directory once, reports the initial sync, then follows changes until the task is
    /// dropped. Returns an error only if the directory cannot be read or watched at start.
    pub async fn run(mut self) -> Result<(), FileSourceError> {
        if !self.dir.is_dir() {
            return Err(FileSourceError::Dir {
                path: self.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })
        .map_err(|source| FileSourceError::Watch { path: self.dir.clone(), source })?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| FileSourceError::Watch { path: self.dir.clone(), source })?;

        self.rescan().await;
        self.store.apply(ConfigEvent::Synced { source: SOURCE_NAME.into() });
        info!(dir = %self.dir.display(), files = self.known.len(), "file source synced");

        while rx.recv().await.is_some() {
            // Let a burst of events (an editor's save, a `cp -r`) settle, then rescan once.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while rx.try_recv().is_ok() {}
            self.rescan().await;
        }
        drop(watcher);
        Ok(())
    }

    /// Compares the directory with what was last sent and sends the difference.
    pub async fn rescan(&mut self) {
        let dir = self.dir.clone();
        let files = match tokio::task::spawn_blocking(move || read_tree(&dir)).await {
            Ok(files) => files,
            Err(e) => {
                warn!(error = %e, "directory scan failed");
                return;
            }
        };
        let gone: Vec<PathBuf> = self.known.keys().filter(|p| !files.contains_key(*p)).cloned().collect();
        for path in gone {
            self.known.remove(&path);
            info!(file = %path.display(), "config file removed");
            self.store.apply(ConfigEvent::Remove { origin: path.display().to_string() });
        }
        for (path, text) in files {
            let hash = content_hash(&text);
            if self.known.get(&path) == Some(&hash) {
                continue;
            }
            self.known.insert(path.clone(), hash);
            let origin = path.display().to_string();
            let (objects, diagnostics) = parse_documents(&origin, &text);
            for d in &diagnostics {
                warn!(diagnostic = %d, "invalid config");
            }
            info!(file = %origin, objects = objects.len(), problems = diagnostics.len(), "config file read");
            self.store.apply(ConfigEvent::Upsert { origin, objects, diagnostics });
        }
    }
}

fn content_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Every `.yaml`, `.yml` and `.json` file below `dir` (hidden entries skipped), with its text.
/// Unreadable files are skipped with a warning; a file mid-write is picked up by its next event.
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                warn!(dir = %d.display(), error = %e, "cannot read directory");
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let is_config = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
            if !is_config {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    out.insert(path, text);
                }
                Err(e) => warn!(file = %path.display(), error = %e, "cannot read config file"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";

    #[tokio::test]
    async fn rescan_sends_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new([SOURCE_NAME]));
        let mut src = FileSource::new(dir.path(), Arc::clone(&store));
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        src.rescan().await;
        let g1 = *store.subscribe().borrow();
        assert_eq!(store.view().objects.len(), 1);
        src.rescan().await;
        assert_eq!(*store.subscribe().borrow(), g1, "unchanged tree must not bump the generation");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        src.rescan().await;
        assert!(store.view().objects.is_empty());
    }

    #[tokio::test]
    async fn watches_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new([SOURCE_NAME]));
        let mut rx = store.subscribe();
        let task = tokio::spawn(FileSource::new(dir.path(), Arc::clone(&store)).run());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.synced() {
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.yaml"), SVC).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.view().objects.is_empty() {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("new file in a new subdirectory is picked up");
        task.abort();
    }
}
