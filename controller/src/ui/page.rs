//! The console's page layout, its error pages, and how it writes names in links, times and
//! sizes.

use crate::api::error::ApiError;
use crate::store::ApiPrincipal;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The navigation entries; `Nav::None` for pages under none of them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Clusters,
    Hosts,
    Bundles,
    Events,
    None,
}

const NAV: [(Nav, &str, &str); 4] = [
    (Nav::Clusters, "/ui/", "Clusters"),
    (Nav::Hosts, "/ui/hosts", "Hosts"),
    (Nav::Bundles, "/ui/bundles", "Bundles"),
    (Nav::Events, "/ui/events", "Events"),
];

/// A whole page: head (the two static files, nothing inline), then for a signed-in user
/// the navigation, who it is (token name and role) and a sign-out button, then `body`.
pub fn page(who: Option<&ApiPrincipal>, title: &str, here: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · berth" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "berth" }
                    @if let Some(p) = who {
                        nav {
                            @for (n, href, label) in NAV {
                                a href=(href) class=[(n == here).then_some("here")] { (label) }
                            }
                        }
                        div.who {
                            span.name title="API token" { (p.name) }
                            span.role { (p.role.as_str()) }
                            form method="post" action="/ui/logout" {
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Characters left as they are in a path segment or query value; everything else is
/// percent-encoded (names are validated, but a link never relies on that).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` percent-encoded for a path segment or a query value.
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The link to a cluster's page.
pub fn cluster_href(name: &str) -> String {
    format!("/ui/clusters/{}", enc(name))
}

/// A duration as an operator reads it: `42s`, `3m 04s`, `2h 05m`, `3d 04h`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A byte count in binary units, one decimal.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A page that could not be made, shown as a page: a client error with its message, a
/// server error logged and answered with a generic one (as the API does).
pub struct UiError(ApiError);

impl UiError {
    pub fn not_found(message: impl Into<String>) -> UiError {
        UiError(ApiError::not_found(message))
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            ApiError::Client {
                status, message, ..
            } => (status, message),
            ApiError::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the controller is busy; reload in a moment".to_string(),
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error in the console");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the controller's log".to_string(),
                )
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (status.as_u16()) " " (title) }
            p.error { (message) }
            p { a href="/ui/" { "Back to the clusters" } }
        };
        (status, page(None, title, Nav::None, body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_links_are_percent_encoded() {
        assert_eq!(enc("web-1.prod_a~"), "web-1.prod_a~");
        assert_eq!(enc("a/b c?<x>&\"'#"), "a%2Fb%20c%3F%3Cx%3E%26%22%27%23");
        assert_eq!(cluster_href("ü"), "/ui/clusters/%C3%BC");
    }

    #[test]
    fn durations_and_sizes_read_as_an_operator_writes_them() {
        assert_eq!(duration(-3), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(184), "3m 04s");
        assert_eq!(duration(7500), "2h 05m");
        assert_eq!(duration(3 * 86400 + 4 * 3600 + 5), "3d 04h");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
