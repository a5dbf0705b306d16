//! `berth bundle build|push|import|list|inspect|rm|save|load`.

use crate::client::{Client, Target};
use crate::output::TextOrJson;
use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use berth_shared::api::BundleView;
use berth_shared::routes::{self, NoQuery};
use berth_shared::BundleRef;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Validate DIR/bundle.yaml and pack DIR into a reproducible tar.zst; prints its digest.
    /// A sealos build directory (a Kubefile or Sealfile of FROM scratch, COPY, LABEL, ENV,
    /// CMD, ENTRYPOINT and no bundle.yaml) is built as sealos would, without a container
    /// runtime
    Build {
        dir: PathBuf,
        /// Output file [default: <name>-<version>.tar.zst in the current directory]
        #[arg(short = 'o', long = "output-file")]
        out: Option<PathBuf>,
        /// name:tag of a Kubefile build [default: the directory's name, latest]; a
        /// bundle.yaml names its bundle itself
        #[arg(long)]
        tag: Option<String>,
        /// `text` prints the digest; `json` prints digest, size, file and manifest
        #[arg(long = "format", value_enum, default_value_t = TextOrJson::Text)]
        format: TextOrJson,
    },
    /// Upload a bundle (a directory is built first) and optionally tag it
    Push {
        /// A bundle directory or a built .tar.zst
        path: PathBuf,
        /// name:tag to point at the uploaded digest (moves an existing tag)
        #[arg(long)]
        tag: Option<String>,
        /// The architecture it is built for (x86_64/amd64, aarch64/arm64): the tag gets
        /// this digest for hosts of that architecture, beside its others (default: the
        /// bundle.yaml's `arch`; with neither the digest replaces the whole tag)
        #[arg(long, requires = "tag")]
        arch: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
    /// Make bundles of sealos cluster images and store them: an oci-archive (what `sealos
    /// save` writes), a docker archive (`sealos save -m`, `docker save`; several images
    /// make several bundles) or an OCI layout directory. Layers are applied with their
    /// whiteouts and held to the bundle unpack rules; labels, Env and Cmd follow sealos's
    /// rules (docs/bundles.md, "sealos images")
    Import {
        /// The archive file or layout directory
        path: PathBuf,
        /// name:tag for the images, one per image in the archive's order [default: the
        /// names the archive gives them]
        #[arg(long)]
        tag: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
    /// Stored bundles with their tags
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// One bundle's manifest, size and digest
    Inspect {
        /// name:tag or sha256:<hex>
        reference: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Remove a tag (name:tag) or a bundle and all its tags (sha256:<hex>)
    Rm { reference: String },
    /// Write bundles (name:tag or sha256:<hex>) with their tags into one file, to carry to
    /// another controller (`berth bundle load`)
    Save {
        #[arg(required = true)]
        references: Vec<String>,
        /// The archive to write (replaced only once complete)
        #[arg(short = 'o', long = "output-file", required = true)]
        out: PathBuf,
    },
    /// Load the bundles of a `berth bundle save` file, all or nothing: every sha256, every
    /// bundle and the controller's limits are checked before anything is uploaded; same
    /// digests, same tags
    Load {
        file: PathBuf,
        /// Move tags the controller already has on another digest (without it, such a
        /// load is refused and changes nothing)
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(cmd: BundleCmd, target: &Target) -> Result<()> {
    match cmd {
        BundleCmd::Save { references, out } => {
            crate::bundle_archive::save(&Client::connect(target)?, &references, &out).await
        }
        BundleCmd::Load { file, force } => {
            crate::bundle_archive::load(&Client::connect(target)?, &file, force).await
        }
        BundleCmd::Import { path, tag, output } => {
            crate::image_import::import(&Client::connect(target)?, &path, &tag, output).await
        }
        BundleCmd::Build {
            dir,
            out,
            format,
            tag,
        } => {
            let packed = build(&dir, out, tag.as_deref()).await?;
            match format {
                TextOrJson::Text => println!("{}", packed.0.digest),
                TextOrJson::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "digest": packed.0.digest,
                        "size": packed.0.size,
                        "file": packed.1,
                        "entries": packed.0.entries,
                        "manifest": packed.0.manifest,
                    }))?
                ),
            }
            Ok(())
        }
        BundleCmd::Push {
            path,
            tag,
            arch,
            output,
        } => {
            let arch = arch
                .map(|a| {
                    berth_shared::bundle::normalize_arch(&a).ok_or_else(|| {
                        anyhow::anyhow!("--arch: `{a}` is not an architecture; use x86_64 (amd64) or aarch64 (arm64)")
                    })
                })
                .transpose()?;
            if let Some(t) = &tag {
                match t.parse::<BundleRef>() {
                    Ok(BundleRef::Tag { .. }) => {}
                    Ok(BundleRef::Digest(_)) => bail!("--tag must be name:tag, not a digest"),
                    Err(e) => bail!("--tag: {e}"),
                }
            }
            let client = Client::connect(target)?;
            let (file, _tmp) = if path.is_dir() {
                let tmp = tempdir_for_build()?;
                let out = tmp.path().join("bundle.tar.zst");
                // --tag names a Kubefile build's manifest too; a bundle.yaml names its own.
                let has_manifest = path.join(berth_shared::bundle::MANIFEST_FILE).exists();
                let kubefile_tag = tag.as_deref().filter(|_| !has_manifest);
                let (p, _) = build(&path, Some(out.clone()), kubefile_tag).await?;
                eprintln!("built {} ({} bytes)", p.digest, p.size);
                (out, Some(tmp))
            } else {
                not_an_image_archive(&path)?;
                (path.clone(), None)
            };
            let resp = crate::client::upload_bundle(
                &client,
                &file,
                tag.as_deref(),
                arch.as_deref(),
                matches!(output, TextOrJson::Text),
            )
            .await?;
            match output {
                TextOrJson::Json => {
                    println!("{}", serde_json::to_string_pretty(&resp)?)
                }
                TextOrJson::Text => {
                    let what = if resp.created {
                        "pushed"
                    } else {
                        "already stored"
                    };
                    match (&resp.tag, &resp.previous) {
                        (Some(t), Some(prev)) => {
                            println!("{what} {} as {t} (moved from {prev})", resp.digest)
                        }
                        (Some(t), None) => println!("{what} {} as {t}", resp.digest),
                        _ => println!("{what} {}", resp.digest),
                    }
                    for i in &resp.images {
                        println!("serving image {i}");
                    }
                    for w in &resp.warnings {
                        eprintln!("warning: {w}");
                    }
                }
            }
            Ok(())
        }
        BundleCmd::List { output } => {
            let client = Client::connect(target)?;
            let list: Vec<BundleView> =
                client.fetch::<routes::BundleList>(&[], &NoQuery {}).await?;
            output::print(
                output,
                &list,
                &[
                    "NAME", "VERSION", "TYPE", "TAGS", "SIZE", "DIGEST", "CREATED",
                ],
                || {
                    list.iter()
                        .map(|b| {
                            vec![
                                b.name.clone(),
                                b.version.clone(),
                                b.bundle_type.clone(),
                                b.tags.join(","),
                                indicatif::HumanBytes(b.size).to_string(),
                                b.digest.to_string()[..19].to_string(),
                                b.created_at.clone(),
                            ]
                        })
                        .collect()
                },
            )
        }
        BundleCmd::Inspect { reference, output } => {
            reference.parse::<BundleRef>()?;
            let client = Client::connect(target)?;
            let b: BundleView = client
                .fetch::<routes::BundleInspect>(&[&reference], &NoQuery {})
                .await?;
            let fmt = if output == Format::Table {
                Format::Yaml
            } else {
                output
            };
            output::print(fmt, &b, &[], Vec::new)
        }
        BundleCmd::Rm { reference } => {
            reference.parse::<BundleRef>()?;
            let client = Client::connect(target)?;
            client
                .act::<routes::BundleRemove>(&[&reference], &NoQuery {})
                .await?;
            println!("removed {reference}");
            Ok(())
        }
    }
}

