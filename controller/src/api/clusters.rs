//! Clusters: apply, list, status, logs, retry, reset.

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::engine::EngineError;
use crate::planner::PlanError;
use crate::store::Role;
use crate::time::{now_unix, rfc3339};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_shared::api::{ApplyQuery, LogQuery, StatusQuery};
use berth_shared::api::{
    ApplyResponse, ClusterHostView, ClusterSummary, ClusterView, HostsEdit, LogChunk, ResetRequest,
    ResetResponse, RetryResponse, RollbackResponse, StepView,
};
use berth_shared::state::StepState;
use std::time::Duration;

/// The body is the Clusterfile itself (YAML).
pub async fn apply(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ApplyQuery>,
    body: String,
) -> Result<ApiJson<ApplyResponse>, ApiError> {
    if q.max_unavailable
        .is_some_and(|n| !(1..=100_000).contains(&n))
    {
        return Err(ApiError::bad_request(
            "max_unavailable must be from 1 to 100000 (nodes an upgrade takes at once)",
        ));
    }
    let opts = crate::engine::ApplyOptions {
        max_unavailable: q.max_unavailable,
        dry_run: q.dry_run,
    };
    let a = st.engine.apply(&body, opts, &caller.actor()).await?;
    Ok(ApiJson(ApplyResponse {
        name: a.name,
        warnings: a.warnings,
        plan: a.plan,
    }))
}

/// The longest a status request may be held.
pub const MAX_STATUS_WAIT_SECS: u64 = 60;

/// Every cluster with its members and step counts; a cluster's steps are in its status.
pub async fn list(State(st): State<AppState>) -> Result<ApiJson<Vec<ClusterSummary>>, ApiError> {
    let mut out = Vec::new();
    for c in st.store.clusters().await? {
        out.push(summary(&st, c).await?);
    }
    Ok(ApiJson(out))
}

pub(crate) async fn summary(
    st: &AppState,
    c: crate::store::clusters::ClusterRow,
) -> Result<ClusterSummary, ApiError> {
    Ok(ClusterSummary {
        hosts: st
            .store
            .cluster_hosts(c.id)
            .await?
            .into_iter()
            .map(|h| h.name)
            .collect(),
        steps: st.store.step_counts(c.id).await?,
        name: c.name,
        phase: c.phase,
        message: c.message,
        generation: c.generation,
    })
}

/// A cluster's status. Its `ETag` names the content (elapsed times aside); a request with
/// `If-None-Match` and `?wait=SECS` is answered as soon as the status differs from it —
/// after the tick that changed it — or with `304 Not Modified` when the wait is over. This
/// is what `apply --wait` and `status --watch` follow instead of polling.
pub async fn status(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatusQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if q.show_outputs {
        // Outputs often hold secrets (join tokens, passwords): admins only, audited.
        caller.require(Role::Admin)?;
        cluster_row(&st, &name).await?;
        st.store
            .audit_read(&caller.actor(), "cluster.outputs.read", &name, None)
            .await?;
    }
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(q.wait.min(MAX_STATUS_WAIT_SECS));
    let mut read_took = Duration::ZERO;
    loop {
        let id = cluster_row(&st, &name).await?.id;
        // Subscribed before the status is read (the cluster row included), so a tick
        // between the read and the wait is not missed.
        let mut changes = st.engine.changes(id);
        let started = tokio::time::Instant::now();
        let (answer, tag) = if q.summary {
            // Read again after subscribing, like the full view.
            let v = summary(&st, cluster_row(&st, &name).await?).await?;
            let tag = etag_of(&v);
            (ApiJson(v).into_response(), tag)
        } else {
            let mut v = view(&st, &name, q.show_outputs).await?;
            let tag = etag(&mut v);
            (ApiJson(v).into_response(), tag)
        };
        read_took = read_took.max(started.elapsed());
        if q.wait == 0 || seen.as_deref() != Some(tag.as_str()) {
            return Ok(with_etag(answer, &tag));
        }
        tokio::select! {
            // The sender outlives every receiver (`Engine::changes`): this ends on a tick.
            _ = changes.changed() => {
                // A large cluster changes with every report: let the ticks of the next
                // moment coalesce, so reading its status costs at most ~10 % of a core
                // per watcher (a one-host cluster is read again within milliseconds).
                let pause = (read_took * 9).min(Duration::from_secs(1));
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), &tag));
            }
        }
    }
}

