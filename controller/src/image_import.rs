//! sealos cluster images made into bundles: `berth bundle import` (an `oci-archive`, a
//! docker archive or an OCI layout directory, as `sealos save`, docker and skopeo write
//! them) and `berth bundle build` of a Kubefile directory. `berth_bundle::{image, layer,
//! kubefile, sealos}` read, apply and map; this module drives them in a temp dir, packs the
//! results and uploads them.

use crate::bundle_archive::Accepts;
use crate::client::Client;
use crate::output::TextOrJson;
use anyhow::{bail, Context, Result};
use berth_bundle::layer::Budget;
use berth_bundle::{image, kubefile, sealos, Limits, Packed};
use berth_shared::api::TagRequest;
use berth_shared::routes::{self, NoQuery};
use berth_shared::BundleRef;
use std::path::{Path, PathBuf};

/// One bundle made from an image.
#[derive(Debug)]
pub struct Made {
    /// The packed bundle.
    pub file: PathBuf,
    pub packed: Packed,
    /// What it is stored as; the first also names the manifest.
    pub tags: Vec<String>,
    /// Where it came from (`image 2 of manifest.json`).
    pub from: String,
}

/// How an image name is written in a Clusterfile (`berth_shared::bundle_ref::short_name`).
pub fn as_users_write_it(name: &str) -> String {
    berth_shared::bundle_ref::short_name(name).to_string()
}

fn check_tags(tags: &[String]) -> Result<()> {
    for t in tags {
        match t.parse::<BundleRef>() {
            Ok(BundleRef::Tag { .. }) => {}
            Ok(BundleRef::Digest(_)) => bail!("--tag {t}: must be name:tag, not a digest"),
            Err(e) => bail!("--tag: {e}"),
        }
    }
    Ok(())
}

/// Makes a bundle of every image at `path` (an archive file or a layout directory) inside
/// `work`. `tags`, when given, name the images in order (one each).
pub fn make_from_images(
    path: &Path,
    tags: &[String],
    limits: &Limits,
    work: &Path,
) -> Result<Vec<Made>> {
    let src = if path.is_dir() {
        path.to_path_buf()
    } else {
        let into = work.join("archive");
        std::fs::create_dir(&into)?;
        image::extract(path, &into, limits)
            .with_context(|| format!("{} is refused", path.display()))?;
        into
    };
    let images = image::read_dir(&src, image::this_arch())
        .with_context(|| format!("{} is refused", path.display()))?;
    if !tags.is_empty() && tags.len() != images.len() {
        bail!(
            "{} holds {} image(s) and {} --tag were given; give one --tag per image, in the archive's order",
            path.display(),
            images.len(),
            tags.len()
        );
    }
    let mut made = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let names: Vec<String> = if tags.is_empty() {
            let mut n: Vec<String> = img.names.iter().map(|n| as_users_write_it(n)).collect();
            n.dedup();
            n
        } else {
            vec![tags[i].clone()]
        };
        let Some(first) = names.first() else {
            bail!(
                "{} of {} has no name (the archive names it only by a tag or not at all); give --tag name:tag, one per image in order",
                img.label,
                path.display()
            );
        };
        check_tags(&names).with_context(|| format!("{} of {}", img.label, path.display()))?;
        let root = work.join(format!("image-{i}"));
        std::fs::create_dir(&root)?;
        image::verify_layers(img)?;
        let mut budget = Budget::new(*limits);
        for (n, layer) in img.layers.iter().enumerate() {
            berth_bundle::layer::apply(
                &layer.path,
                layer.diff_id.as_ref(),
                &root,
                &mut budget,
                &format!("{}: layer {}", img.label, n + 1),
            )
            .with_context(|| format!("{}: layer {} is refused", img.label, n + 1))?;
        }
        let (name, version) = sealos::name_and_version(&as_users_write_it(first));
        sealos::write_bundle(&root, &img.config, &name, &version)
            .with_context(|| format!("{} ({first})", img.label))?;
        let file = work.join(format!("image-{i}.tar.zst"));
        let packed = berth_bundle::pack(&root, &file)
            .with_context(|| format!("{} ({first}) cannot be made a bundle", img.label))?;
        std::fs::remove_dir_all(&root)?;
        made.push(Made {
            file,
            packed,
            tags: names,
            from: img.label.clone(),
        });
    }
    Ok(made)
}

