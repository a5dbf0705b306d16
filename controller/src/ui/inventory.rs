//! The hosts and bundles pages: what `berth get hosts` and `berth bundle list` show.

use super::auth::Viewer;
use super::page::{duration, page, size, Nav, UiError};
use crate::api::AppState;
use axum::extract::State;
use maud::{html, Markup};
use std::time::{Duration, SystemTime};

/// A certificate expiring within this long is marked.
const CERT_SOON: Duration = Duration::from_secs(7 * 24 * 3600);

/// `GET /ui/hosts`: state, arch, agent version, last seen and certificate expiry.
pub async fn hosts(State(st): State<AppState>, Viewer(who): Viewer) -> Result<Markup, UiError> {
    let hosts = crate::api::admin::host_views(&st).await?;
    let now = SystemTime::now();
    let body = html! {
        h1 { "Hosts" }
        @if hosts.is_empty() {
            p.empty { "No hosts yet: " code { "berth token create --install" } " prints the line that enrolls one." }
        } @else {
            table.list {
                thead { tr {
                    th { "Name" } th { "State" } th { "Addresses" } th { "Arch" } th { "Agent" }
                    th { "Last seen" } th { "Certificate expires" } th { "Agent events" }
                } }
                tbody {
                    @for h in &hosts {
                        tr {
                            td { (h.name) }
                            td { span class={ "badge host-" (h.state) } { (h.state) } }
                            td { (h.addresses.join(", ")) }
                            td { (h.arch) }
                            td { (h.agent_version) }
                            td title=(h.last_seen) { (duration(h.last_seen_secs_ago as i64)) " ago" }
                            @match &h.cert_expires_at {
                                Some(t) => td class=[expires_soon(t, now).then_some("warn")] { (t) },
                                None => td { "—" },
                            }
                            td {
                                @for e in &h.events {
                                    div.event title=(e.message) { (e.kind) " ×" (e.count) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&who), "Hosts", Nav::Hosts, body))
}

/// `GET /ui/bundles`: name, version, type, tags, size and digest.
pub async fn bundles(State(st): State<AppState>, Viewer(who): Viewer) -> Result<Markup, UiError> {
    let bundles = crate::api::bundles::views(&st).await?;
    let body = html! {
        h1 { "Bundles" }
        @if bundles.is_empty() {
            p.empty { "No bundles yet: " code { "berth bundle push DIR --tag NAME:TAG" } " adds one." }
        } @else {
            table.list {
                thead { tr {
                    th { "Name" } th { "Version" } th { "Type" } th { "Tags" } th { "Size" }
                    th { "Digest" } th { "Pushed" }
                } }
                tbody {
                    @for b in &bundles {
                        tr {
                            td { (b.name) }
                            td { (b.version) }
                            td { (b.bundle_type) }
                            td { @for t in &b.tags { span.tag { (t) } " " } }
                            td.num { (size(b.size)) }
                            td { code.digest title=(b.digest) { (short(&b.digest.to_string())) } }
                            td { (b.created_at) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&who), "Bundles", Nav::Bundles, body))
}

/// Whether a certificate expiring at `at` (RFC 3339) has expired or will within
/// [`CERT_SOON`].
fn expires_soon(at: &str, now: SystemTime) -> bool {
    humantime::parse_rfc3339(at).is_ok_and(|at| match at.duration_since(now) {
        Ok(left) => left < CERT_SOON,
        Err(_) => true,
    })
}

/// `sha256:` and the first 12 hex digits (the whole digest is the title).
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}
