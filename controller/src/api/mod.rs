//! The `/v1/` HTTP API: routes, shared state and the handlers behind them.
//!
//! Agent routes (`/v1/agent/*`) authenticate by client certificate; operator routes (and
//! `/metrics`, for Prometheus with a viewer token) by bearer token; `/v1/enroll*`,
//! `/v1/install/*` and `/v1/healthz` are open (enrollment proves itself with a bootstrap
//! token in the body; the installer and agent executables are public, and the install line
//! verifies them).

pub mod admin;
pub mod agent;
pub mod auth;
pub mod backup;
pub mod bundles;
pub mod clusters;
pub mod enroll;
pub mod error;
pub mod events;
pub mod install;
pub mod registry;

use crate::blobs::BlobStore;
use crate::pki::Pki;
use crate::store::Store;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Request bodies larger than this are refused (bundle uploads have their own limit).
pub const MAX_JSON_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The controller's data dir (PKI files for backups).
    pub data_dir: std::path::PathBuf,
    pub pki: Arc<Pki>,
    /// The URL agents are told to use.
    pub advertise_url: String,
    pub host_grace: Duration,
    pub poll_hold: Duration,
    /// Bounds concurrent long-polls; when empty, polls get `503` + `Retry-After`.
    pub poll_slots: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub blobs: BlobStore,
    /// Largest accepted bundle upload, bytes.
    pub max_bundle_size: u64,
    /// Container image blobs the registry serves (`crate::registry`).
    pub images: BlobStore,
    /// Registry reads need a client certificate or a token (`berth serve --registry-auth`).
    pub registry_auth: bool,
    /// Limits a pushed bundle must respect (checked on upload, enforced again by agents).
    pub unpack_limits: berth_bundle::Limits,
    pub engine: Arc<crate::engine::Engine>,
    /// berth-agent executables served to installing hosts.
    pub agent_binaries: crate::install::AgentBinaries,
    /// Becomes true once the agent found next to the controller was imported (or there
    /// was none): install calls wait for it rather than answer "none served" at start.
    pub bundled_agent_ready: tokio::sync::watch::Receiver<bool>,
    /// The berth-agent found next to the controller, served again when an operator
    /// removes the one they added for this machine's architecture.
    pub bundled_agent: Option<std::path::PathBuf>,
    /// Heartbeats in memory, written in batches.
    pub heartbeats: Arc<crate::heartbeats::Heartbeats>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The size of `poll_slots` (polls held = this minus the free slots).
    pub max_polls: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/healthz", get(enroll::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/v1/enroll/ca", get(enroll::ca))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/agent/poll", post(agent::poll))
        .route("/v1/agent/reports", post(agent::reports))
        .route("/v1/agent/renew", post(agent::renew))
        .route("/v1/agent/contexts/sha256/{hex}", get(agent::context))
        .route("/v1/install/agent.sh", get(install::script))
        .route("/v1/install/berth-agent/{os}/{arch}", get(install::binary))
        .route(
            "/v1/install/berth-agent/{os}/{arch}/sha256",
            get(install::binary_sha256),
        )
        .route("/v1/backup", get(backup::backup))
        .route("/v1/agent-binaries", get(install::list))
        .route(
            "/v1/agent-binaries/{os}/{arch}",
            axum::routing::put(install::add)
                .delete(install::remove)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/clusters", get(clusters::list).post(clusters::apply))
        .route("/v1/clusters/{name}", get(clusters::status))
        .route("/v1/clusters/{name}/retry", post(clusters::retry))
        .route("/v1/clusters/{name}/rollback", post(clusters::rollback))
        .route("/v1/clusters/{name}/reset", post(clusters::reset))
        .route("/v1/clusters/{name}/hosts", post(clusters::edit_hosts))
        .route("/v1/clusters/{name}/logs", get(clusters::logs))
        .route("/v1/tokens", post(admin::create_token))
        .route("/v1/api-tokens", post(admin::create_api_token))
        .route("/v1/hosts", get(admin::list_hosts))
        .route("/v1/hosts/{name}", delete(admin::delete_host))
        .route("/v1/hosts/{name}/revoke", post(admin::revoke_host))
        .route(
            "/v1/bundles",
            get(bundles::list)
                .post(bundles::push)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/bundles/{*reference}",
            get(bundles::inspect)
                .put(bundles::tag)
                .delete(bundles::remove),
        )
        .route("/v1/blobs/sha256/{hex}", get(bundles::blob))
        .route("/v1/limits", get(bundles::limits))
        .route(
            "/v1/images",
            get(bundles::list_images)
                .post(bundles::load_images)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v2", get(registry::base))
        .route("/v2/", get(registry::base))
        .route("/v2/{*rest}", axum::routing::any(registry::route))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/events", get(events::list))
        .route("/v1/exec", post(clusters::exec))
        .merge(crate::ui::router())
        .fallback(|| async {
            error::ApiError::not_found("no such API route; see the API reference in docs/api.md")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(bounded_body))
        .layer(axum::middleware::from_fn(run_to_completion))
        .with_state(state)
}

/// How much of a body over [`MAX_JSON_BODY`] is read (and dropped) before it is answered.
const DRAIN_OVERSIZED: usize = 16 << 20;

/// Whether a request streams a large body to its handler (bundle and agent uploads).
fn is_upload(req: &axum::extract::Request) -> bool {
    let path = req.uri().path();
    (req.method() == axum::http::Method::POST && (path == "/v1/bundles" || path == "/v1/images"))
        || (req.method() == axum::http::Method::PUT && path.starts_with("/v1/agent-binaries/"))
}

/// Every other request body is read here, up to [`MAX_JSON_BODY`]. One over it from a
/// caller that presents credentials (a bearer token or a client certificate) is read on to
/// its end (at most [`DRAIN_OVERSIZED`] more) and then answered `413 too_large`: a client
/// that streams its body — an HTTP/2 one above all — gets that answer once it has sent
/// everything, instead of a stream reset while it is still sending. Anyone else gets the
/// 413 at the limit, with nothing drained for them.
async fn bounded_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures_util::StreamExt;
    if is_upload(&req)
        || req.method() == axum::http::Method::GET
        || req.method() == axum::http::Method::HEAD
    {
        return next.run(req).await;
    }
    let drain = if req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
        || req
            .extensions()
            .get::<auth::PeerCert>()
            .is_some_and(|p| p.0.is_some())
    {
        DRAIN_OVERSIZED
    } else {
        0
    };
    let too_large = || error::ApiError::body_too_large().into_response();
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (MAX_JSON_BODY + drain) as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return error::ApiError::bad_request(format!("cannot read the request body: {e}"))
                    .into_response()
            }
        };
        total += chunk.len();
        if total <= MAX_JSON_BODY {
            buf.extend_from_slice(&chunk);
        } else if total > MAX_JSON_BODY + drain {
            break;
        }
    }
    if total > MAX_JSON_BODY {
        return too_large();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(buf.freeze()),
    ))
    .await
}

/// Requests that change state run to completion on their own task, even when the client
/// goes away (an agent killed mid-report, a CLI interrupted). A handler future dropped in
/// the middle of a store transaction (its `COMMIT` sent, the answer never awaited) can
/// leave sqlx's SQLite worker ignoring the next transaction's rollback, and that
/// connection then holds the database's write lock for good. Reads and the long-poll
/// (which only waits) stay cancellable.
async fn run_to_completion(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mutates = req.method() != axum::http::Method::GET
        && req.method() != axum::http::Method::HEAD
        && req.uri().path() != "/v1/agent/poll";
    if !mutates {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            error::ApiError::Internal(anyhow::anyhow!("request task failed: {e}")).into_response()
        }
    }
}
