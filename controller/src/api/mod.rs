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
pub mod openapi;
pub mod registry;

use crate::pki::Pki;
use crate::store::Role;
use crate::store::Store;
use axum::response::IntoResponse;
use axum::routing::get;
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
    pub blobs: crate::bundle_blobs::BundleBlobs,
    /// Largest accepted bundle upload, bytes.
    pub max_bundle_size: u64,
    /// Container image blobs the registry serves (`crate::registry`).
    /// The registry's image blobs (shared through the bucket, when there is one).
    pub images: crate::mirror::Mirrored,
    /// Registry reads need a client certificate or a token (`berth serve --registry-auth`).
    pub registry_auth: bool,
    /// Limits a pushed bundle must respect (checked on upload, enforced again by agents).
    pub unpack_limits: berth_bundle::Limits,
    pub engine: Arc<crate::engine::Engine>,
    /// berth-agent executables served to installing hosts.
    pub agent_binaries: crate::mirror::Mirrored,
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

/// The controller's router: the API by the route table, the registry (`/v2/`), and `pages`
/// (the web console, `crate::ui`), which the server hands in so the API does not depend
/// on the pages built over it.
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    use berth_shared::routes::*;
    let uploads = || axum::extract::DefaultBodyLimit::disable();
    Table::new(state.clone())
        .at::<Healthz, _, _>(enroll::healthz)
        .at::<OpenApi, _, _>(openapi::serve)
        .at::<EnrollCa, _, _>(enroll::ca)
        .at::<Enroll, _, _>(enroll::enroll)
        .at::<InstallScript, _, _>(install::script)
        .at::<InstallAgent, _, _>(install::binary)
        .at::<InstallAgentSha256, _, _>(install::binary_sha256)
        .at::<AgentPoll, _, _>(agent::poll)
        .at::<AgentReports, _, _>(agent::reports)
        .at::<AgentRenew, _, _>(agent::renew)
        .at::<AgentContext, _, _>(agent::context)
        .at::<Blob, _, _>(bundles::blob)
        .at::<ClusterList, _, _>(clusters::list)
        .at::<ClusterApply, _, _>(clusters::apply)
        .at::<ClusterStatus, _, _>(clusters::status)
        .at::<ClusterRetry, _, _>(clusters::retry)
        .at::<ClusterRollback, _, _>(clusters::rollback)
        .at::<ClusterReset, _, _>(clusters::reset)
        .at::<ClusterHosts, _, _>(clusters::edit_hosts)
        .at::<ClusterLogs, _, _>(clusters::logs)
        .at::<Exec, _, _>(clusters::exec)
        .at::<Events, _, _>(events::list)
        .at::<TokenCreate, _, _>(admin::create_token)
        .at::<HostList, _, _>(admin::list_hosts)
        .at::<HostDelete, _, _>(admin::delete_host)
        .at::<HostRevoke, _, _>(admin::revoke_host)
        .at::<ApiTokenCreate, _, _>(admin::create_api_token)
        .at::<Audit, _, _>(admin::audit)
        .at::<BundleList, _, _>(bundles::list)
        .upload::<BundlePush, _, _>(bundles::push, uploads())
        .at::<BundleInspect, _, _>(bundles::inspect)
        .at::<BundleTag, _, _>(bundles::tag)
        .at::<BundleRemove, _, _>(bundles::remove)
        .at::<Limits, _, _>(bundles::limits)
        .at::<ImageList, _, _>(bundles::list_images)
        .upload::<ImageLoad, _, _>(bundles::load_images, uploads())
        .at::<Metrics, _, _>(admin::metrics)
        .at::<Backup, _, _>(backup::backup)
        .at::<AgentBinaryList, _, _>(install::list)
        .at::<ControllerList, _, _>(admin::controllers)
        .upload::<AgentBinaryAdd, _, _>(install::add, uploads())
        .at::<AgentBinaryRemove, _, _>(install::remove)
        .done()
        .route("/v2", get(registry::base))
        .route("/v2/", get(registry::base))
        .route("/v2/{*rest}", axum::routing::any(registry::route))
        .merge(pages)
        .fallback(|| async {
            error::ApiError::not_found("no such API route; see GET /v1/openapi.json or docs/api.md")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        // No answer is ever sniffed into something else (a blob, a manifest, a log as
        // HTML on the console's origin).
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            ),
        )
        .layer(axum::middleware::from_fn(bounded_body))
        .layer(axum::middleware::from_fn(run_to_completion))
        .with_state(state)
}

