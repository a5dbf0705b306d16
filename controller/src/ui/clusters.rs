//! The clusters page and a cluster's grid: one row per host (master0 first), one column
//! per step kind in phase order, each cell the host's newest step of that kind.

use super::auth::Viewer;
use super::page::{cluster_href, duration, enc, page, Nav, UiError};
use crate::api::AppState;
use crate::store::clusters::{ClusterRow, StepRow};
use crate::time::now_unix;
use axum::extract::{Path, State};
use berth_shared::state::{StepKind, StepState};
use maud::{html, Markup};
use std::collections::{BTreeMap, BTreeSet};

/// `GET /ui/`: every cluster with its phase, generation, hosts and step counts.
pub async fn list(State(st): State<AppState>, Viewer(who): Viewer) -> Result<Markup, UiError> {
    let mut clusters = Vec::new();
    for c in st.store.clusters().await? {
        clusters.push(crate::api::clusters::summary(&st, c).await?);
    }
    let body = html! {
        h1 { "Clusters" }
        @if clusters.is_empty() {
            p.empty { "No clusters yet: " code { "berth apply -f Clusterfile" } " makes one." }
        } @else {
            table.list {
                thead { tr { th { "Name" } th { "Phase" } th { "Generation" } th { "Hosts" } th { "Steps" } th { "Message" } } }
                tbody {
                    @for c in &clusters {
                        tr {
                            td { a href=(cluster_href(&c.name)) { (c.name) } }
                            td { span class={ "phase phase-" (c.phase) } { (c.phase) } }
                            td.num { (c.generation) }
                            td.num title=(c.hosts.join(", ")) { (c.hosts.len()) }
                            td { (counts(&c.steps)) }
                            td { (c.message.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(Some(&who), "Clusters", Nav::Clusters, body))
}

/// Step counts by state, as coloured badges in state order.
fn counts(steps: &BTreeMap<StepState, u64>) -> Markup {
    html! {
        @for (state, n) in steps {
            span class={ "count st-" (state) } title=(state) { (n) " " (state) }
        }
    }
}

/// `GET /ui/clusters/{name}`: the grid, which `console.js` refreshes every second from
/// `…/grid`.
pub async fn cluster(
    State(st): State<AppState>,
    Viewer(who): Viewer,
    Path(name): Path<String>,
) -> Result<Markup, UiError> {
    let c = cluster_row(&st, &name).await?;
    let grid = grid_of(&st, c).await?;
    let body = html! {
        h1 { "Cluster " span.name { (name) } }
        p.links { a href={ "/ui/events?cluster=" (enc(&name)) } { "Events of this cluster" } }
        div #grid data-refresh={ (cluster_href(&name)) "/grid" } { (grid) }
    };
    Ok(page(
        Some(&who),
        &format!("Cluster {name}"),
        Nav::Clusters,
        body,
    ))
}

/// `GET /ui/clusters/{name}/grid`: the grid alone, an HTML fragment.
pub async fn grid(
    State(st): State<AppState>,
    Viewer(_): Viewer,
    Path(name): Path<String>,
) -> Result<Markup, UiError> {
    let c = cluster_row(&st, &name).await?;
    grid_of(&st, c).await
}

/// The cluster by name, or a 404 page.
pub async fn cluster_row(st: &AppState, name: &str) -> Result<ClusterRow, UiError> {
    st.store
        .cluster(name)
        .await?
        .ok_or_else(|| UiError::not_found(format!("There is no cluster `{name}`.")))
}

/// One row of the grid: a host and its steps by kind, oldest first.
struct Row {
    host: String,
    /// `master`/`node`, and whether it is leaving; empty for a host that left.
    role: String,
    cells: BTreeMap<StepKind, Vec<StepRow>>,
}

async fn grid_of(st: &AppState, c: ClusterRow) -> Result<Markup, UiError> {
    let members = st.store.cluster_hosts(c.id).await?;
    let steps = st.store.steps(c.id).await?;
    let by_state = st.store.step_counts(c.id).await?;
    let now = now_unix();
    // Members in their order (master0 first), then hosts that left but still have steps.
    let mut rows: Vec<Row> = members
        .iter()
        .map(|m| Row {
            host: m.name.clone(),
            role: match m.state.as_str() {
                "active" => m.role.to_string(),
                other => format!("{} ({other})", m.role),
            },
            cells: BTreeMap::new(),
        })
        .collect();
    let mut kinds = BTreeSet::new();
    for s in steps {
        kinds.insert((s.kind.base_ord(), s.kind));
        let i = match rows.iter().position(|r| r.host == s.host_name) {
            Some(i) => i,
            None => {
                rows.push(Row {
                    host: s.host_name.clone(),
                    role: String::new(),
                    cells: BTreeMap::new(),
                });
                rows.len() - 1
            }
        };
        // `steps` are in ord order: the last of a kind is the newest.
        rows[i].cells.entry(s.kind).or_default().push(s);
    }
    let base = cluster_href(&c.name);
    Ok(html! {
        div.summary {
            span class={ "phase phase-" (c.phase) } { (c.phase) }
            span { "generation " (c.generation) }
            (counts(&by_state))
        }
        @if let Some(m) = &c.message { p.message { (m) } }
        @if rows.is_empty() {
            p.empty { "This cluster has no hosts." }
        } @else {
            table.grid {
                thead { tr {
                    th { "Host" }
                    @for (_, k) in &kinds { th { (k) } }
                } }
                tbody {
                    @for r in &rows {
                        tr {
                            th.host { span.name { (r.host) } span.role { (r.role) } }
                            @for (_, k) in &kinds {
                                @match r.cells.get(k).and_then(|v| v.split_last()) {
                                    Some((s, earlier)) => (cell(&base, &r.host, s, earlier, now)),
                                    None => td.none { "—" },
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A grid cell: the newest step's state, elapsed time, attempt and exit code, linking to
/// its log; earlier steps of the kind (an upgrade, each `exec`) as small links.
fn cell(base: &str, host: &str, s: &StepRow, earlier: &[StepRow], now: i64) -> Markup {
    let elapsed = s.started_at.map(|a| s.ended_at.unwrap_or(now) - a);
    html! {
        td class={ "cell st-" (s.state) } data-host=(host) data-kind=(s.kind) data-state=(s.state) {
            a.step href={ (base) "/steps/" (s.id) } title=(s.reason.as_deref().unwrap_or("")) {
                span.state { (s.state) }
                @if let Some(e) = elapsed { span.meta { (duration(e)) } }
                span.meta { "attempt " (s.attempt) }
                @if let Some(code) = s.exit_code { span.meta { "exit " (code) } }
            }
            @if !earlier.is_empty() {
                span.earlier {
                    "earlier:"
                    @for e in earlier {
                        " " a href={ (base) "/steps/" (e.id) } title=(e.state) { "#" (e.id) }
                    }
                }
            }
        }
    }
}
