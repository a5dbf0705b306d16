//! `berth agent-binary`: the berth-agent executables the controller serves to hosts that
//! install themselves (`berth token create --install`).

use crate::client::{Client, Target};
use crate::output::{self, Format};
use anyhow::{Context, Result};
use berth_shared::api::AgentBinaryView;
use berth_shared::routes::{self, NoQuery};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AgentBinaryCmd {
    /// Serve FILE to hosts of ARCH (replaces what was served for it; checked to be a 64-bit
    /// ELF executable for ARCH)
    Add {
        file: PathBuf,
        /// `uname -m` name: x86_64, aarch64, riscv64, ppc64le, s390x, loongarch64
        #[arg(long)]
        arch: String,
        #[arg(long, default_value = "linux")]
        os: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The executables served, per OS and architecture
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Stop serving an executable
    Remove {
        #[arg(long)]
        arch: String,
        #[arg(long, default_value = "linux")]
        os: String,
    },
}

pub async fn run(cmd: AgentBinaryCmd, target: &Target) -> Result<()> {
    let c = Client::connect(target)?;
    match cmd {
        AgentBinaryCmd::Add {
            file,
            arch,
            os,
            output,
        } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                f,
                256 * 1024,
            ));
            let added: AgentBinaryView = c
                .upload::<routes::AgentBinaryAdd>(&[&os, &arch], &NoQuery {}, body)
                .await?;
            print(output, &[added])
        }
        AgentBinaryCmd::List { output } => {
            let all = c.fetch::<routes::AgentBinaryList>(&[], &NoQuery {}).await?;
            print(output, &all)
        }
        AgentBinaryCmd::Remove { arch, os } => {
            c.act::<routes::AgentBinaryRemove>(&[&os, &arch], &NoQuery {})
                .await?;
            eprintln!("berth-agent for {os}/{arch} is no longer served");
            Ok(())
        }
    }
}

fn print(format: Format, rows: &[AgentBinaryView]) -> Result<()> {
    output::print(
        format,
        &rows,
        &["OS", "ARCH", "DIGEST", "SIZE", "SOURCE", "ADDED"],
        || {
            rows.iter()
                .map(|b| {
                    vec![
                        b.os.clone(),
                        b.arch.clone(),
                        b.digest.to_string(),
                        indicatif::HumanBytes(b.size).to_string(),
                        b.source.clone(),
                        b.added_at.clone(),
                    ]
                })
                .collect()
        },
    )
}