fn with_etag(mut resp: Response, tag: &str) -> Response {
    if let Ok(h) = HeaderValue::from_str(tag) {
        resp.headers_mut().insert(header::ETAG, h);
    }
    resp
}

/// A strong ETag over everything in the view but the elapsed times (which change every
/// second while a step runs).
fn etag(v: &mut ClusterView) -> String {
    let elapsed: Vec<Option<i64>> = v.steps.iter_mut().map(|s| s.elapsed_secs.take()).collect();
    let tag = etag_of(&*v);
    for (s, e) in v.steps.iter_mut().zip(elapsed) {
        s.elapsed_secs = e;
    }
    tag
}

/// A strong ETag over a value's JSON, hashed as it serializes: a large cluster's view is
/// tens of MB, and neither a copy of it nor a second buffer is made.
fn etag_of<T: serde::Serialize>(v: &T) -> String {
    struct Hasher(ring::digest::Context);
    impl std::io::Write for Hasher {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = std::io::BufWriter::with_capacity(
        64 << 10,
        Hasher(ring::digest::Context::new(&ring::digest::SHA256)),
    );
    let _ = serde_json::to_writer(&mut h, v);
    // The hasher never fails: flushing hands it the rest of the buffer.
    let _ = std::io::Write::flush(&mut h);
    let digest = h.into_parts().0 .0.finish();
    format!("\"{}\"", &hex::encode(digest.as_ref())[..32])
}

async fn cluster_row(
    st: &AppState,
    name: &str,
) -> Result<crate::store::clusters::ClusterRow, ApiError> {
    st.store.cluster(name).await?.ok_or_else(|| {
        ApiError::not_found(format!("no cluster `{name}`; see `berth get clusters`"))
    })
}

async fn view(st: &AppState, name: &str, show_outputs: bool) -> Result<ClusterView, ApiError> {
    let c = cluster_row(st, name).await?;
    // Decoded once per generation by the engine (a status is read every second by a
    // watcher or the console's grid).
    let spec = st.engine.spec(c.id).await?;
    let hosts = st.store.cluster_hosts(c.id).await?;
    let steps = st.store.steps(c.id).await?;
    let outputs = st.store.outputs(c.id).await?;
    let now = now_unix();
    Ok(ClusterView {
        name: c.name,
        phase: c.phase,
        message: c.message,
        generation: c.generation,
        hosts: hosts
            .into_iter()
            .map(|h| ClusterHostView {
                name: h.name,
                role: h.role,
                ip: h.ip,
                state: h.state,
            })
            .collect(),
        steps: steps
            .into_iter()
            .map(|s| StepView {
                id: s.id,
                host: s.host_name,
                kind: s.kind,
                state: s.state,
                attempt: s.attempt as u32,
                exit_code: s.exit_code.map(|c| c as i32),
                reason: s.reason,
                started_at: s.started_at.map(rfc3339),
                ended_at: s.ended_at.map(rfc3339),
                elapsed_secs: s.started_at.map(|a| s.ended_at.unwrap_or(now) - a),
                log_tail: s.log_tail,
            })
            .collect(),
        outputs: outputs
            .into_iter()
            .map(|(k, v)| (k, show_outputs.then_some(v)))
            .collect(),
        warnings: spec.map(|s| s.warnings.clone()).unwrap_or_default(),
    })
}

pub async fn retry(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<RetryResponse>, ApiError> {
    let n = st.engine.retry(&name, &caller.actor()).await?;
    Ok(ApiJson(RetryResponse {
        name,
        retried_steps: n,
    }))
}

/// `POST /v1/exec` (operator): a command on hosts through their agents.
pub async fn exec(
    State(st): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<ApiJson<berth_shared::api::ExecResponse>, ApiError> {
    let req: berth_shared::api::ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("exec request: {e}")))?;
    let steps = st.engine.exec(&req, &caller.actor()).await?;
    Ok(ApiJson(berth_shared::api::ExecResponse { steps }))
}

pub async fn rollback(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<RollbackResponse>, ApiError> {
    let n = st.engine.rollback(&name, &caller.actor()).await?;
    Ok(ApiJson(RollbackResponse { name, hosts: n }))
}

/// The body (`{"force": true}`) is optional.
pub async fn reset(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, ApiJson<ResetResponse>), ApiError> {
    let req: ResetRequest = if body.is_empty() {
        ResetRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let skipped = st
        .engine
        .reset(&name, req.force, st.host_grace, &caller.actor())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(ResetResponse { name, skipped }),
    ))
}

/// The most log bytes one `GET …/logs` answers with; the client asks again for more.
const LOG_PAGE: usize = 1 << 20;

pub async fn logs(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<ApiJson<LogChunk>, ApiError> {
    let c = st
        .store
        .cluster(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cluster `{name}`")))?;
    let steps = match q.id {
        Some(id) => st.store.step(id).await?.into_iter().collect(),
        None => st.store.steps(c.id).await?,
    };
    let step = steps
        .iter()
        .filter(|s| s.cluster_id == c.id)
        .filter(|s| s.host_name == q.host && q.step.as_ref().is_none_or(|k| s.kind.as_str() == k))
        .filter(|s| s.state != StepState::Pending)
        .max_by_key(|s| (s.ord, s.id))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no started step{} on host `{}` in cluster `{name}`",
                q.step
                    .as_deref()
                    .map(|k| format!(" `{k}`"))
                    .unwrap_or_default(),
                q.host
            ))
        })?;
    Ok(ApiJson(log_chunk(&st, step, q.from).await?))
}

