//! Container image archives built by the tests themselves (no registry, no network): OCI
//! archives and layouts (what `sealos save` writes) and docker archives (`sealos save -m`,
//! `docker save`), with layers of any compression, whiteouts, and hostile entries.

use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::Path;

/// One entry of a test layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    /// A raw header (for hostile entries): name, type, size of zero-filled data.
    Raw(&'a str, tar::EntryType, u64),
}

#[derive(Clone, Copy)]
pub enum Zip {
    None,
    Gzip,
    Zstd,
}

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// An uncompressed layer tar.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        match e {
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, p, *data).expect("layer");
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, p, &[][..]).expect("layer");
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).expect("layer");
            }
            Entry::Raw(p, kind, size) => {
                h.set_entry_type(*kind);
                h.set_size(*size);
                h.set_mode(0o644);
                // Names the tar crate would refuse to write (`../x`) go in raw.
                let name = h.as_old_mut().name.as_mut();
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, std::io::Read::take(std::io::repeat(0), *size))
                    .expect("layer");
            }
        }
    }
    b.into_inner().expect("layer")
}

pub fn compress(tar: &[u8], zip: Zip) -> Vec<u8> {
    match zip {
        Zip::None => tar.to_vec(),
        Zip::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Zip::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// One image: its name (`None`: the archive names it by a tag only), the config's
/// `config` object (Labels, Env, Cmd, …), and layers (uncompressed tar, compression).
pub struct Image {
    pub name: Option<String>,
    pub config: serde_json::Value,
    pub layers: Vec<(Vec<u8>, Zip)>,
}

impl Image {
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|(t, _)| sha(t)).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json")
    }
}

/// Files of an archive, in order.
type Files = Vec<(String, Vec<u8>)>;

/// An OCI image layout's files.
pub fn oci_layout(images: &[Image]) -> Files {
    let mut files: Files = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut manifests = Vec::new();
    for img in images {
        let config = img.config_json();
        let mut layers = Vec::new();
        for (tar, zip) in &img.layers {
            let blob = compress(tar, *zip);
            let media = match zip {
                Zip::None => "application/vnd.oci.image.layer.v1.tar",
                Zip::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Zip::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            layers.push(
                serde_json::json!({"mediaType": media, "digest": sha(&blob), "size": blob.len()}),
            );
            files.push((format!("blobs/sha256/{}", &sha(&blob)[7..]), blob));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
            "layers": layers,
        }))
        .expect("json");
        files.push((format!("blobs/sha256/{}", &sha(&config)[7..]), config));
        let mut desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
        });
        if let Some(n) = &img.name {
            desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": n});
        } else {
            desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
        }
        manifests.push(desc);
        files.push((format!("blobs/sha256/{}", &sha(&manifest)[7..]), manifest));
    }
    files.push((
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .expect("json"),
    ));
    files
}

/// A docker archive's files (layers as `<n>/layer.tar`, possibly compressed).
pub fn docker_archive(images: &[Image]) -> Files {
    let mut files: Files = Vec::new();
    let mut entries = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let config = img.config_json();
        let config_name = format!("{}.json", &sha(&config)[7..]);
        let mut layer_paths = Vec::new();
        for (n, (tar, zip)) in img.layers.iter().enumerate() {
            let p = format!("img{i}-layer{n}/layer.tar");
            files.push((p.clone(), compress(tar, *zip)));
            layer_paths.push(p);
        }
        files.push((config_name.clone(), config));
        entries.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": img.name.iter().collect::<Vec<_>>(),
            "Layers": layer_paths,
        }));
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&entries).expect("json"),
    ));
    files
}

/// Writes `files` as a tar archive at `path`.
pub fn write_tar(path: &Path, files: &Files) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("archive"));
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).expect("archive");
    }
    b.finish().expect("archive");
}

/// Writes `files` into the directory `dir` (an OCI layout directory).
pub fn write_dir(dir: &Path, files: &Files) {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, data).expect("file");
    }
}

/// Writes `img` as `repo:tag` into a docker-distribution storage tree under `root` (what a
/// sealos image's `registry/` holds: `docker/registry/v2/{blobs,repositories}`); returns
/// the manifest digest.
pub fn distribution_tree(root: &Path, repo: &str, tag: &str, img: &Image) -> String {
    let v2 = root.join("docker/registry/v2");
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        let hex = &d[7..];
        let dir = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("data"), bytes).expect("blob");
        d
    };
    let link = |rel: String, d: &str| {
        let p = v2.join(format!("repositories/{repo}/{rel}"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, d).expect("link");
    };
    let config = img.config_json();
    let config_d = put(&config);
    link(format!("_layers/sha256/{}/link", &config_d[7..]), &config_d);
    let mut layers = Vec::new();
    for (tar, zip) in &img.layers {
        let blob = compress(tar, *zip);
        let d = put(&blob);
        link(format!("_layers/sha256/{}/link", &d[7..]), &d);
        layers.push(serde_json::json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d, "size": blob.len()}));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_d, "size": config.len()},
        "layers": layers,
    }))
    .expect("json");
    let md = put(&manifest);
    link(
        format!("_manifests/revisions/sha256/{}/link", &md[7..]),
        &md,
    );
    link(format!("_manifests/tags/{tag}/current/link"), &md);
    link(
        format!("_manifests/tags/{tag}/index/sha256/{}/link", &md[7..]),
        &md,
    );
    md
}

/// An OCI layout whose one image is a multi-arch index named `name`: the `amd64` image is
/// carried, an `arm64` one is only named (as `skopeo copy` without `--all` leaves it).
/// Returns the files and the index's digest.
pub fn multi_arch_layout(name: &str, amd64: &Image) -> (Files, String) {
    let mut files = oci_layout(std::slice::from_ref(amd64));
    let index_at = files
        .iter()
        .position(|(n, _)| n == "index.json")
        .expect("index");
    let (_, index) = files.remove(index_at);
    let index: serde_json::Value = serde_json::from_slice(&index).expect("json");
    let mut carried = index["manifests"][0].clone();
    carried["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    carried
        .as_object_mut()
        .expect("object")
        .remove("annotations");
    let missing = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(b"an arm64 manifest not carried"),
        "size": 29,
        "platform": {"architecture": "arm64", "os": "linux"},
    });
    let multi = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [carried, missing],
    }))
    .expect("json");
    let d = sha(&multi);
    files.push((format!("blobs/sha256/{}", &d[7..]), multi.clone()));
    files.push((
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d,
            "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }]}))
        .expect("json"),
    ));
    (files, d)
}
