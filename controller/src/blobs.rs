//! The content-addressed blob store: `<data-dir>/blobs/sha256/<2 hex>/<hex>`.
//!
//! Uploads stream into `blobs/tmp/` while being hashed, are checked to be a valid bundle,
//! and only then renamed into place, so a cut or crashed upload never leaves a partial blob
//! where readers look. A duplicate upload is a no-op.

use anyhow::{Context, Result};
use berth_bundle::hashio::HashingWriter;
use berth_bundle::{scan, Limits, UnpackError};
use berth_shared::bundle::Manifest;
use berth_shared::Digest;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "upload exceeds the limit of {limit} bytes (raise it with `berth serve --max-bundle-size`)"
    )]
    TooLarge { limit: u64 },
    #[error("upload was cut off: {0}")]
    Body(String),
    #[error("not a valid bundle: {0}")]
    Invalid(#[from] UnpackError),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// A received upload, hashed, not yet in place.
pub struct Received {
    guard: tempfile::TempPath,
    pub digest: Digest,
    pub size: u64,
}

impl Received {
    pub fn path(&self) -> &Path {
        &self.guard
    }
}

/// A received upload that scanned as a valid bundle, not yet in place.
pub struct Checked {
    pub received: Received,
    pub manifest: Manifest,
    pub files: Vec<String>,
}

pub struct Ingested {
    pub digest: Digest,
    pub size: u64,
    pub manifest: Manifest,
    /// The bundle's files (not directories), what Configs may target.
    pub files: Vec<String>,
}

impl BlobStore {
    /// Opens the bundle store `<data-dir>/blobs`, removing temp files left by a crash.
    pub fn open(data_dir: &Path) -> Result<BlobStore> {
        BlobStore::open_at(data_dir.join("blobs"))
    }

    /// Opens a content-addressed store rooted at `root` (agent executables have their own).
    pub fn open_at(root: PathBuf) -> Result<BlobStore> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot clean {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(BlobStore { root })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Brings a local file into the store (blocking): hard-linked when on the same file
    /// system (a large executable is not copied at every start), else copied; then hashed
    /// from the store's own link, so what is stored is exactly what was hashed.
    pub fn import_file(&self, src: &Path) -> Result<(Digest, u64)> {
        // A symlink is followed here, never linked into the store.
        let src = &std::fs::canonicalize(src)
            .with_context(|| format!("cannot resolve {}", src.display()))?;
        let staged = self.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            crate::pki::random_token(8)
        ));
        if std::fs::hard_link(src, &staged).is_err() {
            std::fs::copy(src, &staged)
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
        let guard = tempfile::TempPath::try_from_path(staged)?;
        let (digest, size) = berth_bundle::hashio::digest_file(&guard)
            .with_context(|| format!("cannot read {}", src.display()))?;
        self.commit(Received {
            guard,
            digest,
            size,
        })?;
        Ok((digest, size))
    }

    /// Stores what `data` yields when it hashes to `want` (blocking); returns its size. A
    /// blob already stored is not read again.
    pub fn put_verified(&self, data: &mut impl std::io::Read, want: &Digest) -> Result<u64> {
        if let Ok(m) = std::fs::metadata(self.path(want)) {
            return Ok(m.len());
        }
        let staged = self.root.join("tmp").join(format!(
            "put-{}-{}",
            std::process::id(),
            crate::pki::random_token(8)
        ));
        let guard = tempfile::TempPath::try_from_path(staged)?;
        let mut w = HashingWriter::new(std::io::BufWriter::new(std::fs::File::create(&guard)?));
        std::io::copy(data, &mut w)?;
        let (f, digest, size) = w.finish();
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        if &digest != want {
            anyhow::bail!("its bytes hash to {digest}, not {want}");
        }
        self.commit(Received {
            guard,
            digest,
            size,
        })?;
        Ok(size)
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Streams `body` to a temp file, hashing it; validates it as a bundle; moves it into
    /// place. Nothing is visible under `sha256/` unless every step succeeded.
    pub async fn ingest<S, E>(
        &self,
        body: S,
        max_size: u64,
        limits: Limits,
    ) -> Result<Ingested, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let checked = self.receive_checked(body, max_size, limits).await?;
        let (digest, size) = (checked.received.digest, checked.received.size);
        self.commit(checked.received)?;
        Ok(Ingested {
            digest,
            size,
            manifest: checked.manifest,
            files: checked.files,
        })
    }

    /// Streams `body` to a temp file, hashing it, and validates it as a bundle; the file
    /// is removed when the answer is dropped without `commit`.
    pub async fn receive_checked<S, E>(
        &self,
        body: S,
        max_size: u64,
        limits: Limits,
    ) -> Result<Checked, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let received = self.receive(body, max_size).await?;
        let check = received.path().to_path_buf();
        let scanned = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&check).map_err(|source| UnpackError::Io {
                path: check.clone(),
                source,
            })?;
            scan(std::io::BufReader::with_capacity(1 << 20, f), &limits)
        })
        .await
        .map_err(|e| anyhow::anyhow!("validation task: {e}"))??;
        Ok(Checked {
            received,
            manifest: scanned.manifest,
            files: scanned.files,
        })
    }

    /// Streams `body` (at most `max_size` bytes) to a temp file in this store, hashing it.
    /// The file disappears when the answer is dropped without `commit`.
    pub async fn receive<S, E>(&self, body: S, max_size: u64) -> Result<Received, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Removed when dropped, unless renamed into place first.
        let guard = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(|e| IngestError::Io(e.into()))?
            .into_temp_path();
        let tmp = guard.to_path_buf();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let path = tmp.clone();
        // Disk writes and hashing on a blocking thread.
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
            let f = std::fs::File::create(&path)?;
            let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
            while let Some(chunk) = rx.blocking_recv() {
                w.write_all(&chunk)?;
            }
            let (buf, digest, n) = w.finish();
            let f = buf.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok((digest, n))
        });
        let mut body = body;
        let mut received = 0u64;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    received += c.len() as u64;
                    if received > max_size {
                        failure = Some(IngestError::TooLarge { limit: max_size });
                        break;
                    }
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(IngestError::Body(e.to_string()));
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| anyhow::anyhow!("writer task: {e}"))?;
        if let Some(f) = failure {
            return Err(f);
        }
        let (digest, size) = written.context("cannot write the upload to disk")?;
        Ok(Received {
            guard,
            digest,
            size,
        })
    }

    /// Moves a received file into place under its digest (a no-op when already there).
    pub fn commit(&self, received: Received) -> Result<()> {
        let dest = self.path(&received.digest);
        if dest.exists() {
            // Same digest, same bytes: nothing to do.
            return Ok(());
        }
        let parent = dest.parent().context("blob path has a parent")?;
        std::fs::create_dir_all(parent).context("cannot create the blob directory")?;
        received
            .guard
            .persist(&dest)
            .map_err(|e| e.error)
            .context("cannot move the blob into place")?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
