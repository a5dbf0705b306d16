//! Container images as `sealos save`, buildah, skopeo and docker write them: an OCI image
//! layout (a directory, or the `oci-archive` tar of one) or a docker archive
//! (`manifest.json` with each image's config and layer files; `sealos save -m` and
//! `docker save` put several images in one).
//!
//! An archive file is first extracted into a directory the caller owns, held to the
//! bundle unpack rules (no escapes, no devices, bounded sizes); symlinks between its files
//! (older `docker save` links repeated layers) become hard links, so what is read afterwards
//! is plain files. Every JSON document and blob named by digest is checked against it
//! before use; layers are checked by `crate::layer`.

use crate::layer::{decompressed, verify_blob};
use crate::unpack::{
    checked_existing, entry_err, io_at, no_data, prepare, symlink_target, write_file, Budget,
    Limits, UnpackError,
};
use berth_shared::{Digest, SafeRelPath};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest index, manifest or config JSON read (real ones are a few KiB).
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// The part of an image config a bundle is made from (OCI image spec, "config").
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One image of an archive or layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// `name:tag` references the archive gives it (none when it names it only by a tag).
    pub names: Vec<String>,
    pub config: RunConfig,
    pub layers: Vec<Layer>,
    /// `image N of index.json`, for messages.
    pub label: String,
    /// The image config's file (its bytes are the config blob).
    pub config_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    /// The blob's sha256 as the manifest names it (OCI), checked before it is applied.
    pub digest: Option<Digest>,
    /// The uncompressed tar's sha256 from the config's `rootfs.diff_ids`.
    pub diff_id: Option<Digest>,
}

fn bad(msg: impl Into<String>) -> UnpackError {
    UnpackError::Archive(msg.into())
}

/// What is in `dir`: an OCI image layout (`oci-layout`, `index.json`) or a docker archive
/// (`manifest.json`). `arch` (`amd64`, `arm64`) picks the image of a multi-arch index.
pub fn read_dir(dir: &Path, arch: &str) -> Result<Vec<Image>, UnpackError> {
    if dir.join("index.json").is_file() {
        read_oci(dir, arch)
    } else if dir.join("manifest.json").is_file() {
        read_docker(dir)
    } else {
        Err(bad(format!(
            "{} is neither an OCI image layout (no index.json) nor a docker archive (no manifest.json)",
            dir.display()
        )))
    }
}

