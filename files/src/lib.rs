//! Durable and private files, the one implementation the controller (PKI, admin token,
//! `controller.json`) and the agent (identity, journal, spool, cluster files) share.
//!
//! Architecture invariant: a file written here is either the old one or the new one after
//! a crash (temp file, fsync, rename, directory fsync), and secrets are 0600 exactly (the
//! umask does not widen or narrow it) and refused when group- or world-readable.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `path` (it must not exist) with exactly `mode`, writes `bytes`, fsyncs.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The mode passed to open() is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` durably and atomically with exactly `mode`: the bytes go to a hidden
/// temp file beside it, are fsynced, renamed over `path`, and the directory is fsynced.
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
    write_new(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// fsyncs a directory so a rename inside it is durable (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Fails with a message that says how to fix it when `path` is group- or world-accessible.
pub fn check_secret_mode(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("cannot stat secret file {}", path.display()))?
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

/// Reads a secret file, refusing it when its mode lets the group or others read it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    check_secret_mode(path)?;
    fs::read(path).with_context(|| format!("cannot read secret file {}", path.display()))
}

/// Creates `path` (it must not exist) with mode 0600 exactly, for streaming a private
/// file into (the caller fsyncs when it needs to).
pub fn create_new_private(path: &Path) -> Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Raises this process's soft limit of open files to its hard limit and returns the new
/// soft limit. Every agent connection is a file descriptor on the controller; the default
/// soft limit (1024 on most systems) caps a controller near a thousand agents.
pub fn raise_open_files_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Creates `dir` (and parents) with mode 0700 when missing, and sets 0700 on it.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durable_writes_replace_with_the_exact_mode_and_leave_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_durable(&p, b"one", 0o600).unwrap();
        write_durable(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(check_secret_mode(&p).is_ok());
        assert!(
            write_new(&p, b"x", 0o600).is_err(),
            "write_new never overwrites"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(
            e.contains("has mode 0640, which lets other users read it; run `chmod 600"),
            "{e}"
        );
    }
}
