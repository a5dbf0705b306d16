//! Bundles: upload (streaming), list, inspect, remove, and blob download with `Range`.

use super::auth::{AgentHost, Caller, PeerCert};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::blobs::IngestError;
use crate::store::{BundleRow, NewBundle, Role};
use crate::time::rfc3339;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_shared::api::PushQuery;
use berth_shared::api::{codes, BundleView, PushResponse};
use berth_shared::{BundleRef, Digest};
use futures_util::TryStreamExt;
use tower::ServiceExt;

pub async fn push(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PushQuery>,
    body: Body,
) -> Result<(StatusCode, ApiJson<PushResponse>), ApiError> {
    let tag = match q.tag.as_deref().map(str::parse::<BundleRef>) {
        None => None,
        Some(Ok(BundleRef::Tag { name, tag })) => Some((name, tag)),
        Some(Ok(BundleRef::Digest(_))) => {
            return Err(ApiError::bad_request("tag must be name:tag, not a digest"))
        }
        Some(Err(e)) => return Err(ApiError::bad_request(e.to_string())),
    };
    let arch = match q.arch.as_deref() {
        None => None,
        Some(a) => Some(berth_shared::bundle::normalize_arch(a).ok_or_else(|| {
            ApiError::bad_request(format!(
                "arch: `{}` is not an architecture; use x86_64 (amd64) or aarch64 (arm64)",
                a.chars().take(32).collect::<String>()
            ))
        })?),
    };
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let crate::bundle_blobs::Pushed { ingested, local } = st
        .blobs
        .push(Box::pin(stream), st.max_bundle_size, st.unpack_limits)
        .await
        .map_err(|e| match e {
            IngestError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                berth_shared::api::codes::TOO_LARGE,
                e.to_string(),
            ),
            IngestError::Body(_) => ApiError::bad_request(e.to_string()),
            IngestError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                berth_shared::api::codes::INVALID_BUNDLE,
                e.to_string(),
            ),
            IngestError::Io(e) => ApiError::Internal(e),
        })?;
    let m = &ingested.manifest;
    if let (Some(a), Some(b)) = (&arch, &m.arch) {
        if a != b {
            return Err(ApiError::bad_request(format!(
                "--arch {a}, but its bundle.yaml says `arch: {b}`"
            )));
        }
    }
    let arch = arch.or_else(|| m.arch.clone());
    if let (Some((name, t)), Some(a)) = (&tag, &arch) {
        same_bundle_as_tag(&st, name, t, a, m).await?;
    }
    let manifest_json = serde_json::to_string(m).map_err(|e| ApiError::Internal(e.into()))?;
    let bundle_type = serde_json::to_value(m.bundle_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let digest = ingested.digest.to_string();
    let created = st
        .store
        .insert_bundle(
            NewBundle {
                digest: &digest,
                size: ingested.size,
                name: &m.name,
                version: &m.version,
                bundle_type: &bundle_type,
                manifest_json: &manifest_json,
                files: &serde_json::to_string(&ingested.files)
                    .map_err(|e| ApiError::Internal(e.into()))?,
            },
            &caller.actor(),
        )
        .await?;
    let mut previous = None;
    if let Some((name, t)) = &tag {
        previous = st
            .store
            .set_tag(name, t, &digest, arch.as_deref(), &caller.actor())
            .await?
            .and_then(|d| d.parse::<Digest>().ok());
    }
    // The container images it carries, served by the registry (the bundle is read once more
    // from disk, only when the upload scan saw a `registry/` or `images/` file).
    let (mut images, mut warnings) = (Vec::new(), Vec::new());
    if created && crate::registry::may_carry_images(&ingested.files) {
        let store = st.images.local.clone();
        // The bundle's local copy stays until its images are read.
        let scan = move || crate::registry::from_bundle(&store, local.path());
        match tokio::task::spawn_blocking(scan).await {
            Ok(Ok(found)) => {
                // In the bucket before the index names them: another controller asked
                // for one can always fetch it.
                st.images.publish(image_files(&found.refs)).await?;
                st.store
                    .add_images(&format!("bundle:{digest}"), &found.refs, None)
                    .await?;
                images = found.served;
                warnings = found.warnings;
            }
            Ok(Err(e)) => warnings.push(format!("the images it carries are not served: {e:#}")),
            Err(e) => return Err(ApiError::Internal(e.into())),
        }
    }
    tracing::info!(%digest, size = ingested.size, created, tag = ?q.tag, images = images.len(), "bundle pushed");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        ApiJson(PushResponse {
            digest: ingested.digest,
            size: ingested.size,
            created,
            tag: tag.map(|(n, t)| format!("{n}:{t}")),
            previous,
            manifest: ingested.manifest,
            images,
            warnings,
        }),
    ))
}

