//! `berth backup` and `berth restore`: a consistent online snapshot of a controller in one
//! file, and a new data dir made from it that the existing agents keep talking to (same
//! CA, same keys, same hosts and clusters).
//!
//! The archive is a tar: `backup.json` (what is inside, with every blob's digest and size)
//! first, then `berth.db` (SQLite `VACUUM INTO`, taken while serving), `pki/*` (CA, keys,
//! admin token — the file is as secret as the data dir) and the content-addressed files,
//! `blobs/sha256/<hex>` and `agent-binaries/sha256/<hex>`. Both `berth backup` (before it
//! keeps the file) and `berth restore` (before it writes anything) read the whole archive
//! and check every digest.

use crate::blobs::BlobStore;
use crate::pki::PkiPaths;
use crate::store::Store;
use crate::tarfile::append;
use anyhow::{bail, Context, Result};
use berth_bundle::hashio::HashingReader;
use berth_shared::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "backup.json";
pub const FORMAT: &str = "berth-backup/v1";
const DB: &str = "berth.db";
/// The PKI files a backup carries (those present are taken; ca.crt and ca.key must be).
const PKI_FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "server.sans",
    "plan-signing.key",
    "admin.token",
];
const MAX_SMALL: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub berth_version: String,
    /// RFC 3339.
    pub created_at: String,
    pub ca_hash: Digest,
    /// sha256 of the database snapshot.
    pub database: Digest,
    /// PKI file name → sha256.
    pub pki: BTreeMap<String, Digest>,
    /// Bundle blobs, digest → size.
    pub blobs: BTreeMap<Digest, u64>,
    /// Agent executables, digest → size.
    pub agent_binaries: BTreeMap<Digest, u64>,
    /// Blobs of the images the registry serves, digest → size (none in backups made
    /// before the registry).
    #[serde(default)]
    pub images: BTreeMap<Digest, u64>,
}

