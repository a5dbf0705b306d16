//! Bundle blobs in S3-compatible object storage (`berth serve --blob-store s3://…`),
//! through `object_store` (reqwest and rustls on ring).
//!
//! A blob's key is `[PREFIX/]sha256/<hex>`. Uploads are multipart, from the local file the
//! upload was received into, hashed and validated as a bundle first: a key appears only
//! when its upload completes, so nothing unverified is ever visible. Reads are ranged:
//! the controller serves them, so agents keep mutual TLS and need no S3 credentials.

use anyhow::{bail, Context, Result};
use berth_shared::Digest;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Parts of a multipart upload (S3 wants at least 5 MiB for all but the last).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Where `--blob-store s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
}

impl S3Location {
    /// Parses the `--blob-store` value.
    pub fn parse(s: &str) -> Result<S3Location> {
        let Some(rest) = s.strip_prefix("s3://") else {
            bail!("--blob-store {s}: use s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION");
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            bail!("--blob-store {s}: `{bucket}` is not a bucket name (3-63 characters: a-z, 0-9, `-`, `.`)");
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            bail!("--blob-store {s}: the prefix may not hold `.` or `..`");
        }
        let (mut endpoint, mut region) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) if v.starts_with("http://") || v.starts_with("https://") => {
                    endpoint = Some(v.to_string())
                }
                Some(("endpoint", v)) => {
                    bail!("--blob-store {s}: endpoint `{v}` is not an http(s) URL")
                }
                Some(("region", v)) if !v.is_empty() => region = Some(v.to_string()),
                _ => bail!(
                    "--blob-store {s}: unknown parameter `{pair}` (endpoint=URL, region=REGION)"
                ),
            }
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".into()),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        match &self.endpoint {
            Some(e) => write!(f, " at {e}"),
            None => Ok(()),
        }
    }
}

/// Access keys from a 0600 file of `key = value` lines: `access_key_id`,
/// `secret_access_key` and optionally `session_token` (`#` starts a comment).
fn read_credentials(file: &Path) -> Result<(String, String, Option<String>)> {
    let text = berth_files::read_secret(file)?;
    let text =
        String::from_utf8(text).with_context(|| format!("{} is not UTF-8 text", file.display()))?;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected `key = value`", file.display(), n + 1);
        };
        let v = v.trim().to_string();
        match k.trim() {
            "access_key_id" => id = Some(v),
            "secret_access_key" => secret = Some(v),
            "session_token" => token = Some(v),
            other => bail!(
                "{}:{}: unknown key `{other}` (access_key_id, secret_access_key, session_token)",
                file.display(),
                n + 1
            ),
        }
    }
    match (id, secret) {
        (Some(i), Some(s)) => Ok((i, s, token)),
        _ => bail!(
            "{} needs both access_key_id and secret_access_key",
            file.display()
        ),
    }
}

/// The bucket holding bundle blobs.
#[derive(Clone)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    prefix: String,
    pub location: Arc<S3Location>,
}

