//! The event log, newest first, of every cluster or of one (`?cluster=NAME`, also one
//! that is gone).

use super::auth::Viewer;
use super::page::{cluster_href, enc, page, Nav, UiError};
use crate::api::AppState;
use crate::store::events::EventQuery;
use axum::extract::{Query, State};
use maud::{html, Markup};

/// Events on one page; older ones are in `berth get events`.
const SHOWN: u32 = 500;

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    cluster: Option<String>,
}

/// `GET /ui/events`.
pub async fn list(
    State(st): State<AppState>,
    Viewer(who): Viewer,
    Query(q): Query<EventsQuery>,
) -> Result<Markup, UiError> {
    let cluster = q.cluster.filter(|c| !c.is_empty());
    let mut rows = st
        .store
        .events(&EventQuery {
            cluster: cluster.clone(),
            limit: SHOWN,
            tail: true,
            ..Default::default()
        })
        .await?;
    rows.reverse();
    let body = html! {
        h1 {
            "Events"
            @if let Some(c) = &cluster { " of " span.name { (c) } }
        }
        p.links {
            @if let Some(c) = &cluster {
                a href=(cluster_href(c)) { "Cluster page" } " · " a href="/ui/events" { "All events" }
            }
            " The newest " (SHOWN) " are shown; " code { "berth get events" } " has them all."
        }
        @if rows.is_empty() {
            p.empty { "No events." }
        } @else {
            table.list.events {
                thead { tr { th { "Time (UTC)" } th { "Cluster" } th { "Host" } th { "Kind" } th { "Message" } } }
                tbody {
                    @for e in &rows {
                        tr {
                            td.time { (crate::time::rfc3339(e.at_ms / 1000)) }
                            td {
                                @if let Some(c) = &e.cluster {
                                    a href={ "/ui/events?cluster=" (enc(c)) } title="Only this cluster's events" { (c) }
                                }
                            }
                            td { (e.host.as_deref().unwrap_or("")) }
                            td { span class={ "kind kind-" (e.kind) } { (e.kind) } }
                            td.message { (e.message) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&who), "Events", Nav::Events, body))
}
