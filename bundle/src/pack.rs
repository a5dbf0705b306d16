//! `berth bundle build`: a directory → a reproducible `tar.zst`.
//!
//! Same directory, same bytes: entries are sorted by path with `bundle.yaml` first, mtimes
//! are 0, owners are 0/0 with empty names, and nothing host-specific is recorded. File modes
//! (permission, setuid/setgid and sticky bits) and symlinks are kept.
//!
//! A directory with a `*.tmpl` file that does not parse is refused, naming the file and
//! line, so a broken template is found on the build machine rather than on every host.

use crate::config::{check_templates, ConfigError};
use crate::hashio::HashingWriter;
use crate::template::TemplateError;
use berth_shared::bundle::{Manifest, ManifestError, MANIFEST_FILE};
use berth_shared::{Digest, SafeRelPath};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// zstd level used for bundles (fast to build, fast to unpack).
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{dir}: no bundle.yaml; a bundle directory needs one (see docs/bundles.md)")]
    NoManifest { dir: PathBuf },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("{path}: {why}")]
    Entry { path: PathBuf, why: String },
    /// A `*.tmpl` file that does not parse (or is too large, or not UTF-8).
    #[error("{path}: {source}")]
    Template {
        path: PathBuf,
        #[source]
        source: TemplateError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The result of packing.
#[derive(Debug, Clone)]
pub struct Packed {
    pub digest: Digest,
    pub size: u64,
    pub manifest: Manifest,
    pub entries: u64,
}

/// Reads and validates `DIR/bundle.yaml`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, PackError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PackError::NoManifest {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    Manifest::parse(&text, |p: &SafeRelPath| {
        fs::symlink_metadata(dir.join(p.as_str()))
            .map(|m| m.is_file())
            .unwrap_or(false)
    })
    .map_err(|source| PackError::Manifest { path, source })
}

/// Packs `dir` into `out` (written through a temp file and renamed, so `out` is whole or
/// absent).
pub fn pack(dir: &Path, out: &Path) -> Result<Packed, PackError> {
    let manifest = read_manifest(dir)?;
    check_templates(dir).map_err(|e| match e {
        ConfigError::Template { path, source } => PackError::Template {
            path: dir.join(path),
            source,
        },
        ConfigError::Io { path, source } => PackError::Io { path, source },
        other => PackError::Entry {
            path: dir.to_path_buf(),
            why: other.to_string(),
        },
    })?;
    let tmp = out.with_extension("partial");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let result = pack_into(dir, BufWriter::with_capacity(1 << 20, file));
    let (digest, size, entries) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(Packed {
        digest,
        size,
        manifest,
        entries,
    })
}

fn pack_into<W: Write>(dir: &Path, w: W) -> Result<(Digest, u64, u64), PackError> {
    let hashing = HashingWriter::new(w);
    let mut enc = zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(io_err(dir))?;
    enc.include_checksum(true).map_err(io_err(dir))?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);

    let mut count = 0u64;
    // bundle.yaml first, so readers find the manifest without unpacking anything else.
    append(&mut tar, dir, Path::new(MANIFEST_FILE))?;
    count += 1;
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let entry = entry.map_err(|e| PackError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|_| PackError::Entry {
                path: entry.path().to_path_buf(),
                why: "outside the bundle directory".into(),
            })?
            .to_path_buf();
        if rel == Path::new(MANIFEST_FILE) {
            continue;
        }
        append(&mut tar, dir, &rel)?;
        count += 1;
    }
    let enc = tar.into_inner().map_err(io_err(dir))?;
    let hashing = enc.finish().map_err(io_err(dir))?;
    let (mut w, digest, size) = hashing.finish();
    w.flush().map_err(io_err(dir))?;
    Ok((digest, size, count))
}

fn append<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<(), PackError> {
    let full = dir.join(rel);
    let rel_str = rel.to_str().ok_or_else(|| PackError::Entry {
        path: full.clone(),
        why: "file names must be UTF-8".into(),
    })?;
    let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
    let ft = meta.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(meta.permissions().mode() & 0o7777);
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, rel_str, io::empty())
            .map_err(io_err(&full))?;
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        let f = fs::File::open(&full).map_err(io_err(&full))?;
        tar.append_data(&mut h, rel_str, f).map_err(io_err(&full))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(&full).map_err(io_err(&full))?;
        let target_str = target.to_str().ok_or_else(|| PackError::Entry {
            path: full.clone(),
            why: "symlink target must be UTF-8".into(),
        })?;
        if let Err(why) = crate::unpack::check_symlink_target(rel_str, target_str) {
            return Err(PackError::Entry {
                path: full,
                why: format!("{why}; agents refuse such bundles"),
            });
        }
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, rel_str, target_str)
            .map_err(io_err(&full))?;
    } else {
        return Err(PackError::Entry {
            path: full,
            why: "sockets, fifos and device files cannot go into a bundle".into(),
        });
    }
    Ok(())
}
