//! `berth bundle save` / `berth bundle load`: bundles moved between controllers as one
//! file (sneakernet into an air gap), with the same digests and their tags.
//!
//! The archive is a plain tar: `berth-bundles.json` (the index: digest, size, name,
//! version, tags of each bundle) first, then `blobs/sha256/<hex>` per bundle in index
//! order. Saving streams each blob from the controller into the tar while hashing it.
//! Loading is all or nothing. It checks the whole archive first — layout, sizes, every
//! sha256, and that every blob is a valid bundle within the target controller's limits
//! (`GET /v1/limits`) — and that no tag it sets already names another digest (unless
//! `--force`); only then it uploads the bundles the controller lacks, checks each
//! digest, and sets the tags last. If anything fails after the first upload, what it
//! uploaded is removed and the tags it moved are put back.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use berth_bundle::hashio::HashingReader;
use berth_shared::api::{ArchivedBundle, BundleArchiveIndex, PushResponse, TagRequest};
use berth_shared::routes::{self, NoQuery};
use berth_shared::{BundleRef, Digest};
use futures_util::TryStreamExt;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const INDEX: &str = "berth-bundles.json";
pub const FORMAT: &str = "berth-bundles/v1";
const MAX_INDEX: u64 = 4 << 20;
const MAX_BUNDLES: usize = 10_000;

fn blob_entry(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Saves the bundles `refs` name into `out` (written to a temp file beside it, renamed
/// into place when complete).
pub async fn save(client: &Client, refs: &[String], out: &Path) -> Result<()> {
    // Resolve every ref first: a typo fails before anything is written.
    let mut by_digest: BTreeMap<Digest, ArchivedBundle> = BTreeMap::new();
    let mut order = Vec::new();
    for r in refs {
        let parsed: BundleRef = r.parse().map_err(|e| anyhow!("`{r}`: {e}"))?;
        let v = client
            .fetch::<routes::BundleInspect>(&[r.as_ref()], &NoQuery {})
            .await?;
        let entry = by_digest.entry(v.digest).or_insert_with(|| {
            order.push(v.digest);
            ArchivedBundle {
                digest: v.digest,
                size: v.size,
                name: v.name.clone(),
                version: v.version.clone(),
                tags: Vec::new(),
            }
        });
        if let BundleRef::Tag { name, tag } = parsed {
            let t = format!("{name}:{tag}");
            if !entry.tags.contains(&t) {
                entry.tags.push(t);
            }
        }
    }
    let index = BundleArchiveIndex {
        format: FORMAT.into(),
        bundles: order.iter().filter_map(|d| by_digest.remove(d)).collect(),
    };

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".berth-save-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let index_json = serde_json::to_vec_pretty(&index)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    builder.mode(tar::HeaderMode::Deterministic);
    let (builder_back, total) = {
        let mut b = builder;
        crate::tarfile::append(
            &mut b,
            INDEX,
            index_json.len() as u64,
            0o644,
            &index_json[..],
        )?;
        let mut total = 0u64;
        for item in &index.bundles {
            let resp = client
                .stream::<routes::Blob>(&[&item.digest.hex()], &NoQuery {})
                .await?;
            let stream = resp.bytes_stream().map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            let (digest, size) = (item.digest, item.size);
            b = tokio::task::spawn_blocking(move || -> Result<_> {
                let mut hashing =
                    HashingReader::new(tokio_util::io::SyncIoBridge::new(reader).take(size));
                crate::tarfile::append(&mut b, &blob_entry(&digest), size, 0o644, &mut hashing)?;
                let (got, n) = hashing.finish();
                if got != digest || n != size {
                    bail!("the controller sent {n} bytes with digest {got} for {digest}");
                }
                Ok(b)
            })
            .await??;
            total += size;
            eprintln!(
                "saved {} ({}, {})",
                item.digest,
                item.tags.join(", "),
                indicatif::HumanBytes(size)
            );
        }
        (b, total)
    };
    let w = builder_back.into_inner()?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    tmp_path
        .persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} bundle(s), {} of blobs, to {}",
        index.bundles.len(),
        indicatif::HumanBytes(total),
        out.display()
    );
    Ok(())
}

/// What a checked archive holds.
#[derive(Debug)]
pub struct Checked {
    pub index: BundleArchiveIndex,
}

/// What the controller a load goes to accepts.
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    pub max_bundle_size: u64,
    pub limits: berth_bundle::Limits,
}

