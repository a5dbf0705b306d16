//! `GET /v1/events`: the event log (viewer).

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::store::events::EventQuery;
use crate::store::Role;
use axum::extract::{Query, State};
use berth_shared::api::EventView;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// One cluster's events (also of a cluster that is gone).
    pub cluster: Option<String>,
    /// Only events after this id (what `--watch` passes on).
    #[serde(default)]
    pub after: i64,
    pub kind: Option<String>,
    /// 1 to 10000.
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// The newest `limit` events instead of the oldest after `after`.
    #[serde(default)]
    pub tail: bool,
}

fn default_limit() -> u32 {
    1000
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<ApiJson<Vec<EventView>>, ApiError> {
    caller.require(Role::Viewer)?;
    if q.limit == 0 || q.limit > 10_000 {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 10000, got {}",
            q.limit
        )));
    }
    let rows = st
        .store
        .events(&EventQuery {
            cluster: q.cluster,
            after: q.after,
            kind: q.kind,
            limit: q.limit,
            tail: q.tail,
        })
        .await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(|r| EventView {
                id: r.id,
                at: humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms.max(0) as u64),
                )
                .to_string(),
                cluster: r.cluster,
                host: r.host,
                kind: r.kind,
                message: r.message,
            })
            .collect(),
    ))
}
