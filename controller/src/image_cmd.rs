//! `berth image load|list`: the container images the controller's registry serves.

use crate::client::{Client, Target};
use crate::output::{self, Format, TextOrJson};
use anyhow::{Context, Result};
use berth_shared::api::{ImageView, ImagesLoaded};
use berth_shared::routes::{self, NoQuery};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Serve the images of an OCI or docker image archive (`docker save`, `skopeo copy …
    /// oci-archive:`, `sealos save`) from the controller's registry, under the names the
    /// archive gives them (without their registry host)
    Load {
        file: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
    /// Images the registry serves, with what brought them
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

pub async fn run(cmd: ImageCmd, target: &Target) -> Result<()> {
    let client = Client::connect(target)?;
    match cmd {
        ImageCmd::Load { file, output } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                f,
                256 * 1024,
            ));
            let loaded: ImagesLoaded = client
                .upload::<routes::ImageLoad>(&[], &NoQuery {}, body)
                .await
                .with_context(|| format!("{} was not loaded", file.display()))?;
            match output {
                TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&loaded)?),
                TextOrJson::Text => {
                    for w in &loaded.warnings {
                        eprintln!("warning: {w}");
                    }
                    for i in &loaded.images {
                        println!("serving {i}");
                    }
                }
            }
            Ok(())
        }
        ImageCmd::List { output } => {
            let list: Vec<ImageView> = client.fetch::<routes::ImageList>(&[], &NoQuery {}).await?;
            output::print(output, &list, &["IMAGE", "DIGEST", "FROM"], || {
                list.iter()
                    .map(|i| {
                        vec![
                            format!("{}:{}", i.repo, i.tag),
                            i.digest.clone(),
                            i.source.clone(),
                        ]
                    })
                    .collect()
            })
        }
    }
}
