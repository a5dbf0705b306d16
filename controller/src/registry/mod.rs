//! The controller as the cluster's air-gapped registry: container images that bundles
//! carry, and images loaded with `berth image load`, served read-only over the OCI
//! Distribution API (`api::registry`) with the same TLS as the API.
//!
//! Images come from:
//! - a bundle's `registry/` directory in docker-distribution storage layout
//!   (`registry/docker/registry/v2/{blobs,repositories}`, what sealos cluster images carry
//!   for their `sealos.hub:5000` registry);
//! - OCI image layouts (directories with `index.json`) and image archives (OCI or docker,
//!   `*.tar`, optionally compressed) under a bundle's `images/`;
//! - `berth image load FILE` (an OCI or docker archive).
//!
//! Blobs are stored content-addressed under `<data-dir>/images/sha256/`, each checked
//! against its digest as it is written; the index (which repository has which manifests,
//! tags and blobs, and what brought them) is in the store. Images are named as clients
//! pull them from the controller: the registry host of the name they were saved under is
//! dropped (`docker.io/library/nginx:1.25` is served as `library/nginx:1.25`).

use crate::blobs::BlobStore;
use crate::store::images::ImageRefs;
use anyhow::{bail, Context, Result};
use berth_bundle::image as img;
use berth_shared::{Digest, SafeRelPath};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

/// Where the distribution storage tree sits in a bundle.
const DIST: &str = "registry/docker/registry/v2/";
/// Where OCI layouts and image archives sit in a bundle.
const IMAGES: &str = "images/";
/// The largest manifest or link read.
const MAX_SMALL: u64 = 4 << 20;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The image blob store of a data dir.
pub fn open(data_dir: &Path) -> Result<BlobStore> {
    BlobStore::open_at(data_dir.join("images"))
}

/// What an ingest found: the index rows, the `repo:tag`s it serves, and what it skipped.
#[derive(Debug, Default)]
pub struct Found {
    pub refs: ImageRefs,
    pub served: Vec<String>,
    pub warnings: Vec<String>,
}

/// Whether `repo` is a repository name as the distribution spec allows it: path
/// components of `a-z 0-9` separated by `.`, `_`, `__` or `-`s.
pub fn valid_repo(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
                && !c.contains("..")
                && !c.contains("._")
                && !c.contains("_.")
                && !c.contains("___")
        })
}

/// A tag as the distribution spec allows it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `[registry/]repo[:tag]` → (repo, tag) as served here; `None` when it is not a name.
pub fn repo_and_tag(reference: &str) -> Option<(String, String)> {
    let (_, name, tag) = berth_shared::bundle_ref::split_reference(reference);
    (valid_repo(name) && valid_tag(tag)).then(|| (name.to_string(), tag.to_string()))
}

/// The media type of a manifest document.
fn media_type_of(bytes: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("a manifest that is not JSON")?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Ok(m.to_string());
    }
    Ok(if v.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    })
}

fn read_small(store: &BlobStore, d: &Digest) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(store.path(d))
        .with_context(|| format!("manifest {d} is not stored"))?
        .take(MAX_SMALL + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SMALL {
        bail!("manifest {d} is larger than {MAX_SMALL} bytes");
    }
    Ok(bytes)
}

/// The descriptors a manifest or index names: (digest, media type, is a manifest).
fn children(bytes: &[u8]) -> Vec<(Digest, String, bool)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let desc = |d: &serde_json::Value, manifest: bool| {
        let digest = d.get("digest")?.as_str()?.parse::<Digest>().ok()?;
        let media = d
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        Some((digest, media, manifest))
    };
    let mut out = Vec::new();
    for m in v
        .get("manifests")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        out.extend(desc(m, true));
    }
    out.extend(v.get("config").and_then(|c| desc(c, false)));
    for l in v
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        out.extend(desc(l, false));
    }
    out
}

/// Adds manifest `d` of `repo` and everything it names (stored, or a warning) to `found`.
fn add_manifest(store: &BlobStore, repo: &str, d: &Digest, found: &mut Found) -> Result<()> {
    let bytes = read_small(store, d)?;
    let media = media_type_of(&bytes)?;
    found
        .refs
        .manifests
        .push((repo.to_string(), d.to_string(), media, bytes.len() as i64));
    for (child, _, is_manifest) in children(&bytes) {
        if is_manifest {
            if store.exists(&child) {
                add_manifest(store, repo, &child, found)?;
            } else {
                // A multi-arch index carried for one architecture: served as stored.
                found.warnings.push(format!(
                    "{repo}: manifest {child} of index {d} is not carried; clients of that platform will not find it"
                ));
            }
        } else {
            match std::fs::metadata(store.path(&child)) {
                Ok(m) => {
                    found
                        .refs
                        .blobs
                        .push((repo.to_string(), child.to_string(), m.len() as i64))
                }
                Err(_) => found.warnings.push(format!(
                    "{repo}: blob {child} of manifest {d} is not carried"
                )),
            }
        }
    }
    Ok(())
}