/// Builds the Kubefile directory `dir` into the bundle file `out`, named by `tag`
/// (default: the directory's name, `latest`). `work` is scratch space.
pub fn make_from_kubefile(
    dir: &Path,
    kubefile_path: &Path,
    tag: Option<&str>,
    work: &Path,
    out: &Path,
) -> Result<Packed> {
    let kf = kubefile::read(kubefile_path)?;
    let root = work.join("rootfs");
    std::fs::create_dir(&root)?;
    let file = kubefile_path.display().to_string();
    kubefile::copy_into(&kf, dir, &root, &file)?;
    // A bundle.yaml COPY'd from the context is not this image's manifest.
    let _ = std::fs::remove_file(root.join(berth_shared::bundle::MANIFEST_FILE));
    let reference = match tag {
        Some(t) => {
            check_tags(&[t.to_string()])?;
            t.to_string()
        }
        None => {
            let base = std::fs::canonicalize(dir)?
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_else(|| "image".into());
            format!("{base}:latest")
        }
    };
    let (name, version) = sealos::name_and_version(&reference);
    sealos::write_bundle(&root, &kf.config, &name, &version).context(file)?;
    Ok(berth_bundle::pack(&root, out)?)
}

/// `berth bundle import PATH [--tag …]…`.
pub async fn import(
    client: &Client,
    path: &Path,
    tags: &[String],
    output: TextOrJson,
) -> Result<()> {
    check_tags(tags)?;
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    let accepts = Accepts::of(client).await.context("nothing was imported")?;
    let work = tempfile::Builder::new()
        .prefix("berth-import-")
        .tempdir()
        .context("cannot create a temp dir for the import")?;
    let (p, t, w) = (path.to_path_buf(), tags.to_vec(), work.path().to_path_buf());
    let made = tokio::task::spawn_blocking(move || make_from_images(&p, &t, &accepts.limits, &w))
        .await
        .context("import task failed")?
        .map_err(|e| e.context("nothing was imported"))?;
    let mut report = Vec::new();
    for m in &made {
        if m.packed.size > accepts.max_bundle_size {
            bail!(
                "{} makes a bundle of {} bytes; the controller accepts bundles up to {} bytes (`berth serve --max-bundle-size`)",
                m.from,
                m.packed.size,
                accepts.max_bundle_size
            );
        }
    }
    for m in &made {
        let resp =
            crate::client::upload_bundle(client, &m.file, Some(&m.tags[0]), None, false).await?;
        for extra in &m.tags[1..] {
            let tag = TagRequest {
                digest: resp.digest,
            };
            client
                .send::<routes::BundleTag>(&[extra], &NoQuery {}, &tag)
                .await?;
        }
        let man = &m.packed.manifest;
        let hooks: Vec<&str> = man.hooks.keys().map(String::as_str).collect();
        if matches!(output, TextOrJson::Text) {
            println!(
                "imported {} as {} ({}, hooks: {}, {} command(s); {})",
                m.tags.join(", "),
                resp.digest,
                serde_json::to_value(man.bundle_type)?
                    .as_str()
                    .unwrap_or_default(),
                if hooks.is_empty() {
                    "none".to_string()
                } else {
                    hooks.join(", ")
                },
                man.commands.len(),
                m.from
            );
        }
        report.push(serde_json::json!({
            "tags": m.tags,
            "digest": resp.digest,
            "created": resp.created,
            "size": m.packed.size,
            "from": m.from,
            "manifest": man,
        }));
    }
    if matches!(output, TextOrJson::Json) {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
