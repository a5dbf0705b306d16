//! Fetching bundle blobs by digest: a per-digest cache, resumable with `Range`, verified
//! while streaming; and unpacking a verified blob into place atomically.
//!
//! Layout under `<data-dir>/cache/blobs/sha256/`: `<hex>` is a verified blob; `<hex>.partial`
//! holds the bytes of an interrupted download, from which the next attempt resumes.

use crate::join::chain;
use anyhow::{anyhow, bail, Context, Result};
use berth_bundle::{unpack, Limits, Unpacked};
use berth_shared::routes::{self, Endpoint};
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

/// [`Fetcher::fetch_into`] unpacked bytes that turned out not to be the blob (the download
/// restarted from zero); the blob is verified and cached now. Start again with a fresh
/// staging directory.
#[derive(Debug, thiserror::Error)]
#[error("the download restarted from zero; unpack again into a fresh directory")]
pub struct Restarted;

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
        let path = self.context_path(&r.digest.hex());
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

    /// Where the context with digest `hex` is cached.
    fn context_path(&self, hex: &str) -> std::path::PathBuf {
        self.cache.join("contexts").join(format!("{hex}.json"))
    }

    /// Removes the cached context with digest `hex` (a cluster's, when it is removed from
    /// this host). Anything but 64 hex digits is ignored.
    pub fn forget_context(&self, hex: &str) -> Result<()> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        let path = self.context_path(hex);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    async fn download_context(&self, r: &berth_shared::plan::ContextRef) -> Result<Vec<u8>> {
        let url = format!(
            "{}{}",
            self.controller,
            routes::AgentContext::ROUTE.url(&[&r.digest.hex()])
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
                    if self.plans.superseded() {
                        return Err(Superseded.into());
                    }
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
                Err(e) if e.is::<Superseded>() => return Err(e),
                Err(e) if attempt >= self.attempts || self.plans.superseded() => {
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
        self.download(digest, None).await.map(|(p, _)| p)
    }

    /// Unpacks `blobs` in order into one fresh staging directory for `dest`, each while it
    /// streams in (`fetch_into`). When a download restarted from zero ([`Restarted`]) every
    /// blob is cached and verified by then, so the directory is dropped and the blobs are
    /// unpacked once more, from the cache, into a fresh one. `before(i)` runs before blob
    /// `i` (to log it).
    pub async fn stage(
        &self,
        blobs: &[Digest],
        dest: &Path,
        limits: Limits,
        mut before: impl FnMut(usize) -> Result<()>,
    ) -> Result<(Staging, Vec<Unpacked>)> {
        let mut restarted = false;
        'again: loop {
            let staging = Staging::new(dest)?;
            let mut unpacked = Vec::with_capacity(blobs.len());
            for (i, digest) in blobs.iter().enumerate() {
                before(i)?;
                match self.fetch_into(digest, staging.path(), limits).await {
                    Ok(u) => unpacked.push(u),
                    Err(e) if e.is::<Restarted>() && !restarted => {
                        restarted = true;
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok((staging, unpacked));
        }
    }

    /// Fetches a blob and unpacks it into `dir` in the same pass: the bytes coming off the
    /// socket are appended to the cache file (so a cut resumes from them), hashed, and fed
    /// to zstd → tar on a second thread. `dir` holds unverified content until this returns
    /// `Ok`; the caller owns it (a [`Staging`] directory, deleted on any error). A blob
    /// already in the cache is unpacked from it.
    pub async fn fetch_into(
        &self,
        digest: &Digest,
        dir: &Path,
        limits: Limits,
    ) -> Result<Unpacked> {
        let done = self.blob_path(digest);
        if done.is_file() {
            return unpack_file(done, dir.to_path_buf(), limits).await;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let to = dir.to_path_buf();
        // Its own thread, not tokio's blocking pool: the download's writer (a blocking
        // task) waits on it, and a blocking task waiting on another can starve the pool
        // when many downloads run in one process.
        std::thread::Builder::new()
            .name("berth-unpack".into())
            .spawn(move || {
                let mut reader = ChannelReader::new(rx);
                let out = unpack(&mut reader, &to, &limits);
                // Keep taking bytes to the end, so the download never waits on a failed
                // unpack.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                let _ = done_tx.send(out);
            })
            .context("cannot start the unpack thread")?;
        let downloaded = self.download(digest, Some(tx)).await;
        let unpacked = done_rx.await.context("the unpack thread died")?;
        let (blob, intact) = downloaded?;
        if intact {
            return unpacked.with_context(|| format!("cannot unpack {digest}"));
        }
        // The stream restarted from zero (the server ignored a range, or the bytes kept
        // were junk): what was unpacked from the first bytes is not the blob, and `dir`
        // may hold files of it. The verified blob is cached now; the caller starts over
        // with a fresh staging directory.
        tracing::info!(digest = %digest, blob = %blob.display(), "the download restarted from zero");
        Err(Restarted.into())
    }

    /// Downloads what is missing of a blob into the cache, verifying it, and feeds every
    /// byte of it in order (the bytes already on disk first) to `tee`. The flag says whether
    /// `tee` saw exactly the blob: false without a tee, for a blob already cached, and when
    /// the download had to start over from zero (the tee is dropped then).
    async fn download(
        &self,
        digest: &Digest,
        tee: Option<tokio::sync::mpsc::Sender<Bytes>>,
    ) -> Result<(PathBuf, bool)> {
        let done = self.blob_path(digest);
        if done.is_file() {
            return Ok((done, false));
        }
        let mut tee = tee;
        let dir = done.parent().context("cache dir")?.to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        let partial = dir.join(format!("{}.partial", digest.hex()));
        let url = format!(
            "{}{}",
            self.controller,
            routes::Blob::ROUTE.url(&[&digest.hex()])
        );

        // Bytes already on disk from an earlier attempt are hashed (and teed) once, then
        // extended.
        let (mut hasher, mut offset) = {
            let p = partial.clone();
            let t = tee.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
                match std::fs::File::open(&p) {
                    Ok(mut f) => {
                        let mut h = Sha256::new();
                        let mut n = 0u64;
                        loop {
                            let mut buf = vec![0u8; 1 << 20];
                            let k = f.read(&mut buf)?;
                            if k == 0 {
                                break;
                            }
                            buf.truncate(k);
                            h.update(&buf);
                            n += k as u64;
                            if let Some(t) = &t {
                                let _ = t.blocking_send(Bytes::from(buf));
                            }
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
                            tee = None;
                        }
                        let (h, n, err) =
                            stream_to(resp, &partial, hasher, offset, tee.clone()).await?;
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
                        tee = None;
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
            bail!("downloaded blob hashes to {got}, not {digest}; discarded it and everything unpacked from it");
        }
        tokio::fs::rename(&partial, &done).await?;
        tracing::info!(digest = %digest, bytes = offset, "blob fetched and verified");
        Ok((done, tee.is_some()))
    }
}

async fn unpack_file(blob: PathBuf, dir: PathBuf, limits: Limits) -> Result<Unpacked> {
    tokio::task::spawn_blocking(move || -> Result<Unpacked> {
        let f = std::fs::File::open(&blob)
            .with_context(|| format!("cannot open {}", blob.display()))?;
        unpack(std::io::BufReader::with_capacity(1 << 20, f), &dir, &limits)
            .with_context(|| format!("cannot unpack {}", blob.display()))
    })
    .await?
}

/// The bytes of a download as a blocking reader: what the unpack thread reads. The end of
/// the channel is the end of the stream.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// Appends the response body to `partial`, hashing it (and handing it to `tee`) on a
/// blocking thread. Returns the hasher and byte count reached, and the error that cut the
/// body short, if any.
async fn stream_to(
    resp: reqwest::Response,
    partial: &Path,
    hasher: Sha256,
    offset: u64,
    tee: Option<tokio::sync::mpsc::Sender<Bytes>>,
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
            if let Some(t) = &tee {
                // The unpacker reads to the end whatever happens; a send fails only if it
                // died, which its own result reports.
                let _ = t.blocking_send(chunk);
            }
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

/// A fresh sibling directory of `dest` to build it in (`.<name>.staging`), renamed over
/// `dest` by [`Staging::promote`] and deleted if dropped before that: a failed or cut
/// unpack, or a digest mismatch, never leaves anything where `dest` is read.
pub struct Staging {
    dir: PathBuf,
    dest: PathBuf,
    promoted: bool,
}

impl Staging {
    pub fn new(dest: &Path) -> Result<Staging> {
        let parent = dest.parent().context("destination has no parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let dir = sibling(dest, "staging");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            dir,
            dest: dest.to_path_buf(),
            promoted: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Renames the staging directory over `dest` (whatever was there is removed).
    pub fn promote(mut self) -> Result<()> {
        replace_dir(&self.dir, &self.dest)?;
        self.promoted = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.promoted {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sibling(dest: &Path, what: &str) -> PathBuf {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rootfs");
    dest.with_file_name(format!(".{name}.{what}"))
}

/// Puts the directory `src` at `dest`. An existing `dest` is swapped with `src` in one
/// `renameat2(RENAME_EXCHANGE)` and then removed from where `src` was, so `dest` is the
/// old or the new tree at every instant, a crash included (the old tree left at `src` is
/// removed by the next [`Staging::new`]).
fn replace_dir(src: &Path, dest: &Path) -> Result<()> {
    if !dest.exists() {
        return std::fs::rename(src, dest)
            .with_context(|| format!("cannot move {} to {}", src.display(), dest.display()));
    }
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        src,
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .with_context(|| format!("cannot swap {} into {}", src.display(), dest.display()))?;
    // `src` now holds the old tree.
    if let Err(e) = std::fs::remove_dir_all(src) {
        tracing::warn!(path = %src.display(), error = %e, "cannot remove the replaced tree");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_promoted_staging_dir_replaces_the_old_tree_whole() {
        let root = scratch("promote");
        let dest = root.join("rootfs");
        std::fs::create_dir_all(dest.join("old-only")).unwrap();
        std::fs::write(dest.join("shared"), "old").unwrap();
        let staging = Staging::new(&dest).unwrap();
        std::fs::write(staging.path().join("shared"), "new").unwrap();
        let staged = staging.path().to_path_buf();
        staging.promote().unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("shared")).unwrap(), "new");
        assert!(
            !dest.join("old-only").exists(),
            "nothing of the old tree is left"
        );
        assert!(!staged.exists(), "the old tree went with the staging dir");
        // Into a place with nothing yet, and a staging dir dropped unpromoted leaves nothing.
        let fresh = root.join("fresh");
        let s = Staging::new(&fresh).unwrap();
        s.promote().unwrap();
        assert!(fresh.is_dir());
        let s = Staging::new(&fresh).unwrap();
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists() && fresh.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
