//! Fetching bundle blobs by digest: a per-digest cache, resumable with `Range`, verified
//! while streaming; and unpacking a verified blob into place atomically.
//!
//! Layout under `<data-dir>/cache/blobs/sha256/`: `<hex>` is a verified blob; `<hex>.partial`
//! holds the bytes of an interrupted download, from which the next attempt resumes.

use crate::join::chain;
use anyhow::{anyhow, bail, Context, Result};
use berth_bundle::{unpack, Limits, Unpacked};
use berth_shared::Digest;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Fetcher {
    pub session: crate::session::Session,
    pub controller: String,
    pub cache: PathBuf,
    /// Download attempts before giving up (each resumes from the bytes on disk).
    pub attempts: u32,
    /// Plan generations: the newest accepted, and the one being run. While a step waits
    /// for its blob to be released, a newer plan supersedes the wait (see [`Superseded`]).
    pub plans: PlanGenerations,
}

/// The newest accepted plan generation and the one the executor runs.
#[derive(Debug, Clone, Default)]
pub struct PlanGenerations {
    pub newest: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub running: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PlanGenerations {
    fn superseded(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.newest.load(Ordering::SeqCst) > self.running.load(Ordering::SeqCst)
    }
}

/// A step stopped waiting because a newer plan arrived: nothing is reported, the newer
/// plan resumes it. (A controller restored from a backup releases the step only after it
/// had the results the newer plan makes the agent send again.)
#[derive(Debug, thiserror::Error)]
#[error("a newer plan arrived while this step waited for its bundle to be released")]
pub struct Superseded;

impl Fetcher {
    /// The cluster context a plan names: from the cache, else downloaded, its size and
    /// sha256 checked against the signed reference before it is kept or read. It holds
    /// the Clusterfile and outputs (secrets), so it is cached 0600.
    pub async fn context(
        &self,
        r: &berth_shared::plan::ContextRef,
    ) -> Result<berth_shared::plan::ClusterContext> {
        use berth_shared::plan::MAX_CONTEXT_BYTES;
        if r.size > MAX_CONTEXT_BYTES {
            bail!(
                "the plan names a context of {} bytes; at most {MAX_CONTEXT_BYTES} are accepted",
                r.size
            );
        }
        let path = self
            .cache
            .join("contexts")
            .join(format!("{}.json", r.digest.hex()));
        let body = match tokio::fs::read(&path).await {
            Ok(b) if Digest::of(&b) == r.digest => b,
            _ => self.download_context(r).await?,
        };
        if !path.exists() {
            let (p, b) = (path.clone(), body.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(p.parent().context("cache dir")?)?;
                berth_files::write_durable(&p, &b, 0o600)
            })
            .await??;
        }
        serde_json::from_slice(&body).context("the cluster context is not valid")
    }

