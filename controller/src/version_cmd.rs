//! `berth version`, and the man pages (`berth man DIR`).

use crate::client::{Client, Target};
use crate::output::TextOrJson;
use anyhow::{Context, Result};
use berth_shared::routes::{self, NoQuery};
use std::path::Path;

/// Prints this client's version and the controller's (from `GET /v1/healthz`); a controller
/// that cannot be reached is said, and the exit code is 1.
pub async fn version(target: &Target, out: TextOrJson) -> Result<()> {
    let client_version = berth_shared::VERSION;
    let controller = match Client::connect(target) {
        Ok(c) => c
            .fetch::<routes::Healthz>(&[], &NoQuery {})
            .await
            .map(|h| h.version),
        Err(e) => Err(e),
    };
    match out {
        TextOrJson::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "client": client_version,
                "controller": controller.as_ref().ok(),
            }))?
        ),
        TextOrJson::Text => {
            println!("client:     berth {client_version}");
            match &controller {
                Ok(v) => println!("controller: berth {v}"),
                Err(e) => println!("controller: unreachable ({e:#})"),
            }
        }
    }
    match controller {
        Ok(_) => Ok(()),
        // Said above; exit 1 without saying it twice.
        Err(_) => Err(crate::output::ExitStatus(1).into()),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
/// `berth completion SHELL`: the completion script of the command tree `cmd`.
pub fn completion(shell: clap_complete::Shell, mut cmd: clap::Command) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "berth", &mut script);
    write_stdout(&script)
}

pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes `berth.1` and `berth-<command>.1` for every command of `cmd` into `dir`.
pub fn man_pages(dir: &Path, cmd: clap::Command) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_page(dir, "berth", cmd.clone())?;
    let mut n = 1;
    for sub in cmd.get_subcommands() {
        let name = format!("berth-{}", sub.get_name());
        write_page(
            dir,
            &name,
            sub.clone()
                .display_name(name.clone())
                .bin_name(name.clone()),
        )?;
        n += 1;
    }
    eprintln!("wrote {n} man pages to {}", dir.display());
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))
}