/// Whether a bundle with these files (from its upload scan) can carry images at all.
pub fn may_carry_images(files: &[String]) -> bool {
    files
        .iter()
        .any(|f| f.starts_with(DIST) || f.starts_with(IMAGES))
}

/// Collects the images a bundle at `bundle` (a stored, already checked bundle blob)
/// carries into `store` (blocking).
pub fn from_bundle(store: &BlobStore, bundle: &Path) -> Result<Found> {
    let f = std::fs::File::open(bundle)?;
    let mut tar = tar::Archive::new(zstd::Decoder::new(f)?);
    let mut tags: Vec<(String, String, String)> = Vec::new();
    let mut manifests: BTreeSet<(String, String)> = BTreeSet::new();
    let work = tempfile::Builder::new()
        .prefix("berth-images-")
        .tempdir_in(store.root().join("tmp"))?;
    let mut carried_images = false;
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let Ok(rel) = SafeRelPath::new(&name) else {
            continue;
        };
        let path = rel.as_str();
        if let Some(rest) = path.strip_prefix(DIST) {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["blobs", "sha256", _, hex, "data"] => {
                    let d: Digest = format!("sha256:{hex}")
                        .parse()
                        .with_context(|| format!("{path}: not a blob path"))?;
                    store
                        .put_verified(&mut entry, &d)
                        .with_context(|| path.to_string())?;
                }
                ["repositories", ..] => {
                    let mut link = || -> Result<String> {
                        let mut s = String::new();
                        (&mut entry).take(256).read_to_string(&mut s)?;
                        Ok(s.trim().to_string())
                    };
                    let at = |word: &str| parts.iter().position(|p| *p == word);
                    if let Some(i) = at("_manifests") {
                        let repo = parts[1..i].join("/");
                        match &parts[i + 1..] {
                            ["tags", tag, "current", "link"] => {
                                tags.push((repo, tag.to_string(), link()?));
                            }
                            ["revisions", "sha256", hex, "link"] => {
                                manifests.insert((repo, format!("sha256:{hex}")));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        } else if path.starts_with(IMAGES) {
            carried_images = true;
            let dest = work.path().join(path);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::io::copy(&mut entry, &mut std::fs::File::create(&dest)?)?;
        }
    }
    let mut found = Found::default();
    for (repo, d) in &manifests {
        if !valid_repo(repo) {
            found.warnings.push(format!(
                "registry/: `{repo}` is not a repository name; skipped"
            ));
            continue;
        }
        let Ok(d) = d.parse::<Digest>() else { continue };
        if !store.exists(&d) {
            found.warnings.push(format!(
                "registry/: manifest {d} of {repo} is not in the bundle's blobs; skipped"
            ));
            continue;
        }
        add_manifest(store, repo, &d, &mut found)?;
    }
    for (repo, tag, digest) in tags {
        if !valid_tag(&tag) {
            found.warnings.push(format!(
                "registry/: `{repo}:{tag}` is not a valid tag; skipped"
            ));
        } else if found
            .refs
            .manifests
            .iter()
            .any(|m| m.0 == repo && m.1 == digest)
        {
            found.served.push(format!("{repo}:{tag}"));
            found.refs.tags.push((repo, tag, digest));
        } else {
            found.warnings.push(format!(
                "registry/: tag {repo}:{tag} names {digest}, which the bundle does not carry; skipped"
            ));
        }
    }
    if carried_images {
        let root = work.path().join("images");
        let mut kids: Vec<_> = std::fs::read_dir(&root)?
            .flatten()
            .map(|e| e.path())
            .collect();
        kids.sort();
        for p in kids {
            let label = format!(
                "images/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            let r = if p.is_dir() {
                from_dir(store, &p, &label, &mut found)
            } else {
                from_archive_into(store, &p, &label, &mut found)
            };
            if let Err(e) = r {
                found.warnings.push(format!("{label}: {e:#}; skipped"));
            }
        }
    }
    Ok(found)
}

/// Collects the images of an archive file (OCI or docker, optionally compressed) into
/// `store` (blocking): what `berth image load` does.
pub fn from_archive(store: &BlobStore, archive: &Path) -> Result<Found> {
    let mut found = Found::default();
    from_archive_into(store, archive, "the archive", &mut found)?;
    if found.refs.tags.is_empty() {
        bail!(
            "it names no image (an image needs a name:tag to be pulled by){}",
            if found.warnings.is_empty() {
                String::new()
            } else {
                format!(": {}", found.warnings.join("; "))
            }
        );
    }
    Ok(found)
}

fn from_archive_into(
    store: &BlobStore,
    archive: &Path,
    label: &str,
    found: &mut Found,
) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("berth-archive-")
        .tempdir_in(store.root().join("tmp"))?;
    img::extract(archive, work.path(), &berth_bundle::Limits::default())?;
    from_dir(store, work.path(), label, found)
}

/// An OCI layout or docker archive directory.
fn from_dir(store: &BlobStore, dir: &Path, label: &str, found: &mut Found) -> Result<()> {
    if dir.join("index.json").is_file() {
        from_layout(store, dir, label, found)
    } else if dir.join("manifest.json").is_file() {
        from_docker(store, dir, label, found)
    } else {
        bail!("neither an OCI layout (index.json) nor a docker archive (manifest.json)")
    }
}

fn from_layout(store: &BlobStore, dir: &Path, label: &str, found: &mut Found) -> Result<()> {
    // Every blob of the layout, each checked against its name.
    let blobs = dir.join("blobs/sha256");
    if blobs.is_dir() {
        for e in std::fs::read_dir(&blobs)?.flatten() {
            let hex = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            if !e.file_type()?.is_file() {
                continue;
            }
            store
                .put_verified(&mut std::fs::File::open(e.path())?, &d)
                .with_context(|| format!("{label}: blob {d}"))?;
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
        .context("index.json is not JSON")?;
    for (i, m) in index
        .get("manifests")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let a = m.get("annotations");
        let name = [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ]
        .iter()
        .filter_map(|k| a.and_then(|a| a.get(*k)).and_then(|v| v.as_str()))
        .find(|v| v.contains('/') || v.contains(':'));
        let Some((repo, tag)) = name.and_then(repo_and_tag) else {
            found.warnings.push(format!(
                "{label}: image {} has no name:tag to serve it under; skipped",
                i + 1
            ));
            continue;
        };
        let Some(d) = m
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            continue;
        };
        if !store.exists(&d) {
            found.warnings.push(format!(
                "{label}: {repo}:{tag} names {d}, which is not in it; skipped"
            ));
            continue;
        }
        add_manifest(store, &repo, &d, found)?;
        found.served.push(format!("{repo}:{tag}"));
        found.refs.tags.push((repo, tag, d.to_string()));
    }
    Ok(())
}

fn from_docker(store: &BlobStore, dir: &Path, label: &str, found: &mut Found) -> Result<()> {
    let images = img::read_dir(dir, img::this_arch())?;
    for image in images {
        let names: Vec<(String, String)> =
            image.names.iter().filter_map(|n| repo_and_tag(n)).collect();
        if names.is_empty() {
            found.warnings.push(format!(
                "{label}: {} has no name:tag to serve it under; skipped",
                image.label
            ));
            continue;
        }
        img::verify_layers(&image)?;
        // The config as the archive has it; its digest is its name.
        let (config_digest, config_size) = store.import_file(&image.config_file)?;
        let mut layers = Vec::new();
        let mut blobs = vec![(config_digest, config_size)];
        for l in &image.layers {
            let mut head = [0u8; 4];
            let n = std::fs::File::open(&l.path)?.read(&mut head)?;
            let media = match berth_bundle::layer::Compression::sniff(&head[..n]) {
                berth_bundle::layer::Compression::Gzip => {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                }
                berth_bundle::layer::Compression::Zstd => {
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                }
                berth_bundle::layer::Compression::None => "application/vnd.oci.image.layer.v1.tar",
            };
            let (d, size) = store.import_file(&l.path)?;
            layers.push(serde_json::json!({"mediaType": media, "digest": d, "size": size}));
            blobs.push((d, size));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": layers,
        }))?;
        let md = Digest::of(&manifest);
        store.put_verified(&mut &manifest[..], &md)?;
        for (repo, tag) in names {
            found.refs.manifests.push((
                repo.clone(),
                md.to_string(),
                OCI_MANIFEST.into(),
                manifest.len() as i64,
            ));
            for (d, size) in &blobs {
                found
                    .refs
                    .blobs
                    .push((repo.clone(), d.to_string(), *size as i64));
            }
            found.served.push(format!("{repo}:{tag}"));
            found.refs.tags.push((repo, tag, md.to_string()));
        }
    }
    Ok(())
}
