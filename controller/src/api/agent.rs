//! Agent calls over mutual TLS: the long-poll (heartbeat and plan delivery) and reports.

use super::auth::AgentHost;
use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use berth_shared::api::{PollRequest, PollResponse, ReportBatch};
use std::time::Duration;

/// Holds the request for up to `wait_secs` (capped by `--poll-hold`) unless a plan newer
/// than `have_generation` exists or appears. Every poll is a heartbeat; facts sent with it
/// are stored. Beyond `--max-polls` concurrent polls, answers `503` + `Retry-After`.
pub async fn poll(
    State(st): State<AppState>,
    AgentHost(host, _): AgentHost,
    ApiJson(req): ApiJson<PollRequest>,
) -> Result<ApiJson<PollResponse>, ApiError> {
    let Ok(_slot) = st.poll_slots.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded {
            retry_after_secs: 5,
        });
    };
    let facts_accepted = req.facts.is_some();
    match &req.facts {
        Some(f) => st.store.store_facts(host.id, f).await?,
        None => st.heartbeats.beat(host.id, crate::time::now_unix()),
    }
    let hold = Duration::from_secs(req.wait_secs).min(st.poll_hold);
    let waker = st.engine.waker(host.id);
    let notified = waker.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut plan = st.engine.plans.plan_for(&host, req.have_generation).await?;
    if plan.is_none() && !hold.is_zero() {
        let woken = tokio::select! {
            _ = tokio::time::sleep_until(hold_deadline(tokio::time::Instant::now(), hold)) => false,
            _ = notified => true,
            _ = st.shutdown.cancelled() => false,
        };
        plan = st.engine.plans.plan_for(&host, req.have_generation).await?;
        st.heartbeats.beat(host.id, crate::time::now_unix());
        if let (true, Some(_), Some(at)) = (woken, &plan, waker.woken_at()) {
            crate::metrics::Metrics::observe(&st.metrics.plan_delivery_seconds, at.elapsed());
        }
    }
    if plan.is_some() {
        st.metrics.plans_issued.inc();
    }
    Ok(ApiJson(PollResponse {
        host: host.name,
        facts_accepted,
        plan,
    }))
}

/// Held polls expire on whole ticks of this, counted from the process start.
const HOLD_TICK: Duration = Duration::from_secs(1);

/// When a hold of `hold` that starts at `now` ends: at the last tick boundary before
/// `now + hold` (never later, at most one tick earlier). Idle agents' polls expire spread
/// over the hold; on ticks, those of one second are answered in one wake-up of the
/// runtime, and their next polls arrive together, instead of one wake-up each.
fn hold_deadline(now: tokio::time::Instant, hold: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let end = now + hold;
    if hold <= HOLD_TICK {
        return end;
    }
    let since = end.saturating_duration_since(epoch);
    end - Duration::from_nanos((since.as_nanos() % HOLD_TICK.as_nanos()) as u64)
}

/// Log chunks and step reports, applied in order; duplicates are no-ops. The first entry
/// that is refused (a step not released to this host, a stale attempt, an illegal
/// transition, an output the bundle does not declare, a bad log chunk) stops the batch:
/// the answer is its 4xx with a stable `code` and the entry's index; entries before it were
/// applied, it and the ones after it were not. A refused entry changes nothing.
pub async fn reports(
    State(st): State<AppState>,
    AgentHost(host, _): AgentHost,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<StatusCode, ApiError> {
    // Timed from here: an agent starved of CPU can send its body seconds after the
    // headers, and that wait is the agent's, not the controller's.
    let started = std::time::Instant::now();
    let answer = report(&st, host, batch).await;
    crate::metrics::Metrics::observe(&st.metrics.report_seconds, started.elapsed());
    answer
}

async fn report(
    st: &AppState,
    host: crate::store::hosts::HostRow,
    batch: ReportBatch,
) -> Result<StatusCode, ApiError> {
    // Clusters the batch changed are ticked by the engine once it is committed.
    let outcome = st.engine.report_batch(&host, batch.entries).await?;
    let refused = outcome.refused.map(|(i, e)| {
        let e = ApiError::from(e);
        if let ApiError::Client { code, message, .. } = &e {
            tracing::warn!(host = %host.name, entry = i, code, %message, "report refused");
        }
        e.with_entry(i)
    });
    st.heartbeats.beat(host.id, crate::time::now_unix());
    match refused {
        Some(e) => Err(e),
        None => Ok(StatusCode::NO_CONTENT),
    }
}

/// `GET /v1/agent/contexts/sha256/{hex}`: the cluster context a plan names by digest, to a
/// host with a released step in that cluster. The agent checks the digest.
pub async fn context(
    State(st): State<AppState>,
    AgentHost(host, _): AgentHost,
    ApiPath(hex): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    use crate::plans::ContextError;
    use axum::response::IntoResponse;
    let digest: berth_shared::Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|e: berth_shared::digest::DigestError| ApiError::bad_request(e.to_string()))?;
    match st.engine.plans.context_for_host(&host, &digest).await {
        Ok(body) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()),
        Err(ContextError::Unknown(d)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            berth_shared::api::codes::CONTEXT_UNKNOWN,
            format!("no context {d} is stored; poll again for a current plan"),
        )),
        Err(e @ ContextError::NotYours(_)) => {
            tracing::warn!(host = %host.name, %digest, "refused a context not released to the host");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                berth_shared::api::codes::CONTEXT_NOT_RELEASED,
                e.to_string(),
            ))
        }
        Err(ContextError::Internal(e)) => Err(ApiError::Internal(e)),
    }
}

/// `POST /v1/agent/renew`: signs a new certificate for a key the agent generated, for
/// the same host name. The certificate used for this call stays accepted until the agent
/// presents the new one.
pub async fn renew(
    State(st): State<AppState>,
    AgentHost(host, presented): AgentHost,
    ApiJson(req): ApiJson<berth_shared::api::RenewRequest>,
) -> Result<ApiJson<berth_shared::api::RenewResponse>, ApiError> {
    let name: berth_shared::HostName = host
        .name
        .parse()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored host name: {e}")))?;
    let cert = st
        .pki
        .sign_agent_csr(&req.csr_pem, &name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    st.store
        .renew_host_cert(
            host.id,
            &presented,
            &cert.fingerprint,
            &cert.serial,
            (cert.not_before, cert.not_after),
        )
        .await?;
    tracing::info!(host = %host.name, not_after = %crate::time::rfc3339(cert.not_after), "agent certificate renewed");
    Ok(ApiJson(berth_shared::api::RenewResponse {
        certificate_pem: cert.pem,
        not_after: crate::time::rfc3339(cert.not_after),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_end_on_ticks_never_later_and_at_most_one_tick_early() {
        let start = tokio::time::Instant::now();
        let _ = hold_deadline(start, Duration::from_secs(45));
        let hold = Duration::from_secs(45);
        let mut ends = std::collections::BTreeSet::new();
        for ms in (0..5000).step_by(7) {
            let now = start + Duration::from_millis(ms);
            let end = hold_deadline(now, hold);
            assert!(end <= now + hold, "never later than asked");
            assert!(end > now + hold - HOLD_TICK, "at most one tick early");
            assert_eq!(
                end.duration_since(start).as_nanos() % HOLD_TICK.as_nanos(),
                0
            );
            ends.insert(end);
        }
        assert_eq!(ends.len(), 5, "5 s of polls expire on 5 ticks");
        let short = Duration::from_millis(300);
        assert_eq!(
            hold_deadline(start + short, short),
            start + short * 2,
            "a hold of a tick or less is kept"
        );
    }
}
