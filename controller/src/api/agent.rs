//! Agent calls over mutual TLS: the long-poll (heartbeat and plan delivery) and reports.

use super::auth::AgentHost;
use super::error::{ApiError, ApiJson};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use berth_shared::api::{PollRequest, PollResponse, ReportBatch, ReportEntry};
use std::collections::BTreeSet;
use std::time::Duration;

/// Holds the request for up to `wait_secs` (capped by `--poll-hold`) unless a plan newer
/// than `have_generation` exists or appears. Every poll is a heartbeat; facts sent with it
/// are stored. Beyond `--max-polls` concurrent polls, answers `503` + `Retry-After`.
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
    let waker = st.engine.waker(host.id);
    let notified = waker.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut plan = st.engine.plan_for(&host, req.have_generation).await?;
    if plan.is_none() && !hold.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = notified => {}
            _ = st.shutdown.cancelled() => {}
        }
        plan = st.engine.plan_for(&host, req.have_generation).await?;
        st.store.touch_host(host.id, None).await?;
    }
    Ok(ApiJson(PollResponse {
        host: host.name,
        facts_accepted,
        plan,
    }))
}

/// Log chunks and step reports, applied in order; duplicates are no-ops.
pub async fn reports(
    State(st): State<AppState>,
    AgentHost(host): AgentHost,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<StatusCode, ApiError> {
    let mut touched = BTreeSet::new();
    for e in batch.entries {
        match e {
            ReportEntry::Log {
                step_id,
                attempt,
                offset,
                data,
            } => {
                st.store
                    .append_log(host.id, step_id, attempt, offset, data.as_bytes())
                    .await?;
            }
            ReportEntry::Step(r) => {
                tracing::info!(host = %host.name, step = r.step_id, attempt = r.attempt, state = %r.state, "step report");
                if let Some(cid) = st.store.record_report(host.id, &r).await? {
                    touched.insert(cid);
                }
            }
            ReportEntry::PlanRejected { reason } => {
                tracing::warn!(host = %host.name, %reason, "agent refused a plan");
                st.store
                    .record_agent_event(host.id, "plan_rejected", &reason)
                    .await?;
            }
        }
    }
    for cid in touched {
        st.engine.tick(cid).await?;
    }
    st.store.touch_host(host.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
