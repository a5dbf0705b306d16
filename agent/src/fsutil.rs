//! Durable, private file writes for the agent's data dir.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes a file with `mode`, fsynced.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` durably and atomically: the bytes go to a hidden temp file beside it
/// (created with `mode`), are fsynced, renamed over `path`, and the directory is fsynced.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, bytes, mode)?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Refuses a secret file that its group or others can read.
pub fn check_secret_mode(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "secret file {} has mode {:04o}, which lets other users read it; run `chmod 600 {}` and start again",
            path.display(),
            mode,
            path.display()
        );
    }
    Ok(())
}

/// fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
