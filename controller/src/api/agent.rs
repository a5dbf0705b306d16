//! Agent calls over mutual TLS: the long-poll that doubles as heartbeat.

use super::auth::AgentHost;
use super::error::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use berth_shared::api::{PollRequest, PollResponse};
use std::time::Duration;

/// Holds the request for up to `wait_secs` (capped by `--poll-hold`) and answers. Every
/// poll is a heartbeat; facts sent with it are stored. When more polls are in flight than
/// `--max-polls`, answers `503` with `Retry-After` at once.
pub async fn poll(
    State(st): State<AppState>,
    AgentHost(host): AgentHost,
    ApiJson(req): ApiJson<PollRequest>,
) -> Result<ApiJson<PollResponse>, ApiError> {
    let Ok(_slot) = st.poll_slots.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded {
            retry_after_secs: 5,
        });
    };
    let facts_accepted = req.facts.is_some();
    st.store.touch_host(host.id, req.facts.as_ref()).await?;
    let hold = Duration::from_secs(req.wait_secs).min(st.poll_hold);
    tokio::select! {
        _ = tokio::time::sleep(hold) => {}
        _ = st.shutdown.cancelled() => {}
    }
    // The end of a held poll is a heartbeat too.
    if !hold.is_zero() {
        st.store.touch_host(host.id, None).await?;
    }
    Ok(ApiJson(PollResponse {
        host: host.name,
        facts_accepted,
    }))
}