impl Manifest {
    /// The content-addressed files, by directory: bundles, agent executables, images.
    fn lists(&self) -> [(&'static str, &BTreeMap<Digest, u64>); 3] {
        [
            ("blobs", &self.blobs),
            ("agent-binaries", &self.agent_binaries),
            ("images", &self.images),
        ]
    }
}

/// Writes the backup of a running controller into `out` (blocking; run on a blocking
/// thread). `snapshot` is the database copy taken for it; `pki` the PKI files as read when
/// the manifest was made (a certificate renewed meanwhile does not tear the backup).
pub fn write_archive(
    out: impl Write,
    snapshot: &Path,
    pki: &[(String, Vec<u8>)],
    manifest: &Manifest,
    stores: &[BlobStore; 3],
) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    let json = serde_json::to_vec_pretty(manifest)?;
    append(&mut b, MANIFEST, json.len() as u64, 0o600, &json[..])?;
    let db = std::fs::File::open(snapshot).context("database snapshot")?;
    append(&mut b, DB, db.metadata()?.len(), 0o600, db)?;
    for (name, bytes) in pki {
        append(
            &mut b,
            &format!("pki/{name}"),
            bytes.len() as u64,
            0o600,
            &bytes[..],
        )?;
    }
    for (store, (prefix, list)) in stores.iter().zip(manifest.lists()) {
        for (digest, size) in list {
            let f = std::fs::File::open(store.path(digest))
                .with_context(|| format!("{prefix} {digest}"))?;
            // Content-addressed files never change; the size is checked on restore.
            append(
                &mut b,
                &format!("{prefix}/sha256/{}", digest.hex()),
                *size,
                0o600,
                f.take(*size),
            )?;
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// The PKI files present in `data_dir` that a backup takes, with their bytes.
pub fn read_pki(data_dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = PkiPaths::new(data_dir).dir;
    PKI_FILES
        .iter()
        .filter(|n| dir.join(n).is_file())
        .map(|n| {
            let bytes = std::fs::read(dir.join(n)).with_context(|| format!("pki/{n}"))?;
            Ok((n.to_string(), bytes))
        })
        .collect()
}

/// Where an archive entry goes under a data dir and the sha256 (and size, `u64::MAX` for
/// any) it must have, or why it is refused.
fn destination(path: &str, m: &Manifest) -> Result<(PathBuf, Option<(Digest, u64)>), String> {
    if path == DB {
        return Ok((PathBuf::from(DB), Some((m.database, u64::MAX))));
    }
    if let Some(name) = path.strip_prefix("pki/") {
        if let (Some(d), true) = (m.pki.get(name), PKI_FILES.contains(&name)) {
            return Ok((PathBuf::from("pki").join(name), Some((*d, u64::MAX))));
        }
    }
    for (prefix, list) in m.lists() {
        if let Some(hex) = path.strip_prefix(&format!("{prefix}/sha256/")) {
            if let Ok(d) = format!("sha256:{hex}").parse::<Digest>() {
                if let Some(size) = list.get(&d) {
                    // BlobStore layout: sha256/<2 hex>/<hex>.
                    let rel = PathBuf::from(prefix)
                        .join("sha256")
                        .join(&hex[..2])
                        .join(hex);
                    return Ok((rel, Some((d, *size))));
                }
            }
        }
    }
    Err(format!(
        "unexpected entry `{path}`: not listed in {MANIFEST}"
    ))
}

/// Reads the whole archive and checks it: manifest first, every entry expected, every
/// digest and size right, nothing missing. With `into`, also writes the entries under
/// that directory (which must be new and empty).
pub fn check_or_extract(archive: impl Read, into: Option<&Path>) -> Result<Manifest> {
    let mut a = tar::Archive::new(archive);
    let mut entries = a.entries()?;
    let mut first = entries.next().context("the backup is empty")??;
    let p = first.path()?.to_string_lossy().into_owned();
    if p != MANIFEST || first.size() > MAX_SMALL {
        bail!("not a berth backup: the first entry must be {MANIFEST}, found `{p}`");
    }
    let mut text = Vec::new();
    first.read_to_end(&mut text)?;
    let m: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("{MANIFEST} is not valid"))?;
    if m.format != FORMAT {
        bail!("{MANIFEST}: format `{}` is not {FORMAT}", m.format);
    }
    for required in ["ca.crt", "ca.key", "plan-signing.key", "admin.token"] {
        if !m.pki.contains_key(required) {
            bail!("{MANIFEST}: the backup lacks pki/{required}");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in entries {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        if e.header().entry_type() != tar::EntryType::Regular {
            bail!("unexpected entry `{path}`: only regular files belong in a backup");
        }
        let (rel, blob) = destination(&path, &m).map_err(anyhow::Error::msg)?;
        if !seen.insert(path.clone()) {
            bail!("`{path}` appears twice");
        }
        if path.starts_with("pki/") && e.size() > MAX_SMALL {
            bail!("`{path}` is larger than {MAX_SMALL} bytes");
        }
        let mut sink: Box<dyn Write> = match into {
            Some(dir) => {
                let dest = dir.join(&rel);
                if let Some(parent) = rel.parent() {
                    create_below(dir, parent)?;
                }
                Box::new(std::io::BufWriter::new(
                    berth_files::create_new_private(&dest)
                        .with_context(|| format!("cannot create {}", dest.display()))?,
                ))
            }
            None => Box::new(std::io::sink()),
        };
        // pki/ca.crt is kept to check the manifest's CA hash; the database's header is
        // checked before the rest of it is copied.
        let mut ca = Vec::new();
        let mut h = HashingReader::new(&mut e);
        if path == "pki/ca.crt" {
            h.read_to_end(&mut ca)?;
            sink.write_all(&ca)?;
        }
        if path == DB {
            let mut head = Vec::with_capacity(16);
            (&mut h).take(16).read_to_end(&mut head)?;
            if head != b"SQLite format 3\0" {
                bail!("`{DB}` in the backup is not an SQLite database");
            }
            sink.write_all(&head)?;
        }
        let n = std::io::copy(&mut h, &mut sink)
            .with_context(|| format!("cannot read `{path}` (truncated backup?)"))?;
        sink.flush()?;
        drop(sink);
        if let Some(dir) = into {
            // Durable before the database is opened and the directory moved into place.
            std::fs::File::open(dir.join(&rel))?.sync_all()?;
        }
        let (got, total) = h.finish();
        if let Some((want, size)) = blob {
            if (size != u64::MAX && n != size) || got != want {
                bail!("`{path}` is {total} bytes with {got}; the backup is corrupt");
            }
        }
        if path == "pki/ca.crt" {
            let pem = String::from_utf8_lossy(&ca);
            let der = crate::pki::pem_to_der(&pem).context("pki/ca.crt")?;
            if Digest::of(der.as_ref()) != m.ca_hash {
                bail!(
                    "pki/ca.crt is not the CA the backup names ({}); the backup is corrupt",
                    m.ca_hash
                );
            }
        }
    }
    let mut missing: Vec<String> = Vec::new();
    if !seen.contains(DB) {
        missing.push(DB.into());
    }
    for p in m.pki.keys() {
        if !seen.contains(&format!("pki/{p}")) {
            missing.push(format!("pki/{p}"));
        }
    }
    for (prefix, list) in m.lists() {
        for d in list.keys() {
            let p = format!("{prefix}/sha256/{}", d.hex());
            if !seen.contains(&p) {
                missing.push(p);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the backup is incomplete (truncated?): {} missing, first `{}`",
            missing.len(),
            missing[0]
        );
    }
    Ok(m)
}

/// Creates `rel` (and the directories leading to it) under `root`, mode 0700, one level at
/// a time: never `root` itself, so a staging dir removed under a restore (a signal) is not
/// brought back, with a copy of the CA key in it, by a thread still extracting.
fn create_below(root: &Path, rel: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::create_dir(&at) {
            Ok(()) => std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set mode 0700 on {}", at.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", at.display())),
        }
    }
    Ok(())
}

/// The prefix of a restore's staging dir beside the data dir; the restoring process's pid
/// follows, so a later restore or controller start can tell a dead one's leftovers (it
/// holds the CA key) from a restore still running.
pub const STAGING_PREFIX: &str = ".berth-restore-";

/// Removes the staging dirs in `parent` whose restore is gone (its process no longer
/// runs; dirs of a berth that did not name its pid are taken as gone). Returns how many.
pub fn remove_stale_staging(parent: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        let alive = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
            });
        if !alive
            && e.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            tracing::info!(path = %e.path().display(), "removed the staging dir of an interrupted restore");
            removed += 1;
        }
    }
    removed
}

