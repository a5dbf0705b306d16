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

/// How often `--watch` asks again.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `--watch` on a list (kubectl's `-w`): prints it as [`print`] does, then again each time
/// what `key` says of it changes, until interrupted. JSON prints one compact document per
/// line (JSON lines, for `jq`), YAML one document per change (`---`), a table the table
/// again under a blank line.
pub async fn watch<T, F, Fut>(
    format: Format,
    header: &[&str],
    mut fetch: F,
    rows: impl Fn(&T) -> Vec<Vec<String>>,
    key: impl Fn(&T) -> String,
) -> Result<()>
where
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last: Option<String> = None;
    let mut failing = false;
    loop {
        // A controller restarting or busy for a moment does not end a watch: it says so
        // once and keeps asking; the first read must succeed.
        let now = match fetch().await {
            Ok(v) => {
                if failing {
                    eprintln!("watch: the controller answers again");
                    failing = false;
                }
                v
            }
            Err(e) if last.is_some() => {
                if !failing {
                    eprintln!("watch: {e:#}; retrying every {} s", WATCH_EVERY.as_secs());
                    failing = true;
                }
                tokio::time::sleep(WATCH_EVERY).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let k = key(&now);
        if last.as_ref() != Some(&k) {
            match format {
                Format::Json => println!("{}", serde_json::to_string(&now)?),
                Format::Yaml => print!("---\n{}", serde_norway::to_string(&now)?),
                Format::Table => {
                    if last.is_some() {
                        println!();
                    }
                    print(format, &now, header, || rows(&now))?;
                }
            }
            std::io::Write::flush(&mut std::io::stdout())?;
            last = Some(k);
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