async fn build(
    dir: &Path,
    out: Option<PathBuf>,
    tag: Option<&str>,
) -> Result<(berth_bundle::Packed, PathBuf)> {
    let dir = dir.to_path_buf();
    let tag = tag.map(str::to_string);
    tokio::task::spawn_blocking(move || -> Result<_> {
        let default_out = |m: &berth_shared::bundle::Manifest| {
            PathBuf::from(format!("{}-{}.tar.zst", m.name.replace('/', "_"), m.version))
        };
        let has_manifest = dir.join(berth_shared::bundle::MANIFEST_FILE).exists();
        if let (false, Some(kubefile)) = (has_manifest, berth_bundle::kubefile::find(&dir)) {
            let work = tempdir_for_build()?;
            let tmp_out = work.path().join("bundle.tar.zst");
            let packed = crate::image_import::make_from_kubefile(
                &dir,
                &kubefile,
                tag.as_deref(),
                work.path(),
                &tmp_out,
            )?;
            let out = out.unwrap_or_else(|| default_out(&packed.manifest));
            std::fs::copy(&tmp_out, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            return Ok((packed, out));
        }
        if tag.is_some() && has_manifest {
            bail!("--tag names a Kubefile build; {} has a bundle.yaml, which names the bundle (push it with `berth bundle push DIR --tag name:tag` to tag it otherwise)", dir.display());
        }
        let manifest = berth_bundle::pack::read_manifest(&dir)?;
        let out = out.unwrap_or_else(|| default_out(&manifest));
        let packed = berth_bundle::pack(&dir, &out)?;
        Ok((packed, out))
    })
    .await
    .context("build task failed")?
}

/// Refuses, before uploading, a file that is an image archive or a plain tar rather than a
/// bundle, saying what to run instead.
fn not_an_image_archive(path: &Path) -> Result<()> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .with_context(|| format!("cannot open {}", path.display()))?;
    if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        return Ok(());
    }
    match berth_bundle::image::describe_archive(path) {
        Some(what) if what.contains("image archive") => bail!(
            "{} is {what}, not a berth bundle; import it with `berth bundle import {}`",
            path.display(),
            path.display()
        ),
        _ => Ok(()), // the controller says what is wrong with it
    }
}

