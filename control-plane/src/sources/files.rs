//! The file source: a directory of multi-document YAML files, watched for changes.
//!
//! Each file is one origin. Editors save in many ways (write in place, write-and-rename, delete and
//! recreate), so events are only hints: after a burst settles, the files the events named are read
//! again (a file that is gone is removed), and an event that names a directory or no path at all
//! (a rename of a folder, a watcher overflow) makes the whole tree be rescanned. Files whose content
//! did not change are not sent to the store again, so a rescan of an unchanged tree pushes nothing.
//!
//! Events that only say a file was opened or read are ignored. Without that, every rescan (which
//! opens every file) would wake the watcher again, and an idle control plane would read its whole
//! directory in a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
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
    stats: Arc<FileSourceStats>,
}

/// Counters of a running [`FileSource`] (for tests and debugging).
#[derive(Debug, Default)]
pub struct FileSourceStats {
    /// Whole-tree scans, the initial one included.
    pub full_scans: AtomicU64,
    /// Files read again because an event named them.
    pub file_reads: AtomicU64,
}

/// What the watcher saw during one burst.
#[derive(Debug, Default)]
struct Changes {
    /// Files named by events.
    paths: BTreeSet<PathBuf>,
    /// An event named a directory, or no path: only a full rescan is sure to see everything.
    rescan: bool,
}

/// Whether an event may mean content changed. Opening, reading and closing a file without writing
/// it, and access-time updates, do not.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

impl FileSource {
    /// A source for `dir`.
    pub fn new(dir: impl Into<PathBuf>, store: Arc<Store>) -> Self {
        Self { dir: dir.into(), store, known: BTreeMap::new(), stats: Arc::default() }
    }

    /// The source's counters, shared with the running task.
    pub fn stats(&self) -> Arc<FileSourceStats> {
        Arc::clone(&self.stats)
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
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // An error (for example a queue overflow) loses events: ask for a full rescan.
            let _ = tx.send(res.ok());
        })
        .map_err(|source| FileSourceError::Watch { path: self.dir.clone(), source })?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| FileSourceError::Watch { path: self.dir.clone(), source })?;

        self.rescan().await;
        self.store.apply(ConfigEvent::Synced { source: SOURCE_NAME.into() });
        info!(dir = %self.dir.display(), files = self.known.len(), "file source synced");

        while let Some(first) = rx.recv().await {
            let mut changes = Changes::default();
            changes.add(first, &self.dir, &self.known);
            if changes.is_empty() {
                continue;
            }
            // Let a burst of events (an editor's save, a `cp -r`) settle, then read once.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(event) = rx.try_recv() {
                changes.add(event, &self.dir, &self.known);
            }
            if changes.rescan {
                self.rescan().await;
            } else {
                self.reread(changes.paths).await;
            }
        }
        drop(watcher);
        Ok(())
    }

    /// Reads the named files again and sends what changed; a file that is gone is removed.
    async fn reread(&mut self, paths: BTreeSet<PathBuf>) {
        let paths: Vec<PathBuf> = paths.into_iter().filter(|p| is_config_file(p)).collect();
        if paths.is_empty() {
            return;
        }
        self.stats.file_reads.fetch_add(paths.len() as u64, Ordering::Relaxed);
        let read = tokio::task::spawn_blocking(move || {
            paths.into_iter().map(|p| (std::fs::read_to_string(&p), p)).collect::<Vec<_>>()
        })
        .await;
        let Ok(read) = read else {
            warn!("reading changed files failed; rescanning the directory");
            return self.rescan().await;
        };
        for (text, path) in read {
            match text {
                Ok(text) => self.send_file(path, text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.send_removed(path),
                // A file mid-write, or without permission: its next event brings it.
                Err(e) => warn!(file = %path.display(), error = %e, "cannot read config file"),
            }
        }
    }

    /// Compares the directory with what was last sent and sends the difference.
    pub async fn rescan(&mut self) {
        self.stats.full_scans.fetch_add(1, Ordering::Relaxed);
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
            self.send_removed(path);
        }
        for (path, text) in files {
            self.send_file(path, text);
        }
    }

    /// Sends a file's objects, unless its content is what was last sent.
    fn send_file(&mut self, path: PathBuf, text: String) {
        let hash = content_hash(&text);
        if self.known.get(&path) == Some(&hash) {
            return;
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

    /// Removes a file's objects, if it had been sent.
    fn send_removed(&mut self, path: PathBuf) {
        if self.known.remove(&path).is_some() {
            info!(file = %path.display(), "config file removed");
            self.store.apply(ConfigEvent::Remove { origin: path.display().to_string() });
        }
    }
}

impl Changes {
    /// Takes in one watcher event; `dir` is the watched directory and `known` the files sent so far.
    fn add(&mut self, event: Option<notify::Event>, dir: &Path, known: &BTreeMap<PathBuf, u64>) {
        let Some(event) = event else {
            self.rescan = true;
            return;
        };
        if !may_change_content(&event.kind) {
            return;
        }
        if event.need_rescan() || event.paths.is_empty() {
            self.rescan = true;
        }
        for path in event.paths {
            // Hidden entries below the watched directory are not read (editors' swap files).
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let hidden = relative.components().any(|c| c.as_os_str().to_str().is_some_and(|n| n.starts_with('.')));
            if hidden {
                continue;
            }
            if path.is_dir() {
                // A directory created or moved in: its files are not named one by one.
                self.rescan = true;
            } else if path.exists() || is_config_file(&path) {
                self.paths.insert(path);
            } else if known.keys().any(|k| k.starts_with(&path)) {
                // A directory removed or moved away: the files we had from it are gone.
                self.rescan = true;
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.rescan && self.paths.is_empty()
    }
}

/// Whether Sailplane reads a file with this name (`.yaml`, `.yml`, `.json`, not hidden).
fn is_config_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    !hidden && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
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
            if !is_config_file(&path) {
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

    /// Opening and reading files (as every rescan does) is not a change: an idle source stays idle.
    /// An edit re-reads the file it names, not the tree.
    #[tokio::test]
    async fn reads_do_not_wake_the_watcher_and_edits_reread_one_file() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("ns-{i}.yaml")), SVC.replace("demo", &format!("demo-{i}"))).unwrap();
        }
        let store = Arc::new(Store::new([SOURCE_NAME]));
        let mut rx = store.subscribe();
        let source = FileSource::new(dir.path(), Arc::clone(&store));
        let stats = source.stats();
        let task = tokio::spawn(source.run());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.synced() {
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(store.view().objects.len(), 20);
        for _ in 0..5 {
            for i in 0..20 {
                std::fs::read_to_string(dir.path().join(format!("ns-{i}.yaml"))).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(stats.full_scans.load(Ordering::Relaxed), 1, "reads caused rescans");
        assert_eq!(stats.file_reads.load(Ordering::Relaxed), 0, "reads caused re-reads");
        std::fs::write(dir.path().join("ns-3.yaml"), SVC.replace("demo", "renamed")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.view().objects.iter().any(|o| o.key().name == "renamed") {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the edit is picked up");
        assert_eq!(stats.full_scans.load(Ordering::Relaxed), 1, "an edit of one file rescanned the tree");
        assert!(stats.file_reads.load(Ordering::Relaxed) >= 1);
        std::fs::remove_file(dir.path().join("ns-4.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.view().objects.len() != 19 {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the removal is picked up");
        task.abort();
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
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !store.view().objects.is_empty() {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("removing a directory removes its files' objects");
        task.abort();
    }
}
