//! Secret files: written 0600 atomically, refused when group- or world-readable. The
//! implementation is `berth_files`, shared with the agent.

use anyhow::Result;
use std::path::Path;

pub use berth_files::{check_secret_mode, create_private_dir, read_secret};

/// Writes `bytes` to `path` with mode 0600 (through a temp file and a rename, so a crash
/// never leaves a half-written secret).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    berth_files::write_durable(path, bytes, 0o600)
}

/// Writes a non-secret file atomically with mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    berth_files::write_durable(path, bytes, 0o644)
}