/// A temp dir for a bundle built before it is pushed; removed when dropped.
fn tempdir_for_build() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("berth-push-")
        .tempdir()
        .context("cannot create a temp dir for the build")
}

/// Pushes a local bundle directory or file, tagged `name:version` from its manifest;
/// returns that tag.
pub async fn push_local(client: &Client, path: &Path) -> Result<String> {
    let (file, manifest, _tmp) = if path.is_dir() {
        let tmp = tempdir_for_build()?;
        let out = tmp.path().join("bundle.tar.zst");
        let (packed, _) = build(path, Some(out.clone()), None).await?;
        (out, packed.manifest, Some(tmp))
    } else {
        // Read the manifest locally (one streaming pass) so the upload happens once, tagged.
        let p = path.to_path_buf();
        let manifest = tokio::task::spawn_blocking(move || -> Result<_> {
            let f =
                std::fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
            let scanned =
                berth_bundle::scan(std::io::BufReader::new(f), &berth_bundle::Limits::default())
                    .with_context(|| format!("{} is not a valid bundle", p.display()))?;
            Ok(scanned.manifest)
        })
        .await??;
        (path.to_path_buf(), manifest, None)
    };
    let tag = format!("{}:{}", manifest.name, manifest.version);
    let resp = crate::client::upload_bundle(client, &file, Some(&tag), None, true).await?;
    eprintln!("pushed {} as {tag}", resp.digest);
    Ok(tag)
}
