//! The report spool: log chunks and step reports are written to disk (fsynced) before they
//! are sent, and sent in order; an entry is deleted only after the controller accepted it.
//! So nothing is lost while the controller is unreachable, and nothing is sent twice out
//! of order (the controller ignores repeats).

use anyhow::{Context, Result};
use berth_shared::api::{ReportBatch, ReportEntry};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Spool {
    dir: PathBuf,
    seq: AtomicU64,
    notify: Notify,
}

const BATCH: usize = 64;

impl Spool {
    pub fn open(dir: &Path) -> Result<Arc<Spool>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let max = entries(dir)?.last().map(|(n, _)| *n).unwrap_or(0);
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(max + 1),
            notify: Notify::new(),
        }))
    }

    /// Appends an entry durably.
    pub fn push(&self, e: &ReportEntry) -> Result<()> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let tmp = self.dir.join(format!(".{n:020}.tmp"));
        let fin = self.dir.join(format!("{n:020}.json"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(e)?)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &fin)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Sends spooled entries in order until shutdown.
    pub async fn run_sender(
        self: Arc<Self>,
        client: reqwest::Client,
        url: String,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            let batch = match entries(&self.dir) {
                Ok(e) => e.into_iter().take(BATCH).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the report spool");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                continue;
            }
            let mut body = ReportBatch::default();
            for (_, p) in &batch {
                match std::fs::read(p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(e) => body.entries.push(e),
                    None => {
                        tracing::warn!(file = %p.display(), "dropping an unreadable spool entry");
                    }
                }
            }
            let ok = match client
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => true,
                Ok(r) => {
                    tracing::warn!(status = %r.status(), spooled = batch.len(), "controller refused reports; keeping them");
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %crate::join::chain(&e), spooled = batch.len(), "controller unreachable; reports stay spooled");
                    false
                }
            };
            if ok {
                failures = 0;
                for (_, p) in &batch {
                    let _ = std::fs::remove_file(p);
                }
            } else {
                failures += 1;
                let delay = Duration::from_millis(500 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn entries(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if let Some(n) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}
