//! CLI output: tables for people, JSON and YAML for scripts.

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or as the table `rows` builds.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    header: &[&str],
    rows: impl FnOnce() -> Vec<Vec<String>>,
) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
        Format::Table => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header(header.iter().copied());
            for r in rows() {
                t.add_row(r);
            }
            println!(
                "{}",
                t.to_string()
                    .lines()
                    .map(str::trim_end)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    Ok(())
}

/// "3s", "4m", "2h", "5d" ago.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `-o text|json` for commands whose text output is one value (a digest, a token).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

/// An exit status other than 0 and 1 that is not an error (`berth diff` exits 2 when there
/// are changes): `cli::main` exits with it and prints nothing more.
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}