/// One page of a step's log from byte `from` (of the current attempt), as `GET …/logs`
/// answers it; the console's log stream reads the same pages.
pub(crate) async fn log_chunk(
    st: &AppState,
    step: &crate::store::clusters::StepRow,
    from: u64,
) -> Result<LogChunk, ApiError> {
    // `from` counts the bytes the agent sent; past the stored part (the log cap) the rest
    // was dropped, and the reader gets one marker saying how much.
    let stored = step.log_stored as u64;
    let mut data = Vec::new();
    let mut next = from;
    if from < stored {
        for (off, bytes) in st
            .store
            .step_log_page(step.id, step.attempt, from, LOG_PAGE)
            .await?
        {
            if off > next {
                break;
            }
            let skip = (next - off) as usize;
            if skip < bytes.len() {
                data.extend_from_slice(&bytes[skip..]);
                next = off + bytes.len() as u64;
            }
        }
    }
    let len = step.log_len as u64;
    if next >= stored && len > next.max(stored) {
        let dropped = len - next.max(stored);
        data.extend_from_slice(
            format!("\n[… truncated {dropped} bytes: over the controller's per-step log cap]\n")
                .as_bytes(),
        );
        next = len;
    }
    // More is stored past this page (decided before a cut, so a page that ends in a cut
    // character never reads as "more" by itself: a reader asking again at once would get
    // the same page forever).
    let more = next < stored;
    // Cut at a UTF-8 boundary while the rest of the character can still come (with the
    // next page, or from the running step); a finished step's log that ends in a broken
    // character is sent as it is (lossily).
    if let Err(e) = std::str::from_utf8(&data) {
        if e.error_len().is_none() && (more || step.state.is_active()) {
            let cut = data.len() - e.valid_up_to();
            data.truncate(e.valid_up_to());
            next -= cut as u64;
        }
    }
    Ok(LogChunk {
        step_id: step.id,
        kind: step.kind,
        attempt: step.attempt as u32,
        state: step.state,
        more,
        next,
        data: String::from_utf8_lossy(&data).into_owned(),
        exit_code: step.exit_code.map(|c| c as i32),
        reason: step.reason.clone(),
    })
}

/// `berth add` / `berth delete`: edits the stored Clusterfile's hosts and applies it.
pub async fn edit_hosts(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(e): ApiJson<HostsEdit>,
) -> Result<ApiJson<ApplyResponse>, ApiError> {
    let c = st
        .store
        .cluster(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cluster `{name}`")))?;
    if let Some(m0) = st
        .store
        .cluster_hosts(c.id)
        .await?
        .into_iter()
        .find(|h| h.ord == 0 && h.state == "active")
    {
        // Checked before the edit too: removing the only master would otherwise fail as
        // "no hosts" before the planner could say what is wrong.
        if e.remove.iter().any(|r| r == &m0.name || r == &m0.ip) {
            return Err(EngineError::from(PlanError::Master0Removed {
                master0: m0.name,
                cluster: name,
            })
            .into());
        }
    }
    let text = berth_shared::clusterfile::edit_hosts(
        &c.clusterfile,
        &e.add_masters,
        &e.add_nodes,
        &e.remove,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let a = st
        .engine
        .apply(&text, Default::default(), &caller.actor())
        .await?;
    Ok(ApiJson(ApplyResponse {
        name: a.name,
        warnings: a.warnings,
        plan: None,
    }))
}