    async fn download_context(&self, r: &berth_shared::plan::ContextRef) -> Result<Vec<u8>> {
        let url = format!(
            "{}/v1/agent/contexts/sha256/{}",
            self.controller,
            r.digest.hex()
        );
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome: Result<Vec<u8>> = async {
                let resp = self
                    .session
                    .client()
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| anyhow!("cannot reach the controller: {}", chain(&e)))?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    bail!("controller answered {status}: {body}");
                }
                let mut body = Vec::with_capacity(r.size as usize);
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| anyhow!("download cut: {}", chain(&e)))?;
                    if (body.len() + chunk.len()) as u64 > r.size {
                        bail!(
                            "the controller sent more than the {} bytes the plan names",
                            r.size
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                let got = Digest::of(&body);
                if got != r.digest {
                    bail!(
                        "the context has digest {got}, the signed plan names {}",
                        r.digest
                    );
                }
                Ok(body)
            }
            .await;
            match outcome {
                Ok(b) => return Ok(b),
                Err(e) if attempt >= self.attempts => {
                    return Err(e.context(format!(
                        "cannot fetch the cluster context {} after {attempt} attempts",
                        r.digest
                    )))
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "context fetch failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.cache.join("blobs/sha256").join(d.hex())
    }

    /// Returns the path of the verified blob, downloading what is missing.
    pub async fn fetch(&self, digest: &Digest) -> Result<PathBuf> {
        let done = self.blob_path(digest);
        if done.is_file() {
            return Ok(done);
        }
        let dir = done.parent().context("cache dir")?.to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        let partial = dir.join(format!("{}.partial", digest.hex()));
        let url = format!("{}/v1/blobs/sha256/{}", self.controller, digest.hex());

        // Bytes already on disk from an earlier attempt are hashed once, then extended.
        let (mut hasher, mut offset) = {
            let p = partial.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
                match std::fs::File::open(&p) {
                    Ok(mut f) => {
                        let mut h = Sha256::new();
                        let mut n = 0u64;
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let k = f.read(&mut buf)?;
                            if k == 0 {
                                break;
                            }
                            h.update(&buf[..k]);
                            n += k as u64;
                        }
                        Ok((h, n))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Sha256::new(), 0)),
                    Err(e) => Err(e),
                }
            })
            .await??
        };

        let mut attempt = 0u32;
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            attempt += 1;
            if offset > 0 {
                tracing::info!(digest = %digest, offset, "resuming download from the bytes already fetched");
            }
            let mut req = self.session.client().get(&url);
            if offset > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            let outcome: Result<()> = match req.send().await {
                Err(e) => Err(anyhow!("cannot reach the controller: {}", chain(&e))),
                Ok(resp) => match resp.status() {
                    StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                        if resp.status() == StatusCode::OK && offset > 0 {
                            // The server ignored the range: start over.
                            offset = 0;
                            hasher = Sha256::new();
                            tokio::fs::remove_file(&partial).await.ok();
                        }
                        let (h, n, err) = stream_to(resp, &partial, hasher, offset).await?;
                        hasher = h;
                        offset = n;
                        match err {
                            None => break,
                            Some(e) => Err(e),
                        }
                    }
                    StatusCode::RANGE_NOT_SATISFIABLE => {
                        // More on disk than the blob has: the partial file is junk.
                        offset = 0;
                        hasher = Sha256::new();
                        tokio::fs::remove_file(&partial).await.ok();
                        Err(anyhow!(
                            "partial download was longer than the blob; starting over"
                        ))
                    }
                    s if s.is_client_error() => {
                        let body = resp.text().await.unwrap_or_default();
                        let code = serde_json::from_str::<berth_shared::api::ErrorBody>(&body)
                            .map(|e| e.code)
                            .unwrap_or_default();
                        if code == berth_shared::api::codes::BLOB_NOT_RELEASED
                            && self.plans.superseded()
                        {
                            return Err(Superseded.into());
                        }
                        if code == berth_shared::api::codes::BLOB_NOT_RELEASED {
                            // The plan came from a controller that released the step; this
                            // one does not list it (yet): one restored from a backup, which
                            // releases it once the results before it are sent again.
                            Err(anyhow!("the controller does not list a step of this host using {digest} (yet)"))
                        } else {
                            bail!("controller refused the download of {digest} ({s}): {body}");
                        }
                    }
                    s => Err(anyhow!("controller answered {s}")),
                },
            };
            if let Err(e) = outcome {
                if attempt >= self.attempts {
                    return Err(e.context(format!(
                        "download of {digest} failed after {attempt} attempts ({offset} bytes kept for the next try)"
                    )));
                }
                let delay = backoff.next_delay();
                tracing::warn!(digest = %digest, offset, error = %format!("{e:#}"), retry_in = ?delay, "download interrupted");
                tokio::time::sleep(delay).await;
            }
        }

        let got = Digest::from_hasher(hasher);
        if got != *digest {
            tokio::fs::remove_file(&partial).await.ok();
            bail!("downloaded blob hashes to {got}, not {digest}; discarded it (nothing was unpacked)");
        }
        tokio::fs::rename(&partial, &done).await?;
        tracing::info!(digest = %digest, bytes = offset, "blob fetched and verified");
        Ok(done)
    }
}

/// Appends the response body to `partial`, hashing it on a blocking thread. Returns the
/// hasher and byte count reached, and the error that cut the body short, if any.
async fn stream_to(
    resp: reqwest::Response,
    partial: &Path,
    hasher: Sha256,
    offset: u64,
) -> Result<(Sha256, u64, Option<anyhow::Error>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let path = partial.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut h = hasher;
        let mut n = offset;
        while let Some(chunk) = rx.blocking_recv() {
            w.write_all(&chunk)?;
            h.update(&chunk);
            n += chunk.len() as u64;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_data()?;
        Ok((h, n))
    });
    let mut body = resp.bytes_stream();
    let mut cut = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                cut = Some(anyhow!("connection lost mid-body: {}", chain(&e)));
                break;
            }
        }
    }
    drop(tx);
    let (h, n) = writer
        .await
        .context("writer task")?
        .context("cannot write the download")?;
    Ok((h, n, cut))
}

/// Unpacks a verified blob into `dest`, replacing it atomically: the archive streams into a
/// sibling staging directory which is renamed over `dest` only when everything succeeded.
pub fn unpack_into(blob: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked> {
    unpack_all(&[blob.to_path_buf()], dest, limits, |_| Ok(())).map(|mut v| v.remove(0))
}

/// Overlays several blobs in order (later wins) into a staging directory, lets `finish`
/// work on it (Configs, templates), and renames it over `dest`.
pub fn unpack_all(
    blobs: &[PathBuf],
    dest: &Path,
    limits: &Limits,
    finish: impl FnOnce(&Path) -> Result<()>,
) -> Result<Vec<Unpacked>> {
    let parent = dest.parent().context("destination has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rootfs");
    let staging = parent.join(format!(".{name}.staging"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir(&staging)?;
    let result = (|| -> Result<Vec<Unpacked>> {
        let mut out = Vec::new();
        for b in blobs {
            let f =
                std::fs::File::open(b).with_context(|| format!("cannot open {}", b.display()))?;
            out.push(unpack(
                std::io::BufReader::with_capacity(1 << 20, f),
                &staging,
                limits,
            )?);
        }
        finish(&staging)?;
        Ok(out)
    })();
    match result {
        Ok(out) => {
            let old = parent.join(format!(".{name}.old"));
            if dest.exists() {
                if old.exists() {
                    std::fs::remove_dir_all(&old)?;
                }
                std::fs::rename(dest, &old)?;
            }
            std::fs::rename(&staging, dest)?;
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            Ok(out)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}
