//! Container image layers applied to a directory, in order, as a container runtime's
//! snapshotter would: gzip, zstd or plain tar, OCI whiteouts (`.wh.NAME` removes `NAME` of
//! the layers below, `.wh..wh..opq` empties its directory of them), and every entry held to
//! the rules and limits of a bundle unpack (`crate::unpack`): no absolute paths or `..`, no
//! links that escape, no writing through a symlink, no devices or fifos, bounded entries,
//! file sizes and total size, setuid/setgid bits stripped.
//!
//! A layer's bytes are checked against the digests the image names before anything of it is
//! trusted: the compressed blob's (`digest`, checked in a pass of its own before the layer is
//! applied) and the uncompressed tar's (`diff_id`, checked as it is applied; a mismatch fails
//! the import, whose directory is then thrown away).

use crate::hashio::HashingReader;
use crate::unpack::{
    checked_existing, corrupt, entry_err, hardlink_target, io_at, no_data, prepare, symlink_target,
    write_file, UnpackError,
};
use berth_shared::{Digest, SafeRelPath};
use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// The prefix of a whiteout entry's name.
const WHITEOUT: &str = ".wh.";
/// The name of an opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

/// What the layers of one image have used of the limits, together.
pub use crate::unpack::Budget;

/// How a layer's bytes are compressed, from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader of `r`'s bytes, decompressed as their first bytes say.
pub fn decompressed<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let head = r.fill_buf()?;
    Ok(match Compression::sniff(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
    })
}

/// Checks that the file at `path` hashes to `want`.
pub fn verify_blob(path: &Path, want: &Digest, what: &str) -> Result<(), UnpackError> {
    let (got, _) = crate::hashio::digest_file(path).map_err(io_at(path))?;
    if &got != want {
        return Err(UnpackError::Archive(format!(
            "{what} hashes to {got}, not {want} as the image says; the archive is corrupt or was altered"
        )));
    }
    Ok(())
}

/// Applies the layer at `path` to `dest`. `diff_id`, when the image names one, is the
/// sha256 the uncompressed tar must have.
pub fn apply(
    path: &Path,
    diff_id: Option<&Digest>,
    dest: &Path,
    budget: &mut Budget,
    what: &str,
) -> Result<(), UnpackError> {
    let file = fs::File::open(path).map_err(io_at(path))?;
    let mut tar_bytes = HashingReader::new(
        decompressed(file)
            .map_err(|e| UnpackError::Archive(format!("{what}: not a readable layer: {e}")))?,
    );
    apply_tar(&mut tar_bytes, dest, budget)?;
    // The tar's end marker may be followed by padding: it is part of the diff_id.
    io::copy(&mut tar_bytes, &mut io::sink())
        .map_err(|e| UnpackError::Archive(format!("{what}: corrupt or truncated: {e}")))?;
    let (got, _) = tar_bytes.finish();
    if let Some(want) = diff_id {
        if &got != want {
            return Err(UnpackError::Archive(format!(
                "{what}: uncompressed it hashes to {got}, not {want} as the image config's diff_ids say; the archive is corrupt or was altered"
            )));
        }
    }
    Ok(())
}

