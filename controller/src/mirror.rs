//! Content-addressed files every controller serves from its own disk — the registry's
//! image blobs, the agent executables — shared through the bucket when there is one
//! (`--blob-store`): what one controller stores is published under a prefix of its own
//! (`images/`, `agent-binaries/`), and one that lacks a file the database names fetches it
//! on first use, checks its digest and keeps it. Without a bucket this is the local store.

use crate::blobs::{BlobStore, IngestError};
use crate::s3::S3Blobs;
use anyhow::{bail, Context, Result};
use berth_shared::Digest;
use futures_util::TryStreamExt;

#[derive(Clone)]
pub struct Mirrored {
    pub local: BlobStore,
    bucket: Option<S3Blobs>,
    /// Fetches take turns: a fleet asking for a file this controller lacks fetches it once.
    fetching: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The largest file fetched from the bucket (agents and image blobs are far smaller).
const MAX_FETCH: u64 = 64 << 30;

impl Mirrored {
    /// `local`, shared through `bucket` under `bucket_prefix` when there is a bucket.
    pub fn new(local: BlobStore, bucket: Option<&S3Blobs>, bucket_prefix: &str) -> Mirrored {
        Mirrored {
            local,
            bucket: bucket.map(|b| b.within(bucket_prefix)),
            fetching: Default::default(),
        }
    }

    /// Puts these local files in the bucket (those not there yet), so the other
    /// controllers can serve them.
    pub async fn publish(&self, digests: impl IntoIterator<Item = Digest>) -> Result<()> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        for d in digests {
            bucket.upload(&self.local.path(&d), &d).await?;
        }
        Ok(())
    }

    /// Whether `digest` is on this controller's disk now: it was, or the bucket had it and
    /// it was fetched, its digest checked, and kept.
    pub async fn ensure(&self, digest: &Digest) -> Result<bool> {
        if self.local.exists(digest) {
            return Ok(true);
        }
        let Some(bucket) = &self.bucket else {
            return Ok(false);
        };
        let _turn = self.fetching.lock().await;
        if self.local.exists(digest) {
            return Ok(true);
        }
        if bucket.size(digest).await?.is_none() {
            return Ok(false);
        }
        let body = bucket.read(digest, None).await?.map_err(|e| e.to_string());
        let received = self
            .local
            .receive(body, MAX_FETCH)
            .await
            .map_err(|e| match e {
                IngestError::Io(e) => e,
                other => anyhow::anyhow!(other.to_string()),
            })
            .with_context(|| format!("cannot fetch {digest} from {}", bucket.location))?;
        if received.digest != *digest {
            bail!(
                "the bucket's copy of {digest} has digest {}: refused (changed behind berth's back?)",
                received.digest
            );
        }
        self.local.commit(received)?;
        tracing::info!(%digest, "fetched from the bucket another controller put it in");
        Ok(true)
    }

    /// Deletes the file here. The bucket keeps its copy: another controller may have just
    /// stored the same file again (and found it there); expire old objects with the
    /// bucket's own lifecycle rules.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        self.local.remove(digest)
    }
}
