//! `OUTPUT_CERTS=DIR`: the workload certificate as files, for VMs and for gateways that read
//! certificates from disk (EnRoute's cert-server serves these files over SDS). Same names as
//! pilot-agent: `key.pem` (mode 0600), `cert-chain.pem`, `root-cert.pem`.
//!
//! Each file is replaced atomically (written to a temporary file in the same directory, then
//! renamed), so a reader sees the old or the new content, never half of it. The three files are
//! replaced one after another (key first): a reader that needs a matching pair reads again when a
//! file changes, as file watchers do.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::secrets::WorkloadSecret;

/// Private key file.
pub const KEY_FILE: &str = "key.pem";
/// Certificate chain file.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// Root certificate file.
pub const ROOT_FILE: &str = "root-cert.pem";

/// Writing a file failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct OutputError {
    /// File.
    pub path: String,
    /// Cause.
    pub source: std::io::Error,
}

/// Writes `contents` to `path` atomically with permission bits `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), OutputError> {
    let err = |source| OutputError { path: path.display().to_string(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        // `mode` applies at creation: a key is never readable by others, not even for a moment.
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: do not leave a temporary file behind; the original error is what matters.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Writes the workload certificate files into `dir` (created if missing).
pub fn write_certs(dir: &Path, secret: &WorkloadSecret) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError { path: dir.display().to_string(), source })?;
    write_atomic(&dir.join(KEY_FILE), secret.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(CHAIN_FILE), secret.chain_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join(ROOT_FILE), secret.root_pem.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn files_are_replaced_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let mut s = WorkloadSecret {
            chain_pem: "chain1".into(),
            key_pem: "key1".into(),
            root_pem: "root1".into(),
            created: SystemTime::now(),
            not_after: SystemTime::now(),
        };
        write_certs(&out, &s).unwrap();
        let key_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(out.join(KEY_FILE)).unwrap());
        s.key_pem = "key2".into();
        s.chain_pem = "chain2".into();
        write_certs(&out, &s).unwrap();
        assert_eq!(std::fs::read_to_string(out.join(KEY_FILE)).unwrap(), "key2");
        assert_eq!(std::fs::read_to_string(out.join(CHAIN_FILE)).unwrap(), "chain2");
        assert_eq!(std::fs::read_to_string(out.join(ROOT_FILE)).unwrap(), "root1");
        let meta = std::fs::metadata(out.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&meta), key_inode, "replaced by rename, not rewritten");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
