//! Where bundle blobs live: `<data-dir>/blobs/` (the default), or an S3-compatible bucket
//! (`berth serve --blob-store s3://…`), with the data dir's `blobs/tmp/` as the staging
//! area uploads are received, hashed and checked in before they go to the bucket.

use crate::blobs::{BlobStore, IngestError, Ingested, Received};
use crate::s3::S3Blobs;
use anyhow::Result;
use berth_bundle::Limits;
use berth_shared::Digest;
use bytes::Bytes;
use futures_util::Stream;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct BundleBlobs {
    /// The blobs (default), or the staging area in front of the bucket.
    local: BlobStore,
    bucket: Option<S3Blobs>,
}

/// A pushed bundle, with a local copy of its bytes.
pub struct Pushed {
    pub ingested: Ingested,
    pub local: LocalCopy,
}

/// A bundle's bytes on this machine while this lives: the blob itself, or the staged
/// upload that went to the bucket (removed when dropped).
pub enum LocalCopy {
    Stored(PathBuf),
    Staged(Received),
}

impl LocalCopy {
    pub fn path(&self) -> &Path {
        match self {
            LocalCopy::Stored(p) => p,
            LocalCopy::Staged(r) => r.path(),
        }
    }
}

impl BundleBlobs {
    pub fn local(local: BlobStore) -> BundleBlobs {
        BundleBlobs {
            local,
            bucket: None,
        }
    }

    /// Blobs in `bucket`, staged in `staging`.
    pub fn in_bucket(staging: BlobStore, bucket: S3Blobs) -> BundleBlobs {
        BundleBlobs {
            local: staging,
            bucket: Some(bucket),
        }
    }

    /// The bucket, when the blobs are in one.
    pub fn bucket(&self) -> Option<&S3Blobs> {
        self.bucket.as_ref()
    }

    /// The local directory: the blobs, or the staging area (`tmp/` is for temp files).
    pub fn root(&self) -> &Path {
        self.local.root()
    }

    /// The local directory's store (what a backup copies when there is no bucket).
    pub fn local_store(&self) -> &BlobStore {
        &self.local
    }

    /// A local blob's file (blobs in a bucket have none).
    pub fn local_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.bucket.is_none().then(|| self.local.path(digest))
    }

    /// Receives an upload (hashed, checked as a bundle) and stores it: renamed into place
    /// locally, or uploaded to the bucket — visible only once complete either way.
    pub async fn push<S, E>(
        &self,
        body: S,
        max_size: u64,
        limits: Limits,
    ) -> Result<Pushed, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Some(bucket) = &self.bucket else {
            let ingested = self.local.ingest(body, max_size, limits).await?;
            let path = self.local.path(&ingested.digest);
            return Ok(Pushed {
                ingested,
                local: LocalCopy::Stored(path),
            });
        };
        let checked = self.local.receive_checked(body, max_size, limits).await?;
        let received = checked.received;
        bucket.upload(received.path(), &received.digest).await?;
        Ok(Pushed {
            ingested: Ingested {
                digest: received.digest,
                size: received.size,
                manifest: checked.manifest,
                files: checked.files,
            },
            local: LocalCopy::Staged(received),
        })
    }

    pub async fn remove(&self, digest: &Digest) -> Result<()> {
        match &self.bucket {
            None => self.local.remove(digest),
            Some(b) => b.remove(digest).await,
        }
    }
}
