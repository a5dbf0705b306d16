//! The read-only OCI Distribution API (pull): `GET /v2/`, manifests by tag or digest,
//! blobs (with `Range`), tags lists, and `HEAD` of each; everything that would write is
//! `405 UNSUPPORTED`. Errors carry the spec's body (`{"errors":[{"code":…}]}`).
//!
//! Reads are open by default, as a registry inside an air-gapped cluster is; with
//! `berth serve --registry-auth` they need an agent's client certificate or an API token
//! (as a bearer token, or as the password of HTTP basic auth, which registry clients send).

use crate::api::auth::{AgentHost, PeerCert};
use crate::api::AppState;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_shared::Digest;
use tower::ServiceExt;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// A spec-conformant error response.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"errors": [{"code": code, "message": message.into(), "detail": null}]});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"berth\""),
        );
    }
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "registry");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "internal error; see the controller's log",
    )
}

/// Whether the caller may read: always, unless `--registry-auth` asks for a client
/// certificate or a token.
async fn allowed(st: &AppState, req: Request) -> Result<Request, Response> {
    if !st.registry_auth {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    // An agent: its certificate must belong to an enrolled host that is not revoked, as
    // for every agent call.
    if parts
        .extensions
        .get::<PeerCert>()
        .is_some_and(|p| p.0.is_some())
    {
        return match AgentHost::from_request_parts(&mut parts, st).await {
            Ok(_) => Ok(Request::from_parts(parts, body)),
            Err(crate::api::error::ApiError::Client { message, .. }) => Err(error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                format!("client certificate refused: {message}"),
            )),
            Err(other) => Err(internal(format!("{other:?}"))),
        };
    }
    let headers = &parts.headers;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            if let Some(t) = v.strip_prefix("Bearer ") {
                return Some(t.trim().to_string());
            }
            let basic = v.strip_prefix("Basic ")?;
            let decoded =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, basic.trim())
                    .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            Some(text.split_once(':')?.1.to_string())
        });
    if let Some(t) = token {
        match st.store.api_principal(&crate::pki::hash_secret(&t)).await {
            Ok(Some(_)) => return Ok(Request::from_parts(parts, body)),
            Ok(None) => {}
            Err(e) => return Err(internal(e)),
        }
    }
    Err(error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "this registry needs an agent's client certificate or an API token (as the password of basic auth)",
    ))
}

/// `GET /v2/`: the API is here.
pub async fn base(State(st): State<AppState>, req: Request) -> Response {
    if let Err(r) = allowed(&st, req).await {
        return r;
    }
    let mut r = (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    r.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    r
}

#[derive(serde::Deserialize)]
pub struct TagsQuery {
    n: Option<usize>,
    last: Option<String>,
}

/// Everything under `/v2/<name>/…`.
pub async fn route(
    State(st): State<AppState>,
    Path(rest): Path<String>,
    Query(q): Query<TagsQuery>,
    req: Request,
) -> Response {
    let req = match allowed(&st, req).await {
        Ok(req) => req,
        Err(r) => return r,
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this registry is read-only: images come from bundles (`berth bundle push`) and `berth image load`",
        );
    }
    let (repo, what) = if let Some(repo) = rest.strip_suffix("/tags/list") {
        (repo, None)
    } else if let Some(i) = rest.rfind("/manifests/") {
        (&rest[..i], Some(("manifest", &rest[i + 11..])))
    } else if let Some(i) = rest.rfind("/blobs/") {
        (&rest[..i], Some(("blob", &rest[i + 7..])))
    } else {
        return error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no such registry route: /v2/{rest}"),
        );
    };
    if !crate::registry::valid_repo(repo) {
        return error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("`{repo}` is not a repository name"),
        );
    }
    match st.store.image_repo_exists(repo).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("repository `{repo}` is not known to this registry"),
            )
        }
        Err(e) => return internal(e),
    }
    match what {
        None => tags(&st, repo, q).await,
        Some(("manifest", reference)) => {
            manifest(&st, repo, reference, req.method() == Method::HEAD).await
        }
        Some((_, digest)) => blob(&st, repo, digest, req).await,
    }
}

async fn tags(st: &AppState, repo: &str, q: TagsQuery) -> Response {
    let mut all = match st.store.image_tag_names(repo).await {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    if let Some(last) = &q.last {
        all.retain(|t| t > last);
    }
    let more = q.n.is_some_and(|n| all.len() > n);
    if let Some(n) = q.n {
        all.truncate(n);
    }
    let mut r = axum::Json(serde_json::json!({"name": repo, "tags": all})).into_response();
    if more {
        if let Some(last) = all.last() {
            let link = format!(
                "</v2/{repo}/tags/list?n={}&last={last}>; rel=\"next\"",
                q.n.unwrap_or(0)
            );
            if let Ok(v) = HeaderValue::from_str(&link) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
    }
    r.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    r
}

async fn manifest(st: &AppState, repo: &str, reference: &str, head: bool) -> Response {
    if reference.contains(':') && reference.parse::<Digest>().is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("`{reference}` is not a sha256 digest"),
        );
    }
    let (digest, media, size) = match st.store.image_manifest(repo, reference).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest `{reference}` is not known in repository `{repo}`"),
            )
        }
        Err(e) => return internal(e),
    };
    let Ok(d) = digest.parse::<Digest>() else {
        return internal("a stored manifest digest does not parse");
    };
    let body = if head {
        Body::empty()
    } else {
        // Loaded through another controller: fetched from the bucket, checked, kept.
        if let Err(e) = st.images.ensure(&d).await {
            return internal(format!("manifest {d}: {e:#}"));
        }
        match tokio::fs::read(st.images.local.path(&d)).await {
            Ok(b) => Body::from(b),
            Err(e) => return internal(format!("manifest {d}: {e}")),
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    // The media type a manifest names for itself, when it is one of a manifest; anything
    // else (an image archive's own say, e.g. `text/html`) is served as bytes, so the
    // controller's origin never serves a page it did not write.
    let media = if MANIFEST_TYPES.contains(&media.as_str()) {
        media.as_str()
    } else {
        "application/octet-stream"
    };
    if let Ok(v) = HeaderValue::from_str(media) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size as u64));
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    r
}

/// The manifest and index media types of the OCI image spec and Docker's.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

async fn blob(st: &AppState, repo: &str, digest: &str, req: Request) -> Response {
    let Ok(d) = digest.parse::<Digest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("`{digest}` is not a sha256 digest"),
        );
    };
    // Known here but loaded through another controller: fetched from the bucket, checked,
    // kept.
    let available = match st.store.image_blob(repo, &d.to_string()).await {
        Ok(None) => Ok(false),
        Ok(Some(_)) => st.images.ensure(&d).await,
        Err(e) => return internal(e),
    };
    match available {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {d} is not known in repository `{repo}`"),
            )
        }
        Err(e) => return internal(format!("blob {d}: {e:#}")),
    }
    // ServeFile answers HEAD, Range (206, 416) and conditional requests.
    let svc = tower_http::services::ServeFile::new(st.images.local.path(&d))
        .with_buf_chunk_size(256 * 1024);
    let mut r = match svc.oneshot(req).await {
        Ok(r) => r.map(Body::new).into_response(),
        Err(e) => return internal(e),
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(header::ETAG, etag);
    }
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    r
}