/// The architecture name images use for this machine.
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Reads the file at `rel` (a path from the archive's own JSON) below `dir`, at most
/// [`MAX_JSON_BYTES`], without following symlinks.
fn read_rel(dir: &Path, rel: &str, what: &str) -> Result<(PathBuf, Vec<u8>), UnpackError> {
    let safe = SafeRelPath::new(rel).map_err(|e| bad(format!("{what} `{rel}`: {e}")))?;
    let path = checked_existing(dir, &safe)
        .map_err(|_| bad(format!("{what} `{rel}` is not in the archive")))?;
    let f = fs::File::open(&path).map_err(io_at(&path))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(&path))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(bad(format!(
            "{what} `{rel}` is larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    Ok((path, bytes))
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, UnpackError> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("{what} is not valid: {e}")))
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, UnpackError> {
    s.parse::<Digest>().map_err(|_| {
        bad(format!(
            "{what}: `{s}` is not a sha256 digest (the only kind berth reads)"
        ))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// A verified blob of an OCI layout.
fn oci_blob(dir: &Path, digest: &str, what: &str) -> Result<Vec<u8>, UnpackError> {
    let d = parse_digest(digest, what)?;
    let (_, bytes) = read_rel(dir, &format!("blobs/sha256/{}", d.hex()), what)?;
    if Digest::of(&bytes) != d {
        return Err(bad(format!(
            "{what} {d} does not hash to its digest; the archive is corrupt or was altered"
        )));
    }
    Ok(bytes)
}

fn read_oci(dir: &Path, arch: &str) -> Result<Vec<Image>, UnpackError> {
    let (_, bytes) = read_rel(dir, "index.json", "index.json")?;
    let index: Index = parse_json(&bytes, "index.json")?;
    if index.manifests.is_empty() {
        return Err(bad("index.json lists no images"));
    }
    let mut images = Vec::new();
    for (i, desc) in index.manifests.iter().enumerate() {
        let label = format!("image {} of index.json", i + 1);
        let names = oci_names(&desc.annotations);
        let mut bytes = oci_blob(dir, &desc.digest, &label)?;
        let doc: serde_json::Value = parse_json(&bytes, &label)?;
        if doc.get("manifests").is_some() {
            // A multi-arch index: the image for `arch`.
            let inner: Index = parse_json(&bytes, &label)?;
            let pick = inner
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.architecture == arch && p.os == "linux")
                })
                .ok_or_else(|| {
                    let have: Vec<String> = inner
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    bad(format!(
                        "{label} is a multi-arch index without a linux/{arch} image (it has: {})",
                        have.join(", ")
                    ))
                })?;
            bytes = oci_blob(dir, &pick.digest, &label)?;
        }
        let manifest: Manifest = parse_json(&bytes, &label)?;
        let config_bytes = oci_blob(dir, &manifest.config.digest, &format!("{label}: config"))?;
        let config_file = dir.join(format!(
            "blobs/sha256/{}",
            parse_digest(&manifest.config.digest, &label)?.hex()
        ));
        let config: ImageConfig = parse_json(&config_bytes, &format!("{label}: config"))?;
        let diff_ids = diff_ids(&config, manifest.layers.len(), &label)?;
        let mut layers = Vec::new();
        for (n, l) in manifest.layers.iter().enumerate() {
            if l.media_type.contains("nondistributable") || l.media_type.contains("foreign") {
                return Err(bad(format!(
                    "{label}: layer {} is a non-distributable layer ({}); berth imports only layers the archive carries",
                    n + 1,
                    l.media_type
                )));
            }
            let digest = parse_digest(&l.digest, &format!("{label}: layer {}", n + 1))?;
            let rel = SafeRelPath::new(&format!("blobs/sha256/{}", digest.hex()))
                .map_err(|e| bad(e.to_string()))?;
            let path = checked_existing(dir, &rel).map_err(|_| {
                bad(format!(
                    "{label}: layer {} ({digest}) is not in the archive",
                    n + 1
                ))
            })?;
            layers.push(Layer {
                path,
                digest: Some(digest),
                diff_id: diff_ids.get(n).cloned(),
            });
        }
        images.push(Image {
            names,
            config: config.config.unwrap_or_default(),
            layers,
            label,
            config_file,
        });
    }
    Ok(images)
}

/// The references an OCI index entry's annotations give: containerd's full name, or the
/// OCI ref name when it is a whole reference (buildah and skopeo may write only a tag).
fn oci_names(a: &BTreeMap<String, String>) -> Vec<String> {
    let mut names = Vec::new();
    for key in [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ] {
        if let Some(v) = a.get(key) {
            if (v.contains('/') || v.contains(':')) && !names.contains(v) {
                names.push(v.clone());
            }
        }
    }
    names.truncate(1);
    names
}

fn diff_ids(config: &ImageConfig, layers: usize, label: &str) -> Result<Vec<Digest>, UnpackError> {
    let ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    if ids.len() != layers {
        return Err(bad(format!(
            "{label}: the config lists {} diff_ids for {layers} layers",
            ids.len()
        )));
    }
    ids.iter()
        .map(|d| parse_digest(d, &format!("{label}: diff_id")))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn read_docker(dir: &Path) -> Result<Vec<Image>, UnpackError> {
    let (_, bytes) = read_rel(dir, "manifest.json", "manifest.json")?;
    let entries: Vec<DockerEntry> = parse_json(&bytes, "manifest.json")?;
    if entries.is_empty() {
        return Err(bad("manifest.json lists no images"));
    }
    let mut images = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let label = format!("image {} of manifest.json", i + 1);
        let (config_file, config_bytes) = read_rel(dir, &e.config, &format!("{label}: config"))?;
        // The config's name is its digest (`<hex>.json`, or `blobs/sha256/<hex>`).
        let stem = e
            .config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        if let Ok(want) = format!("sha256:{stem}").parse::<Digest>() {
            if Digest::of(&config_bytes) != want {
                return Err(bad(format!(
                    "{label}: config `{}` does not hash to its name; the archive is corrupt or was altered",
                    e.config
                )));
            }
        }
        let config: ImageConfig = parse_json(&config_bytes, &format!("{label}: config"))?;
        let diff_ids = diff_ids(&config, e.layers.len(), &label)?;
        let mut layers = Vec::new();
        for (n, l) in e.layers.iter().enumerate() {
            let rel =
                SafeRelPath::new(l).map_err(|err| bad(format!("{label}: layer `{l}`: {err}")))?;
            let path = checked_existing(dir, &rel)
                .map_err(|_| bad(format!("{label}: layer `{l}` is not in the archive")))?;
            // Newer `docker save` names layer blobs by their digest.
            let digest = l
                .strip_prefix("blobs/sha256/")
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
            layers.push(Layer {
                path,
                digest,
                diff_id: diff_ids.get(n).cloned(),
            });
        }
        images.push(Image {
            names: e.repo_tags.clone().unwrap_or_default(),
            config: config.config.unwrap_or_default(),
            layers,
            label,
            config_file,
        });
    }
    Ok(images)
}

/// Checks the blob digest of every layer that has one (before anything is applied).
pub fn verify_layers(image: &Image) -> Result<(), UnpackError> {
    for (n, l) in image.layers.iter().enumerate() {
        if let Some(d) = &l.digest {
            verify_blob(&l.path, d, &format!("{}: layer {}", image.label, n + 1))?;
        }
    }
    Ok(())
}

/// Extracts the archive file `archive` (tar, optionally gzip or zstd compressed) into the
/// existing, empty directory `into`, within `limits`. Symlinks to files in the archive
/// become hard links; other symlinks are dropped.
pub fn extract(archive: &Path, into: &Path, limits: &Limits) -> Result<(), UnpackError> {
    let f = fs::File::open(archive).map_err(io_at(archive))?;
    let arc = |e: io::Error| bad(format!("{}: corrupt or truncated: {e}", archive.display()));
    let mut tar = tar::Archive::new(decompressed(f).map_err(arc)?);
    let mut budget = Budget::new(*limits);
    let mut links: Vec<(SafeRelPath, String)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for entry in tar.entries().map_err(arc)? {
        let mut entry = entry.map_err(arc)?;
        let (name, size) = budget.entry(&entry)?;
        if name.split('/').all(|c| c.is_empty() || c == ".") {
            continue;
        }
        let rel = SafeRelPath::new(&name).map_err(|e| entry_err(&name, e.to_string()))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.file(&name, size)?;
                let target = prepare(into, &rel, false)?;
                write_file(&mut entry, &target, &name, size, 0o600, &mut buf)?;
            }
            tar::EntryType::Directory => {
                no_data(&name, size)?;
                prepare(into, &rel, true)?;
            }
            tar::EntryType::Symlink => {
                no_data(&name, size)?;
                let target = symlink_target(&entry, &name, &rel)?;
                let parent = rel.parent().map(|p| p.as_str().to_string());
                links.push((rel, lexical_join(parent.as_deref(), &target)));
            }
            tar::EntryType::Link => {
                no_data(&name, size)?;
                let target = entry
                    .link_name()
                    .map_err(arc)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .ok_or_else(|| entry_err(&name, "link without a target"))?;
                links.push((rel, target));
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(entry_err(
                    &name,
                    "device and fifo entries are not allowed in image archives",
                ));
            }
            other => {
                return Err(entry_err(
                    &name,
                    format!("entry type {other:?} is not allowed in image archives"),
                ));
            }
        }
    }
    for (rel, target) in links {
        let Ok(t) = SafeRelPath::new(&target) else {
            continue;
        };
        let Ok(source) = checked_existing(into, &t) else {
            continue;
        };
        if fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
            let dest = prepare(into, &rel, false)?;
            fs::hard_link(&source, &dest).map_err(io_at(&dest))?;
        }
    }
    Ok(())
}

/// `target` (relative, leading `..` only: checked by `check_symlink_target`) seen from the
/// directory `parent`.
fn lexical_join(parent: Option<&str>, target: &str) -> String {
    let mut parts: Vec<&str> = parent.map(|p| p.split('/').collect()).unwrap_or_default();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// What the first bytes of a file say it is, for telling a user who pushed an image archive
/// or a plain tar what to run instead. `None`: not recognisably an image archive.
pub fn describe_archive(path: &Path) -> Option<&'static str> {
    let f = fs::File::open(path).ok()?;
    let r = decompressed(f).ok()?;
    let mut tar = tar::Archive::new(r);
    for entry in tar.entries().ok()?.take(64) {
        let entry = entry.ok()?;
        let p = entry.path().ok()?.to_string_lossy().into_owned();
        let p = p.trim_start_matches("./");
        match p {
            "oci-layout" | "index.json" => {
                return Some("an OCI image archive (what `sealos save` and `skopeo copy … oci-archive:` write)")
            }
            "manifest.json" | "repositories" => {
                return Some("a docker image archive (what `docker save` and `sealos save --format docker-archive` write)")
            }
            _ => {}
        }
    }
    Some("a tar archive, not a berth bundle")
}