/// Mounts handlers at the routes of the table (`berth_shared::routes`): the path and
/// method come from the route, and a route that takes a bearer token gets the caller
/// checked against the route's role before its handler runs. `done` fails (in debug
/// builds and the router test) unless every route of the table was mounted exactly once.
struct Table {
    router: Router<AppState>,
    state: AppState,
    mounted: Vec<&'static str>,
}

impl Table {
    fn new(state: AppState) -> Table {
        Table {
            router: Router::new(),
            state,
            mounted: Vec::new(),
        }
    }

    fn at<E, H, T>(self, handler: H) -> Table
    where
        E: berth_shared::routes::Endpoint,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.mount::<E, H, T>(handler, None)
    }

    /// A route whose handler streams its body (no JSON body limit).
    fn upload<E, H, T>(self, handler: H, limit: axum::extract::DefaultBodyLimit) -> Table
    where
        E: berth_shared::routes::Endpoint,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.mount::<E, H, T>(handler, Some(limit))
    }

    fn mount<E, H, T>(mut self, handler: H, limit: Option<axum::extract::DefaultBodyLimit>) -> Table
    where
        E: berth_shared::routes::Endpoint,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        use axum::routing::MethodFilter;
        use berth_shared::routes::{Access, Method};
        let route = E::ROUTE;
        let filter = match route.method {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        };
        let mut m = axum::routing::on(filter, handler);
        if let Some(l) = limit {
            m = m.layer(l);
        }
        let role = match route.access {
            Access::Viewer => Some(Role::Viewer),
            Access::Operator => Some(Role::Operator),
            Access::Admin => Some(Role::Admin),
            // Agents by certificate: their extractor (`AgentHost`, or the blob reader that
            // takes either) decides; open routes take no credentials.
            Access::Public | Access::Agent | Access::AgentOrViewer => None,
        };
        if let Some(role) = role {
            m = m.route_layer(axum::middleware::from_fn_with_state(
                (self.state.clone(), role),
                auth::require_role,
            ));
        }
        self.mounted.push(route.id);
        self.router = self.router.route(route.path, m);
        self
    }

    fn done(self) -> Router<AppState> {
        let mut ids: Vec<&str> = berth_shared::routes::ALL.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        let mut mounted = self.mounted.clone();
        mounted.sort_unstable();
        assert_eq!(ids, mounted, "every route of the table is mounted once");
        self.router
    }
}

/// How much of a body over [`MAX_JSON_BODY`] is read (and dropped) before it is answered.
const DRAIN_OVERSIZED: usize = 16 << 20;

/// Whether a request streams a large body to its handler (bundle and agent uploads).
fn is_upload(req: &axum::extract::Request) -> bool {
    let path = req.uri().path();
    use berth_shared::routes::{AgentBinaryAdd, BundlePush, Endpoint, ImageLoad};
    // `/v1/agent-binaries/`: the template up to its first parameter (no allocation: this
    // runs for every request).
    let template = AgentBinaryAdd::ROUTE.path;
    let agent_binaries = &template[..template.find('{').unwrap_or(template.len())];
    (req.method() == axum::http::Method::POST
        && (path == BundlePush::ROUTE.path || path == ImageLoad::ROUTE.path))
        || (req.method() == axum::http::Method::PUT && path.starts_with(agent_binaries))
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
        && req.uri().path()
            != <berth_shared::routes::AgentPoll as berth_shared::routes::Endpoint>::ROUTE.path;
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
