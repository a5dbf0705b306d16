//! `GET /v1/events`: the event log (viewer).

use super::error::{ApiError, ApiJson, ApiQuery};
use super::AppState;
use crate::store::events::EventQuery;
use axum::extract::State;
use berth_shared::api::EventView;
use berth_shared::api::EventsQuery;

pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<ApiJson<Vec<EventView>>, ApiError> {
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