impl Default for Accepts {
    /// A controller started with the default flags.
    fn default() -> Self {
        Accepts {
            max_bundle_size: crate::config::DEFAULT_MAX_BUNDLE_SIZE,
            limits: berth_bundle::Limits::default(),
        }
    }
}

impl Accepts {
    /// What the controller `client` talks to accepts (`GET /v1/limits`; the defaults for a
    /// controller older than that endpoint).
    pub async fn of(client: &Client) -> Result<Accepts> {
        match client.fetch::<routes::Limits>(&[], &NoQuery {}).await {
            Ok(l) => Ok(Accepts::from(&l)),
            Err(e) if crate::client::api_code(&e) == Some("not_found") => {
                eprintln!("the controller does not publish its limits (older than this berth); checking against the defaults");
                Ok(Accepts::default())
            }
            Err(e) => Err(e.context("cannot read the controller's limits")),
        }
    }
}

impl From<&berth_shared::api::ServerLimits> for Accepts {
    fn from(l: &berth_shared::api::ServerLimits) -> Self {
        Accepts {
            max_bundle_size: l.max_bundle_size,
            limits: berth_bundle::Limits {
                max_total_bytes: l.max_unpacked_bytes,
                max_entries: l.max_entries,
                max_file_bytes: l.max_file_bytes,
            },
        }
    }
}

/// Why an archive is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("not a berth bundle archive: the first entry must be {INDEX}, found `{0}`")]
    NoIndex(String),
    #[error("{INDEX}: {0}")]
    BadIndex(String),
    #[error(
        "unexpected entry `{0}`: a bundle archive holds only {INDEX} and blobs/sha256/<hex> files"
    )]
    UnexpectedEntry(String),
    #[error("`{entry}` is {got} bytes, the index says {want}")]
    SizeMismatch { entry: String, got: u64, want: u64 },
    #[error("`{entry}` has sha256 {got}; it is corrupt or was altered")]
    DigestMismatch { entry: String, got: Digest },
    #[error("`{entry}` is {size} bytes; the controller accepts bundles up to {max} bytes (its --max-bundle-size)")]
    TooLarge { entry: String, size: u64, max: u64 },
    #[error("`{entry}` is not a bundle the controller accepts: {why}")]
    NotABundle { entry: String, why: String },
    #[error("the archive ends before {0} (truncated?)")]
    Missing(String),
    #[error("cannot read the archive: {0}")]
    Io(String),
}

/// Reads the whole archive at `path` and checks it without uploading anything: layout,
/// sizes, digests, and that each blob is a bundle `accepts` allows.
pub fn check(path: &Path, accepts: &Accepts) -> Result<Checked, ArchiveError> {
    let f = std::fs::File::open(path).map_err(|e| ArchiveError::Io(e.to_string()))?;
    check_reader(std::io::BufReader::with_capacity(1 << 20, f), accepts)
}

pub fn check_reader(r: impl Read, accepts: &Accepts) -> Result<Checked, ArchiveError> {
    let io = |e: std::io::Error| ArchiveError::Io(e.to_string());
    let mut archive = tar::Archive::new(r);
    let mut entries = archive.entries().map_err(io)?;
    let mut first = match entries.next() {
        Some(e) => e.map_err(io)?,
        None => return Err(ArchiveError::NoIndex("(empty archive)".into())),
    };
    let first_path = entry_path(&first)?;
    if first_path != INDEX || first.header().entry_type() != tar::EntryType::Regular {
        return Err(ArchiveError::NoIndex(first_path));
    }
    if first.size() > MAX_INDEX {
        return Err(ArchiveError::BadIndex(format!(
            "larger than {MAX_INDEX} bytes"
        )));
    }
    let mut text = Vec::new();
    first.read_to_end(&mut text).map_err(io)?;
    let index: BundleArchiveIndex =
        serde_json::from_slice(&text).map_err(|e| ArchiveError::BadIndex(e.to_string()))?;
    validate_index(&index)?;
    let mut next = 0usize;
    for e in entries {
        let mut e = e.map_err(io)?;
        let p = entry_path(&e)?;
        let Some(want) = index.bundles.get(next) else {
            return Err(ArchiveError::UnexpectedEntry(p));
        };
        if p != blob_entry(&want.digest) || e.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::UnexpectedEntry(p));
        }
        if e.size() != want.size {
            return Err(ArchiveError::SizeMismatch {
                entry: p,
                got: e.size(),
                want: want.size,
            });
        }
        if e.size() > accepts.max_bundle_size {
            return Err(ArchiveError::TooLarge {
                entry: p,
                size: e.size(),
                max: accepts.max_bundle_size,
            });
        }
        // One pass: the bundle walk (what the controller does on upload) reads through
        // the hash; whatever it leaves (zstd's end of frame, padding) is hashed after.
        let mut h = HashingReader::new(&mut e);
        let scanned = berth_bundle::scan(&mut h, &accepts.limits);
        std::io::copy(&mut h, &mut std::io::sink()).map_err(io)?;
        let (got, _) = h.finish();
        if got != want.digest {
            return Err(ArchiveError::DigestMismatch { entry: p, got });
        }
        let scanned = scanned.map_err(|e| ArchiveError::NotABundle {
            entry: p.clone(),
            why: e.to_string(),
        })?;
        if scanned.manifest.name != want.name || scanned.manifest.version != want.version {
            return Err(ArchiveError::BadIndex(format!(
                "`{p}` holds {} {}, the index says {} {}",
                scanned.manifest.name, scanned.manifest.version, want.name, want.version
            )));
        }
        next += 1;
    }
    if let Some(missing) = index.bundles.get(next) {
        return Err(ArchiveError::Missing(blob_entry(&missing.digest)));
    }
    Ok(Checked { index })
}