/// `GET /v1/limits` (viewer).
pub async fn limits(
    State(st): State<AppState>,
) -> Result<ApiJson<berth_shared::api::ServerLimits>, ApiError> {
    Ok(ApiJson(berth_shared::api::ServerLimits {
        max_bundle_size: st.max_bundle_size,
        max_unpacked_bytes: st.unpack_limits.max_total_bytes,
        max_entries: st.unpack_limits.max_entries,
        max_file_bytes: st.unpack_limits.max_file_bytes,
        max_json_body: super::MAX_JSON_BODY as u64,
    }))
}

/// An architecture's digest of a tag must be the same bundle built for another
/// architecture: the same name, version, type and hooks as the tag's other digests.
async fn same_bundle_as_tag(
    st: &AppState,
    name: &str,
    tag: &str,
    arch: &str,
    m: &berth_shared::bundle::Manifest,
) -> Result<(), ApiError> {
    let Some(primary) = st.store.resolve_tag(name, tag).await? else {
        return Ok(());
    };
    let Some(row) = st.store.bundle(&primary).await? else {
        return Ok(());
    };
    let p: berth_shared::bundle::Manifest =
        serde_json::from_str(&row.manifest).map_err(|e| ApiError::Internal(e.into()))?;
    let hooks = |m: &berth_shared::bundle::Manifest| m.hooks.keys().cloned().collect::<Vec<_>>();
    // Every host runs the primary's manifest (hook paths, cmd, env, timeouts, outputs):
    // the manifests must be equal but for `arch`.
    let anywhere = |m: &berth_shared::bundle::Manifest| berth_shared::bundle::Manifest {
        arch: None,
        ..m.clone()
    };
    if anywhere(&p) != anywhere(m) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            berth_shared::api::codes::CONFLICT,
            format!(
                "{name}:{tag} holds {} {} ({:?}, hooks {}); the {arch} digest of a tag must be the same bundle built for {arch}, with a bundle.yaml equal to the tag's but for `arch`, and this is {} {} ({:?}, hooks {}); push it under another tag, or without --arch to replace the tag",
                p.name, p.version, p.bundle_type, hooks(&p).join(","), m.name, m.version, m.bundle_type, hooks(m).join(",")
            ),
        ));
    }
    Ok(())
}

