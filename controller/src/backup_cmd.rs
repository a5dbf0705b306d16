//! `berth backup -o FILE` (client of a running controller) and `berth restore FILE
//! --data-dir DIR` (local, with no controller running on DIR).

use crate::client::{Client, Target};
use anyhow::{Context, Result};
use berth_shared::routes::{self, NoQuery};
use futures_util::StreamExt;
use std::io::Write;
use std::path::Path;

pub async fn backup(target: &Target, out: &Path) -> Result<()> {
    let client = Client::connect(target)?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".berth-backup-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let resp = client.stream::<routes::Backup>(&[], &NoQuery {}).await?;
    let mut stream = resp.bytes_stream();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the backup stream was cut")?;
        n += chunk.len() as u64;
        w.write_all(&chunk)?;
    }
    w.flush()?;
    drop(w);
    tmp.as_file().sync_all()?;
    // Keep only a backup that restores: read it all back and check every digest.
    let path = tmp.path().to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || {
        crate::backup::check_or_extract(std::io::BufReader::new(std::fs::File::open(&path)?), None)
    })
    .await?
    .context("the controller sent an incomplete or damaged backup; nothing was kept")?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} ({}): database, {} PKI files, {} bundle blobs, {} agent executables; \
         it holds the CA key and admin token — keep it as secret as the data dir",
        out.display(),
        indicatif::HumanBytes(n),
        manifest.pki.len(),
        manifest.blobs.len(),
        manifest.agent_binaries.len()
    );
    Ok(())
}

pub async fn restore(file: &Path, data_dir: Option<&Path>) -> Result<()> {
    let data_dir = data_dir.context(
        "restore needs --data-dir DIR: a new or empty directory for the restored controller",
    )?;
    // Stopped by a signal, the restore removes its staging dir (it holds the CA key)
    // before it exits; a restore killed outright leaves it to the next restore or start.
    let staging = std::sync::Mutex::new(None::<std::path::PathBuf>);
    let inv = tokio::select! {
        r = crate::backup::restore(file, data_dir, &staging) => r?,
        sig = crate::signals::wait_for_stop() => {
            let left = staging.lock().ok().and_then(|mut s| s.take());
            if let Some(p) = left {
                // The extracting thread may still be writing: exit right after.
                let _ = std::fs::remove_dir_all(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
            eprintln!("error: interrupted by {sig}; nothing was restored (the partial copy was removed)");
            std::process::exit(if sig == "SIGINT" { 130 } else { 143 });
        }
    };
    eprintln!(
        "restored {} hosts, {} clusters and {} bundles into {}. Start it where the agents \
         expect their controller (the same address as before, or add the new one with --san):\n  \
         berth serve --data-dir {} --listen ADDR:PORT --advertise-url URL",
        inv.hosts,
        inv.clusters,
        inv.bundles,
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}