fn entry_path<R: Read>(e: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let p = e.path().map_err(|e| ArchiveError::Io(e.to_string()))?;
    Ok(p.to_string_lossy().into_owned())
}

fn validate_index(index: &BundleArchiveIndex) -> Result<(), ArchiveError> {
    let bad = |m: String| Err(ArchiveError::BadIndex(m));
    if index.format != FORMAT {
        return bad(format!(
            "format `{}` is not {FORMAT} (made by a newer berth?)",
            index.format
        ));
    }
    if index.bundles.len() > MAX_BUNDLES {
        return bad(format!("more than {MAX_BUNDLES} bundles"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for b in &index.bundles {
        if !seen.insert(b.digest) {
            return bad(format!("{} is listed twice", b.digest));
        }
        for t in &b.tags {
            match t.parse::<BundleRef>() {
                Ok(BundleRef::Tag { .. }) => {}
                _ => return bad(format!("`{t}` is not a name:tag")),
            }
        }
    }
    Ok(())
}

/// Loads a `bundle save` archive, all or nothing (see the module doc). `force` lets
/// tags that name another digest on the controller move to the archive's.
pub async fn load(client: &Client, path: &Path, force: bool) -> Result<()> {
    let refused =
        |e: anyhow::Error| e.context(format!("{} is refused; nothing was loaded", path.display()));
    crate::tarfile::sniff(path, "a bundle archive is written by `berth bundle save`")
        .map_err(refused)?;
    let accepts = Accepts::of(client).await.context("nothing was loaded")?;
    let p = path.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || check(&p, &accepts))
        .await?
        .map_err(|e| refused(e.into()))?;
    let index = checked.index;

    // What the controller has already, and what each tag names there now (what a failed
    // load puts back).
    let mut present = std::collections::BTreeSet::new();
    for b in &index.bundles {
        let reference = b.digest.to_string();
        if stored_digest(client, &reference)
            .await
            .context("nothing was loaded")?
            .is_some()
        {
            present.insert(b.digest);
        }
    }
    let mut before: BTreeMap<String, Option<Digest>> = BTreeMap::new();
    let mut moves: Vec<(String, Digest, Digest)> = Vec::new();
    for b in &index.bundles {
        for t in &b.tags {
            let now = stored_digest(client, t)
                .await
                .context("nothing was loaded")?;
            if let Some(d) = now.filter(|d| *d != b.digest) {
                moves.push((t.clone(), d, b.digest));
            }
            before.insert(t.clone(), now);
        }
    }
    if !moves.is_empty() && !force {
        let list: Vec<String> = moves
            .iter()
            .map(|(t, old, new)| format!("{t} is {old} there, {new} in the archive"))
            .collect();
        bail!(
            "{} would move tags the controller has: {}; nothing was loaded (pass --force to move them)",
            path.display(),
            list.join("; ")
        );
    }

    let mut uploaded = Vec::new();
    let mut tagged = Vec::new();
    let result = upload_and_tag(client, path, &index, &present, &mut uploaded, &mut tagged).await;
    if let Err(e) = result {
        let undone = undo(client, &uploaded, &tagged, &before).await;
        return Err(e.context(format!("loading {} failed; {undone}", path.display())));
    }
    eprintln!(
        "loaded {} bundle(s) from {} ({} new{})",
        index.bundles.len(),
        path.display(),
        uploaded.len(),
        if moves.is_empty() {
            String::new()
        } else {
            format!(", {} tag(s) moved", moves.len())
        }
    );
    Ok(())
}

/// The digest `reference` (a tag or a digest) names on the controller, if any.
async fn stored_digest(client: &Client, reference: &str) -> Result<Option<Digest>> {
    match client
        .fetch::<routes::BundleInspect>(&[reference], &NoQuery {})
        .await
    {
        Ok(v) => Ok(Some(v.digest)),
        Err(e) if crate::client::api_code(&e) == Some("not_found") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Uploads the bundles the controller lacks (recording each in `uploaded`), then sets
/// every tag (recording each in `tagged`).
async fn upload_and_tag(
    client: &Client,
    path: &Path,
    index: &BundleArchiveIndex,
    present: &std::collections::BTreeSet<Digest>,
    uploaded: &mut Vec<Digest>,
    tagged: &mut Vec<String>,
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Digest, PathBuf, tempfile::TempDir)>(1);
    // Unpack one missing blob at a time to a temp file (the tar is read once more).
    let p = path.to_path_buf();
    let order: Vec<(Digest, bool)> = index
        .bundles
        .iter()
        .map(|b| (b.digest, !present.contains(&b.digest)))
        .collect();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::open(&p)?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
        let mut entries = archive.entries()?;
        entries.next(); // the index
        for ((digest, wanted), e) in order.into_iter().zip(entries) {
            if !wanted {
                continue;
            }
            let mut e = e?;
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("blob");
            std::io::copy(&mut e, &mut std::fs::File::create(&file)?)?;
            if tx.blocking_send((digest, file, dir)).is_err() {
                break;
            }
        }
        Ok(())
    });
    while let Some((digest, file, _dir)) = rx.recv().await {
        let f = tokio::fs::File::open(&file).await?;
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
        let pushed: PushResponse = client
            .upload::<routes::BundlePush>(&[], &Default::default(), body)
            .await?;
        if pushed.created {
            uploaded.push(pushed.digest);
        }
        if pushed.digest != digest {
            bail!("the controller stored {} for {digest}", pushed.digest);
        }
        eprintln!("loaded {digest}");
    }
    reader.await??;
    for b in &index.bundles {
        for t in &b.tags {
            client
                .send::<routes::BundleTag>(&[t], &NoQuery {}, &TagRequest { digest: b.digest })
                .await?;
            tagged.push(t.clone());
            eprintln!("tagged {t} → {}", b.digest);
        }
    }
    Ok(())
}

/// Puts back the tags a failed load set (newest first) to what they named `before` it,
/// and removes the bundles it uploaded; says what it did, or what is left for the
/// operator.
async fn undo(
    client: &Client,
    uploaded: &[Digest],
    tagged: &[String],
    before: &BTreeMap<String, Option<Digest>>,
) -> String {
    let mut left = Vec::new();
    for t in tagged.iter().rev() {
        let r = match before.get(t).copied().flatten() {
            Some(d) => client
                .send::<routes::BundleTag>(&[t], &NoQuery {}, &TagRequest { digest: d })
                .await
                .map(|_| ()),
            None => client.act::<routes::BundleRemove>(&[t], &NoQuery {}).await,
        };
        if r.is_err() {
            left.push(format!("tag {t}"));
        }
    }
    for d in uploaded {
        if client
            .act::<routes::BundleRemove>(&[&d.to_string()], &NoQuery {})
            .await
            .is_err()
        {
            left.push(d.to_string());
        }
    }
    if left.is_empty() {
        format!(
            "rolled back: {} uploaded bundle(s) removed, {} tag(s) restored; the controller is as before",
            uploaded.len(),
            tagged.len()
        )
    } else {
        format!(
            "rolling back left these behind (remove them with `berth bundle rm`): {}",
            left.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_for(blobs: &[&[u8]], tags: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&BundleArchiveIndex {
            format: FORMAT.into(),
            bundles: blobs
                .iter()
                .map(|b| ArchivedBundle {
                    digest: Digest::of(b),
                    size: b.len() as u64,
                    name: "x".into(),
                    version: "1".into(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                })
                .collect(),
        })
        .unwrap()
    }

    /// A packed bundle named `x`, version `1`.
    fn real_bundle() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("bundle.yaml"),
            "apiVersion: berth.dev/v1\nkind: Bundle\nname: x\nversion: \"1\"\ntype: rootfs\n",
        )
        .unwrap();
        let out = dir.path().join("x.tar.zst");
        berth_bundle::pack::pack(&src, &out).unwrap();
        std::fs::read(out).unwrap()
    }

    #[test]
    fn a_whole_archive_checks() {
        let real = real_bundle();
        let blob: &[u8] = &real;
        let idx = index_for(&[blob], &["x:1"]);
        let t = crate::tarfile::raw(&[(INDEX, &idx), (&blob_entry(&Digest::of(blob)), blob)]);
        let c = check_reader(&t[..], &Accepts::default()).unwrap();
        assert_eq!(c.index.bundles[0].tags, ["x:1"]);
    }

    #[test]
    fn damaged_and_hostile_archives_are_refused_with_their_reason() {
        let real = real_bundle();
        let blob: &[u8] = &real;
        let mut altered = real.clone();
        let last = altered.len() - 1;
        altered[last] ^= 0xff;
        let d = Digest::of(blob);
        let idx = index_for(&[blob], &["x:1"]);
        let entry = blob_entry(&d);
        let cases: Vec<(Vec<u8>, ArchiveError)> = vec![
            (
                crate::tarfile::raw(&[]),
                ArchiveError::NoIndex("(empty archive)".into()),
            ),
            (
                crate::tarfile::raw(&[("evil.sh", b"x"), (INDEX, &idx)]),
                ArchiveError::NoIndex("evil.sh".into()),
            ),
            (
                crate::tarfile::raw(&[(INDEX, &idx), (&entry, &altered)]),
                ArchiveError::DigestMismatch {
                    entry: entry.clone(),
                    got: Digest::of(&altered),
                },
            ),
            (
                crate::tarfile::raw(&[
                    (INDEX, &index_for(&[b"not a bundle"], &["x:1"])),
                    (&blob_entry(&Digest::of(b"not a bundle")), b"not a bundle"),
                ]),
                ArchiveError::NotABundle {
                    entry: blob_entry(&Digest::of(b"not a bundle")),
                    why: "archive: this is not a zstd stream, so not a bundle; a bundle is a zstd-compressed tar starting with bundle.yaml, made by `berth bundle build DIR`".into(),
                },
            ),
            (
                crate::tarfile::raw(&[(INDEX, &idx), (&entry, b"short")]),
                ArchiveError::SizeMismatch {
                    entry: entry.clone(),
                    got: 5,
                    want: real.len() as u64,
                },
            ),
            (
                crate::tarfile::raw(&[(INDEX, &idx)]),
                ArchiveError::Missing(entry.clone()),
            ),
            (
                crate::tarfile::raw(&[(INDEX, &idx), (&entry, blob), ("../../etc/passwd", b"x")]),
                ArchiveError::UnexpectedEntry("../../etc/passwd".into()),
            ),
            (
                crate::tarfile::raw(&[
                    (INDEX, &index_for(&[blob], &["sha256:abc"])),
                    (&entry, blob),
                ]),
                ArchiveError::BadIndex("`sha256:abc` is not a name:tag".into()),
            ),
        ];
        for (t, want) in cases {
            assert_eq!(check_reader(&t[..], &Accepts::default()).unwrap_err(), want);
        }
        let bad_format =
            serde_json::to_vec(&serde_json::json!({"format": "other/v9", "bundles": []})).unwrap();
        assert!(matches!(
            check_reader(&crate::tarfile::raw(&[(INDEX, &bad_format)])[..], &Accepts::default()),
            Err(ArchiveError::BadIndex(m)) if m.contains("other/v9")
        ));
        let unknown = br#"{"format":"berth-bundles/v1","bundles":[],"run":"rm -rf /"}"#;
        assert!(matches!(
            check_reader(&crate::tarfile::raw(&[(INDEX, unknown)])[..], &Accepts::default()),
            Err(ArchiveError::BadIndex(m)) if m.contains("unknown field")
        ));
    }
}