fn apply_tar<R: Read>(r: R, dest: &Path, budget: &mut Budget) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(r);
    // What this layer wrote: whiteouts and opaque markers hide only the layers below.
    let mut created: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 1 << 20];
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let (name, size) = budget.entry(&entry)?;
        // The layer's root directory (`./`) is the destination itself.
        if name.split('/').all(|c| c.is_empty() || c == ".") {
            continue;
        }
        let rel = SafeRelPath::new(&name).map_err(|e| entry_err(&name, e.to_string()))?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(corrupt)? & 0o7777 & !0o6000;
        let base = rel.as_str().rsplit('/').next().unwrap_or_default();
        if let Some(hidden) = base.strip_prefix(WHITEOUT) {
            let parent = rel.parent();
            if base == OPAQUE {
                empty_below(dest, parent.as_ref(), &created)?;
            } else {
                let gone = match &parent {
                    Some(p) => format!("{p}/{hidden}"),
                    None => hidden.to_string(),
                };
                let gone = SafeRelPath::new(&gone).map_err(|e| entry_err(&name, e.to_string()))?;
                if !created.contains(gone.as_str()) {
                    remove_below(dest, &gone)?;
                }
            }
            continue;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.file(&name, size)?;
                let target = prepare(dest, &rel, false)?;
                write_file(&mut entry, &target, &name, size, mode, &mut buf)?;
            }
            tar::EntryType::Directory => {
                no_data(&name, size)?;
                let target = prepare(dest, &rel, true)?;
                // Kept writable for the layers above; packing records the mode as it is.
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_at(&target))?;
            }
            tar::EntryType::Symlink => {
                no_data(&name, size)?;
                let link = symlink_target(&entry, &name, &rel)?;
                let target = prepare(dest, &rel, false)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
            }
            tar::EntryType::Link => {
                no_data(&name, size)?;
                let link_rel = hardlink_target(&entry, &name)?;
                let source = checked_existing(dest, &link_rel)?;
                if !fs::symlink_metadata(&source)
                    .map_err(io_at(&source))?
                    .is_file()
                {
                    return Err(entry_err(
                        &name,
                        format!("hardlink target `{link_rel}` is not a regular file"),
                    ));
                }
                let target = prepare(dest, &rel, false)?;
                fs::hard_link(&source, &target).map_err(io_at(&target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(entry_err(
                    &name,
                    "device and fifo entries are not allowed in bundles",
                ));
            }
            // PAX and GNU long-name headers are read by the tar crate; anything else left
            // (sparse files, unknown types) is refused as in bundles.
            other => {
                return Err(entry_err(
                    &name,
                    format!("entry type {other:?} is not allowed in bundles"),
                ));
            }
        }
        created.insert(rel.as_str().to_string());
    }
    Ok(())
}

/// Removes whatever is at `rel` (a whiteout), reached without following symlinks; nothing
/// there is fine.
fn remove_below(dest: &Path, rel: &SafeRelPath) -> Result<(), UnpackError> {
    let Some(path) = reachable(dest, rel)? else {
        return Ok(());
    };
    let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
    if meta.is_dir() {
        fs::remove_dir_all(&path).map_err(io_at(&path))
    } else {
        fs::remove_file(&path).map_err(io_at(&path))
    }
}

/// Empties the directory `rel` (the root for `None`) of what the layers below put there
/// (an opaque marker); entries this layer created stay.
fn empty_below(
    dest: &Path,
    rel: Option<&SafeRelPath>,
    created: &HashSet<String>,
) -> Result<(), UnpackError> {
    let dir = match rel {
        Some(r) => match reachable(dest, r)? {
            Some(p) => p,
            None => return Ok(()),
        },
        None => dest.to_path_buf(),
    };
    if !fs::symlink_metadata(&dir).map_err(io_at(&dir))?.is_dir() {
        return Ok(());
    }
    for child in fs::read_dir(&dir).map_err(io_at(&dir))? {
        let child = child.map_err(io_at(&dir))?;
        let child_name = child.file_name().to_string_lossy().into_owned();
        let child_rel = match rel {
            Some(r) => format!("{r}/{child_name}"),
            None => child_name,
        };
        if created.contains(&child_rel) {
            continue;
        }
        let p = child.path();
        if child.file_type().map_err(io_at(&p))?.is_dir() {
            fs::remove_dir_all(&p).map_err(io_at(&p))?;
        } else {
            fs::remove_file(&p).map_err(io_at(&p))?;
        }
    }
    Ok(())
}

/// The path of `rel` under `dest` when every ancestor is a real directory (not a symlink)
/// and something is there; `None` when it does not exist.
fn reachable(dest: &Path, rel: &SafeRelPath) -> Result<Option<std::path::PathBuf>, UnpackError> {
    let mut cur = dest.to_path_buf();
    let comps: Vec<&str> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if i + 1 < comps.len() && m.file_type().is_symlink() => {
                return Err(entry_err(
                    rel.as_str(),
                    format!(
                        "whiteout would reach through the symlink `{}`",
                        comps[..=i].join("/")
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&cur)(e)),
        }
    }
    Ok(Some(cur))
}
