//! The report spool: log chunks and step reports are written to disk (fsynced) before they
//! are sent, and sent in order; an entry is deleted only after the controller accepted it.
//! So nothing is lost while the controller is unreachable, and nothing is sent twice out
//! of order (the controller ignores repeats).

use anyhow::{Context, Result};
use berth_shared::api::{ErrorBody, ReportEntry};
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

/// A batch is at most this many bytes of JSON: well under the controller's 1 MiB body
/// limit, whatever the entries hold (a log chunk is at most 64 KiB of text, which JSON
/// escaping can at most sextuple).
const BATCH_BYTES: usize = 512 * 1024;
/// And at most this many entries.
const BATCH_ENTRIES: usize = 256;
/// Retries of a batch the controller did not take back off from this to `RETRY_MAX`.
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

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

    /// How many entries wait to be accepted by the controller.
    pub fn depth(&self) -> usize {
        entries(&self.dir).map_or(0, |e| e.len())
    }

    /// Appends an entry durably.
    pub fn push(&self, e: &ReportEntry) -> Result<()> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        // Log chunks and outputs may hold secrets: 0600.
        berth_files::write_durable(
            &self.dir.join(format!("{n:020}.json")),
            &serde_json::to_vec(e)?,
            0o600,
        )?;
        self.notify.notify_one();
        Ok(())
    }

    /// Sends spooled entries in order until shutdown.
    ///
    /// Batches are sized by bytes. A `413` halves the batch (a single entry that is still
    /// too large is dropped, logged); a `4xx` naming a refused entry drops the entries up to
    /// and including it (the ones before it were applied) — a refused report never wedges
    /// the queue. Network errors, `5xx`, `401` and `403` without an entry keep everything
    /// and back off.
    pub async fn run_sender(
        self: Arc<Self>,
        session: crate::session::Session,
        url: String,
        probe: crate::probe::Probe,
        shutdown: CancellationToken,
    ) {
        let mut backoff = crate::backoff::Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut limit = BATCH_BYTES;
        loop {
            let all = match entries(&self.dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the report spool");
                    Vec::new()
                }
            };
            if all.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                continue;
            }
            // Read entries until the batch is full; unreadable ones are dropped.
            let mut batch: Vec<PathBuf> = Vec::new();
            let mut body: Vec<u8> = b"{\"entries\":[".to_vec();
            for (_, p) in all.into_iter().take(BATCH_ENTRIES) {
                let bytes = match std::fs::read(p.as_path()) {
                    Ok(b) if serde_json::from_slice::<ReportEntry>(&b).is_ok() => b,
                    _ => {
                        tracing::warn!(file = %p.display(), "dropping an unreadable spool entry");
                        let _ = std::fs::remove_file(&p);
                        continue;
                    }
                };
                if !batch.is_empty() && body.len() + bytes.len() + 2 > limit {
                    break;
                }
                if !batch.is_empty() {
                    body.push(b',');
                }
                body.extend_from_slice(&bytes);
                batch.push(p);
            }
            if batch.is_empty() {
                continue;
            }
            body.extend_from_slice(b"]}");
            let started = std::time::Instant::now();
            let resp = session
                .client()
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            probe.reports_sent(
                batch.len(),
                started.elapsed(),
                &match &resp {
                    Ok(r) if r.status().is_success() => "ok".to_string(),
                    Ok(r) => format!("http_{}", r.status().as_u16()),
                    Err(_) => "unreachable".to_string(),
                },
            );
            let drop_upto = match resp {
                Ok(r) if r.status().is_success() => {
                    limit = (limit * 2).min(BATCH_BYTES);
                    Some(batch.len())
                }
                Ok(r) if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                    if batch.len() == 1 {
                        tracing::error!(file = %batch[0].display(), "the controller refuses this report as too large; dropping it");
                        Some(1)
                    } else {
                        limit = (limit / 2).max(1);
                        tracing::warn!(
                            entries = batch.len(),
                            limit,
                            "report batch too large; splitting it"
                        );
                        continue;
                    }
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let err: Option<ErrorBody> = r.json().await.ok();
                    match err.as_ref().and_then(|e| e.entry) {
                        Some(i) if i < batch.len() => {
                            let e = err.as_ref();
                            tracing::warn!(%status, code = e.map(|e| e.code.as_str()).unwrap_or(""),
                                error = e.map(|e| e.message.as_str()).unwrap_or(""),
                                "the controller refused a report; dropping it");
                            Some(i + 1)
                        }
                        _ if status == reqwest::StatusCode::UNAUTHORIZED
                            || status == reqwest::StatusCode::FORBIDDEN =>
                        {
                            tracing::warn!(%status, spooled = batch.len(), "controller rejected this agent; reports stay spooled");
                            None
                        }
                        _ => {
                            tracing::warn!(%status, error = ?err, "the controller refused a report batch; dropping its first entry");
                            Some(1)
                        }
                    }
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), spooled = batch.len(), "controller refused reports; keeping them");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %crate::join::chain(&e), spooled = batch.len(), "controller unreachable; reports stay spooled");
                    None
                }
            };
            match drop_upto {
                Some(n) => {
                    backoff.reset();
                    for p in &batch[..n] {
                        let _ = std::fs::remove_file(p);
                    }
                }
                None => {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
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