pub(crate) fn view(row: BundleRow) -> Result<BundleView, ApiError> {
    let manifest: berth_shared::bundle::Manifest =
        serde_json::from_str(&row.manifest).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(BundleView {
        digest: row
            .digest
            .parse()
            .map_err(|e: berth_shared::digest::DigestError| ApiError::Internal(e.into()))?,
        size: row.size as u64,
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        bundle_type: serde_json::to_value(manifest.bundle_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        tags: row.tags,
        created_at: rfc3339(row.created_at),
        manifest,
        arches: Default::default(),
    })
}

pub async fn list(State(st): State<AppState>) -> Result<ApiJson<Vec<BundleView>>, ApiError> {
    Ok(ApiJson(views(&st).await?))
}

/// Every stored bundle as the API shows it (the console's bundles page too).
pub(crate) async fn views(st: &AppState) -> Result<Vec<BundleView>, ApiError> {
    st.store.bundles().await?.into_iter().map(view).collect()
}

/// Resolves `name:tag` or a digest to a stored digest, or 404.
async fn resolve(st: &AppState, r: &str) -> Result<(BundleRef, String), ApiError> {
    let parsed: BundleRef = r
        .parse()
        .map_err(|e: berth_shared::bundle_ref::BundleRefError| {
            ApiError::bad_request(e.to_string())
        })?;
    let digest = match &parsed {
        BundleRef::Digest(d) => Some(d.to_string()),
        BundleRef::Tag { name, tag } => st.store.resolve_tag(name, tag).await?,
    };
    match digest {
        Some(d) if st.store.bundle(&d).await?.is_some() => Ok((parsed, d)),
        _ => Err(ApiError::not_found(format!(
            "no bundle `{r}`; see `berth bundle list`"
        ))),
    }
}

pub async fn inspect(
    State(st): State<AppState>,
    ApiPath(r): ApiPath<String>,
) -> Result<ApiJson<BundleView>, ApiError> {
    let (parsed, digest) = resolve(&st, &r).await?;
    let row = st
        .store
        .bundle(&digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no bundle `{r}`")))?;
    let mut v = view(row)?;
    if let BundleRef::Tag { name, tag } = &parsed {
        for (arch, d) in st.store.tag_arches(name, tag).await? {
            if let Ok(d) = d.parse() {
                v.arches.insert(arch, d);
            }
        }
    }
    Ok(ApiJson(v))
}

/// `PUT /v1/bundles/{name:tag}` `{"digest": "sha256:…"}` (operator): points the tag at a
/// stored bundle (`berth bundle load` tags only what it verified).
pub async fn tag(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(r): ApiPath<String>,
    ApiJson(req): ApiJson<berth_shared::api::TagRequest>,
) -> Result<ApiJson<BundleView>, ApiError> {
    let (name, tag) = match r.parse::<BundleRef>() {
        Ok(BundleRef::Tag { name, tag }) => (name, tag),
        Ok(BundleRef::Digest(_)) => {
            return Err(ApiError::bad_request("tag must be name:tag, not a digest"))
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    let digest = req.digest.to_string();
    let row = st
        .store
        .bundle(&digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no bundle {digest}; push it first")))?;
    let manifest: berth_shared::bundle::Manifest =
        serde_json::from_str(&row.manifest).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(a) = &manifest.arch {
        same_bundle_as_tag(&st, &name, &tag, a, &manifest).await?;
    }
    st.store
        .set_tag(
            &name,
            &tag,
            &digest,
            manifest.arch.as_deref(),
            &caller.actor(),
        )
        .await?;
    let row = st.store.bundle(&row.digest).await?.unwrap_or(row);
    Ok(ApiJson(view(row)?))
}

/// `name:tag` removes the tag; a digest removes the blob and every tag pointing at it.
pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(r): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let (parsed, digest) = resolve(&st, &r).await?;
    if matches!(parsed, BundleRef::Digest(_)) {
        for (cluster, spec) in st.store.cluster_specs().await? {
            if spec.contains(&digest) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("bundle {digest} is used by cluster `{cluster}`; reset the cluster or apply it without this bundle first"),
                ));
            }
        }
    }
    match parsed {
        BundleRef::Tag { name, tag } => {
            st.store.delete_tag(&name, &tag, &caller.actor()).await?;
        }
        BundleRef::Digest(d) => {
            st.store.delete_bundle(&digest, &caller.actor()).await?;
            st.blobs.remove(&d).await?;
            remove_images(&st, &format!("bundle:{digest}")).await?;
        }
    }
    tracing::info!(bundle = %r, "bundle removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Who may download blobs: enrolled agents (mutual TLS), only blobs of steps released to
/// them, or API callers (viewer and up).
pub enum BlobReader {
    Agent(Box<crate::store::HostRow>),
    Caller,
}

impl FromRequestParts<AppState> for BlobReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let has_cert = parts
            .extensions
            .get::<PeerCert>()
            .is_some_and(|p| p.0.is_some());
        if has_cert {
            let AgentHost(h, _) = AgentHost::from_request_parts(parts, st).await?;
            Ok(BlobReader::Agent(Box::new(h)))
        } else {
            Caller::from_request_parts(parts, st)
                .await?
                .require(Role::Viewer)?;
            Ok(BlobReader::Caller)
        }
    }
}

/// Streams a blob from disk or from the bucket: `Content-Length`, `ETag` = digest,
/// `Range` (206, 416), HEAD.
pub async fn blob(
    State(st): State<AppState>,
    who: BlobReader,
    ApiPath(hex): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let digest: Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|e: berth_shared::digest::DigestError| ApiError::bad_request(e.to_string()))?;
    if let BlobReader::Agent(host) = &who {
        if !st.engine.may_fetch(host, &digest).await? {
            tracing::warn!(host = %host.name, %digest, "refused a blob not released to the host");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                codes::BLOB_NOT_RELEASED,
                format!(
                    "{digest} is not a bundle of any step released to host {}",
                    host.name
                ),
            ));
        }
    }
    let no_blob = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("no blob {digest}"),
        )
    };
    let head = req.method() == axum::http::Method::HEAD;
    let mut resp = match (st.blobs.local_path(&digest), st.blobs.bucket()) {
        (Some(path), _) => {
            if !path.is_file() {
                return Err(no_blob());
            }
            let svc = tower_http::services::ServeFile::new(path).with_buf_chunk_size(256 * 1024);
            let resp = svc
                .oneshot(req)
                .await
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("serving blob: {e}")))?;
            resp.map(Body::new).into_response()
        }
        (None, Some(bucket)) => {
            // The size the store recorded when the bundle was pushed: the bucket gets one
            // request (the ranged GET), none for HEAD.
            let size = st
                .store
                .bundle(&digest.to_string())
                .await?
                .map(|b| b.size as u64)
                .ok_or_else(no_blob)?;
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            from_bucket(bucket, &digest, size, range, head).await?
        }
        (None, None) => return Err(no_blob()),
    };
    if !head && resp.status().is_success() {
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        st.metrics.blob_bytes_served.inc_by(len.unwrap_or(0));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(resp)
}

