//! The read-only web console at `/ui/`: clusters, a cluster's phases × hosts grid, a
//! step's live log, hosts, bundles and the event log, for an operator with a browser.
//!
//! Pages are built on the server (maud escapes every value) from the same store reads the
//! API answers with; the only script is `static/console.js`, which refreshes the grid and
//! follows a log stream. Everything is served by the controller, so the console works
//! air-gapped. The answers' `Content-Security-Policy` allows the controller's own files
//! alone (no inline script or style, no other origin), and no page changes state, so the
//! API token kept in the session cookie (`auth`) can do nothing through a forged request.

mod auth;
mod clusters;
mod events;
mod inventory;
mod logs;
mod page;

use crate::api::AppState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

/// The console's routes, merged into the API router (its body limits and middleware apply).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(clusters::list))
        .route("/ui/login", get(auth::form).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/clusters/{name}", get(clusters::cluster))
        .route("/ui/clusters/{name}/grid", get(clusters::grid))
        .route("/ui/clusters/{name}/steps/{id}", get(logs::step))
        .route("/ui/clusters/{name}/steps/{id}/log", get(logs::stream))
        .route("/ui/hosts", get(inventory::hosts))
        .route("/ui/bundles", get(inventory::bundles))
        .route("/ui/events", get(events::list))
        .route("/ui/static/console.css", get(css))
        .route("/ui/static/console.js", get(js))
        .route("/ui/{*rest}", get(not_found))
        .layer(axum::middleware::map_response(security_headers))
}

/// On every console answer: only the controller's own files may load or be fetched, no
/// page may be framed, no URL leaks to another site, and nothing is cached (pages show
/// live state; the assets are a few KB and change with the binary).
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

/// Any other `/ui/` path: the login page for a stranger, a 404 page for a viewer.
async fn not_found(_: auth::Viewer) -> page::UiError {
    page::UiError::not_found("there is no such console page")
}
