//! Secret files: written 0600 atomically, refused when group- or world-readable.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` with mode 0600 (through a temp file and a rename, so a crash
/// never leaves a half-written secret).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_mode(path, bytes, 0o600)
}

/// Writes a non-secret file atomically with mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_mode(path, bytes, 0o644)
}

fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    // The mode passed to open() is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a secret file, refusing it when its mode lets the group or others read it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    check_secret_mode(path)?;
    fs::read(path).with_context(|| format!("cannot read secret file {}", path.display()))
}

/// Fails with a message that says how to fix it when `path` is group- or world-accessible.
pub fn check_secret_mode(path: &Path) -> Result<()> {
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot stat secret file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "secret file {} has mode {:04o}, which lets other users read it; \
             run `chmod 600 {}` and start again",
            path.display(),
            mode,
            path.display()
        );
    }
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    Ok(())
}