/// `size` bytes of `digest` from the bucket: all of them, or the one range asked for.
async fn from_bucket(
    bucket: &crate::s3::S3Blobs,
    digest: &Digest,
    size: u64,
    range: Option<&str>,
    head: bool,
) -> Result<Response, ApiError> {
    let wanted = match range.map(|r| byte_range(r, size)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(r))) => Some(r),
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.into()))
        }
    };
    let (status, bytes) = match &wanted {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, bytes.end - bytes.start);
    if wanted.is_some() {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", bytes.start, bytes.end - 1),
        );
    }
    let body = if head || bytes.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(
            bucket
                .read(digest, Some(bytes))
                .await
                .map_err(ApiError::Internal)?,
        )
    };
    b.body(body).map_err(|e| ApiError::Internal(e.into()))
}

/// The one byte range a `Range` header asks of `size` bytes: `Ok(None)` for a header to
/// ignore (another unit, several ranges, unparsable: the whole blob is sent, as RFC 9110
/// allows), `Err` for a range past the end (416).
fn byte_range(header: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(last)) if start <= last => {
            if start >= size {
                return Err(());
            }
            Ok(Some(start..last.saturating_add(1).min(size)))
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                return Err(());
            }
            Ok(Some(start..size))
        }
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                return Err(());
            }
            Ok(Some(size.saturating_sub(n)..size))
        }
        _ => Ok(None),
    }
}

/// The files of the registry's store an ingest named: manifests and blobs, once each.
fn image_files(refs: &crate::store::images::ImageRefs) -> Vec<Digest> {
    let mut v: Vec<Digest> = (refs.manifests.iter().map(|m| &m.1))
        .chain(refs.blobs.iter().map(|b| &b.1))
        .filter_map(|d| d.parse().ok())
        .collect();
    v.sort_unstable_by_key(|d| d.to_string());
    v.dedup();
    v
}

/// Forgets the images `source` brought and deletes the blobs nothing else names.
async fn remove_images(st: &AppState, source: &str) -> Result<(), ApiError> {
    for d in st.store.remove_image_source(source).await? {
        if let Ok(d) = d.parse::<Digest>() {
            st.images.remove(&d)?;
        }
    }
    Ok(())
}

/// `GET /v1/images` (viewer): what the registry serves.
pub async fn list_images(
    State(st): State<AppState>,
) -> Result<ApiJson<Vec<berth_shared::api::ImageView>>, ApiError> {
    Ok(ApiJson(
        st.store
            .image_tags()
            .await?
            .into_iter()
            .map(|r| berth_shared::api::ImageView {
                repo: r.repo,
                tag: r.tag,
                digest: r.digest,
                source: r.source,
            })
            .collect(),
    ))
}

/// `POST /v1/images` (operator): an OCI or docker image archive whose images the registry
/// serves from now on (`berth image load`). Bounded by `--max-bundle-size`.
pub async fn load_images(
    State(st): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, ApiJson<berth_shared::api::ImagesLoaded>), ApiError> {
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let received = st
        .images
        .local
        .receive(Box::pin(stream), st.max_bundle_size)
        .await
        .map_err(|e| match e {
            IngestError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                berth_shared::api::codes::TOO_LARGE,
                e.to_string(),
            ),
            IngestError::Io(e) => ApiError::Internal(e),
            other => ApiError::bad_request(other.to_string()),
        })?;
    let source = format!("load:{}", received.digest);
    let store = st.images.local.clone();
    let found = tokio::task::spawn_blocking(move || {
        let r = crate::registry::from_archive(&store, received.path());
        drop(received);
        r
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            berth_shared::api::codes::INVALID_IMAGE_ARCHIVE,
            format!("not an image archive berth can serve: {e:#}"),
        )
    })?;
    st.images.publish(image_files(&found.refs)).await?;
    st.store
        .add_images(&source, &found.refs, Some(&caller.actor()))
        .await?;
    tracing::info!(%source, images = found.served.len(), "images loaded");
    Ok((
        StatusCode::CREATED,
        ApiJson(berth_shared::api::ImagesLoaded {
            images: found.served,
            warnings: found.warnings,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-99", 1000), Ok(Some(0..100)));
        assert_eq!(byte_range("bytes=500-", 1000), Ok(Some(500..1000)));
        assert_eq!(byte_range("bytes=-100", 1000), Ok(Some(900..1000)));
        assert_eq!(byte_range("bytes=-5000", 1000), Ok(Some(0..1000)));
        assert_eq!(byte_range("bytes=990-5000", 1000), Ok(Some(990..1000)));
        assert_eq!(byte_range("bytes=1000-", 1000), Err(()));
        assert_eq!(byte_range("bytes=1000-1001", 1000), Err(()));
        assert_eq!(byte_range("bytes=-0", 1000), Err(()));
        // Ignored: the whole blob.
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(byte_range("items=0-1", 1000), Ok(None));
        assert_eq!(byte_range("bytes=9-3", 1000), Ok(None));
        assert_eq!(byte_range("bytes=x-", 1000), Ok(None));
    }
}