impl S3Blobs {
    /// Connects to the bucket (credentials from the `AWS_*` environment, or from
    /// `credentials`) and checks that it answers.
    pub async fn open(location: S3Location, credentials: Option<&Path>) -> Result<S3Blobs> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region);
        if let Some(e) = &location.endpoint {
            // An endpoint of one's own (MinIO, Ceph, moto…): path-style requests.
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(file) = credentials {
            let (id, secret, token) = read_credentials(file)?;
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = token {
                b = b.with_token(t);
            }
        }
        let store = b
            .build()
            .with_context(|| format!("--blob-store {location}"))?;
        let blobs = S3Blobs {
            store: Arc::new(store),
            prefix: location.prefix.clone(),
            location: Arc::new(location),
        };
        // A listing of a prefix nothing is written under: it answers (empty) only when the
        // bucket is there and the credentials may read it.
        match blobs
            .store
            .list_with_delimiter(Some(&blobs.key_of("berth-probe")))
            .await
        {
            Ok(_) => Ok(blobs),
            Err(e) => Err(anyhow::anyhow!(e)).with_context(|| {
                format!(
                    "cannot use the bucket {} (is it there, and may these credentials read and write it?)",
                    blobs.location
                )
            }),
        }
    }

    /// The same bucket, its keys under `sub/` (after the prefix): where other kinds of
    /// content-addressed files live beside the bundle blobs (`mirror`).
    pub fn within(&self, sub: &str) -> S3Blobs {
        S3Blobs {
            store: self.store.clone(),
            prefix: if self.prefix.is_empty() {
                sub.to_string()
            } else {
                format!("{}/{sub}", self.prefix)
            },
            location: self.location.clone(),
        }
    }

    fn key_of(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    fn key(&self, digest: &Digest) -> Key {
        self.key_of(&format!("sha256/{}", digest.hex()))
    }

    /// Uploads the local file holding `digest`'s bytes (already hashed and checked) as a
    /// multipart upload; a blob already there is not sent again.
    pub async fn upload(&self, file: &Path, digest: &Digest) -> Result<()> {
        if self.size(digest).await?.is_some() {
            return Ok(());
        }
        let key = self.key(digest);
        let upload =
            self.store.put_multipart(&key).await.with_context(|| {
                format!("cannot start the upload of {digest} to {}", self.location)
            })?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let sent: Result<()> = async {
            let mut f = tokio::fs::File::open(file).await?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                w.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => {
                w.finish()
                    .await
                    .with_context(|| format!("cannot upload {digest} to {}", self.location))?;
                Ok(())
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e).with_context(|| format!("cannot upload {digest} to {}", self.location))
            }
        }
    }

    /// The size of `digest`'s object, when there is one.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(e))
                .with_context(|| format!("cannot look up {digest} in {}", self.location)),
        }
    }

    /// The bytes `range` of `digest` (all of them without one), as a stream.
    pub async fn read(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&self.key(digest), opts)
            .await
            .with_context(|| format!("cannot read {digest} from {}", self.location))?;
        Ok(got.into_stream())
    }

    pub async fn remove(&self, digest: &Digest) -> Result<()> {
        match self.store.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow::anyhow!(e))
                .with_context(|| format!("cannot delete {digest} from {}", self.location)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_store_urls_parse_and_bad_ones_say_why() {
        assert_eq!(
            S3Location::parse(
                "s3://berth-blobs/prod/eu?endpoint=http://127.0.0.1:9000&region=eu-west-1"
            )
            .unwrap(),
            S3Location {
                bucket: "berth-blobs".into(),
                prefix: "prod/eu".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "eu-west-1".into(),
            }
        );
        assert_eq!(
            S3Location::parse("s3://bundles").unwrap().region,
            "us-east-1"
        );
        for (bad, why) in [
            ("/var/lib/blobs", "use s3://BUCKET"),
            ("s3://B", "is not a bucket name"),
            ("s3://bundles/a/../b", "may not hold `.` or `..`"),
            ("s3://bundles?endpoint=ftp://x", "is not an http(s) URL"),
            ("s3://bundles?acl=public", "unknown parameter `acl=public`"),
        ] {
            let e = S3Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_files_must_be_private_and_complete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s3");
        std::fs::write(&f, "# keys\naccess_key_id = AK\nsecret_access_key = SK\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_credentials(&f).is_err(),
            "a world-readable file is refused"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_credentials(&f).unwrap(),
            ("AK".into(), "SK".into(), None)
        );
        std::fs::write(&f, "access_key_id = AK\n").unwrap();
        let e = read_credentials(&f).unwrap_err().to_string();
        assert!(e.contains("needs both"), "{e}");
        std::fs::write(&f, "region = x\n").unwrap();
        let e = read_credentials(&f).unwrap_err().to_string();
        assert!(e.contains("unknown key `region`"), "{e}");
    }
}