/// `berth restore FILE --data-dir DIR`: checks the whole backup while writing it into a new
/// directory beside DIR (removed when the check fails), opens the database (migrating it if this berth is newer), makes
/// plan generations jump ahead, then moves it to DIR. The staging dir's path is put in
/// `staging` while it exists, so a caller stopped by a signal can remove it.
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    staging_dir: &std::sync::Mutex<Option<PathBuf>>,
) -> Result<crate::store::backup::Inventory> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty; restore into a new or empty directory (nothing was changed)",
            data_dir.display()
        );
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let refused = |e: anyhow::Error| {
        e.context(format!(
            "{} is refused; nothing was restored",
            file.display()
        ))
    };
    crate::tarfile::sniff(file, "a backup is written by `berth backup -o FILE`")
        .map_err(refused)?;
    std::fs::create_dir_all(parent)?;
    remove_stale_staging(parent);
    let staging = tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)?;
    if let Ok(mut s) = staging_dir.lock() {
        *s = Some(staging.path().to_path_buf());
    }
    // One pass checks and writes into the staging dir, which is removed (dropped) when
    // anything in the backup is wrong: DIR is only ever touched by the final rename.
    let (f, dir) = (file.to_path_buf(), staging.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        berth_files::create_private_dir(&dir)?;
        check_or_extract(
            std::io::BufReader::new(std::fs::File::open(&f)?),
            Some(&dir),
        )
    })
    .await?
    .map_err(refused)?;
    // The staging dir's name means nothing to the operator: errors name the backup's
    // database instead.
    let staged_name = staging.path().display().to_string();
    let db_error = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{} is refused; nothing was restored: its database cannot be opened: {}",
            file.display(),
            format!("{e:#}").replace(&staged_name, "<backup>")
        )
    };
    let store = Store::open(staging.path()).await.map_err(db_error)?;
    store
        .mark_restored(&file.display().to_string())
        .await
        .map_err(|e| db_error(e.into()))?;
    let inventory = store.inventory().await.map_err(|e| db_error(e.into()))?;
    store.close().await;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, data_dir)
        .with_context(|| format!("cannot move the restored data into {}", data_dir.display()))?;
    if let Ok(mut s) = staging_dir.lock() {
        *s = None;
    }
    berth_files::sync_dir(parent);
    Ok(inventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as far as the header check goes.
    const TEST_DB: &[u8] = b"SQLite format 3\0db";

    fn ca() -> (String, Digest) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), Digest::of(cert.der()))
    }

    fn manifest(blob: &[u8], ca_pem: &str, ca_hash: Digest) -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            format: FORMAT.into(),
            berth_version: "0".into(),
            created_at: "now".into(),
            ca_hash,
            database: Digest::of(TEST_DB),
            pki: [
                ("ca.crt", ca_pem.as_bytes()),
                ("ca.key", &b"k"[..]),
                ("plan-signing.key", b"p"),
                ("admin.token", b"t"),
                ("server.sans", b"s"),
            ]
            .into_iter()
            .map(|(n, b)| (n.to_string(), Digest::of(b)))
            .collect(),
            blobs: [(Digest::of(blob), blob.len() as u64)].into(),
            agent_binaries: BTreeMap::new(),
            images: BTreeMap::new(),
        })
        .unwrap()
    }

    #[test]
    fn hostile_and_damaged_backups_are_refused() {
        let blob: &[u8] = b"blob";
        let (ca_pem, ca_hash) = ca();
        let m = manifest(blob, &ca_pem, ca_hash);
        let bpath = format!("blobs/sha256/{}", Digest::of(blob).hex());
        let good: Vec<(&str, &[u8])> = vec![
            (MANIFEST, &m),
            (DB, TEST_DB),
            ("pki/server.sans", b"s"),
            ("pki/ca.crt", ca_pem.as_bytes()),
            ("pki/ca.key", b"k"),
            ("pki/plan-signing.key", b"p"),
            ("pki/admin.token", b"t"),
            (&bpath, blob),
        ];
        assert!(check_or_extract(&crate::tarfile::raw(&good)[..], None).is_ok());
        let err = |entries: Vec<(&str, &[u8])>| {
            format!(
                "{:#}",
                check_or_extract(&crate::tarfile::raw(&entries)[..], None).unwrap_err()
            )
        };
        let mut evil = good.clone();
        evil.push(("../../etc/cron.d/x", b"* * * * * root sh"));
        assert!(err(evil).contains("unexpected entry `../../etc/cron.d/x`"));
        let mut not_db = good.clone();
        not_db[1] = (DB, b"db");
        assert!(err(not_db).contains("`berth.db` in the backup is not an SQLite database"));
        let mut evil = good.clone();
        evil.push(("pki/../../x", b"x"));
        assert!(err(evil).contains("unexpected entry `pki/../../x`"));
        let bi = good.iter().position(|(p, _)| *p == bpath).unwrap();
        let mut bad = good.clone();
        bad[bi] = (&bpath, b"bolb");
        assert!(err(bad).contains("the backup is corrupt"));
        let mut cut = good.clone();
        cut.pop();
        assert!(err(cut).contains("incomplete"));
        let mut tampered = good.clone();
        tampered[1] = (DB, b"SQLite format 3\0dB");
        assert!(err(tampered).contains("`berth.db` is 18 bytes with"));
        let mut tampered = good.clone();
        tampered[4] = ("pki/ca.key", b"K");
        assert!(err(tampered).contains("`pki/ca.key` is 1 bytes with"));
        // Another CA than the manifest names (its hash in the manifest matches the file,
        // the CA hash does not).
        let (other_pem, _) = ca();
        let m2 = manifest(blob, &other_pem, ca_hash);
        let mut other = good.clone();
        other[0] = (MANIFEST, &m2);
        other[3] = ("pki/ca.crt", other_pem.as_bytes());
        assert!(err(other).contains("pki/ca.crt is not the CA the backup names"));
        let mut twice = good.clone();
        twice.push((DB, TEST_DB));
        assert!(err(twice).contains("appears twice"));
        assert!(err(vec![(DB, TEST_DB)]).contains("the first entry must be backup.json"));
    }
}
