//! Clusters: apply, list, status, logs, retry, reset.

use super::auth::Caller;
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::engine::{EngineError, ResolvedSpec};
use crate::store::Role;
use crate::time::{now_unix, rfc3339};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use berth_shared::api::{codes, ClusterHostView, ClusterView, StepView};
use serde::{Deserialize, Serialize};

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_clusterfile", m)
            }
            EngineError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, codes::CONFLICT, m),
            EngineError::NotFound(m) => ApiError::not_found(m),
            EngineError::Internal(e) => ApiError::Internal(e),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct ApplyResponse {
    pub name: String,
    pub warnings: Vec<String>,
}

/// The body is the Clusterfile itself (YAML).
pub async fn apply(
    State(st): State<AppState>,
    caller: Caller,
    body: String,
) -> Result<ApiJson<ApplyResponse>, ApiError> {
    caller.require(Role::Operator)?;
    let a = st.engine.apply(&body, &caller.actor()).await?;
    Ok(ApiJson(ApplyResponse {
        name: a.name,
        warnings: a.warnings,
    }))
}

#[derive(Deserialize, Default)]
pub struct StatusQuery {
    #[serde(default)]
    pub show_outputs: bool,
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<ApiJson<Vec<ClusterView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut out = Vec::new();
    for c in st.store.clusters().await? {
        out.push(view(&st, &c.name, false).await?);
    }
    Ok(ApiJson(out))
}

pub async fn status(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Result<ApiJson<ClusterView>, ApiError> {
    caller.require(Role::Viewer)?;
    if q.show_outputs {
        // Outputs often hold secrets (join tokens, passwords).
        caller.require(Role::Admin)?;
    }
    Ok(ApiJson(view(&st, &name, q.show_outputs).await?))
}

async fn view(st: &AppState, name: &str, show_outputs: bool) -> Result<ClusterView, ApiError> {
    let c = st.store.cluster(name).await?.ok_or_else(|| {
        ApiError::not_found(format!("no cluster `{name}`; see `berth get clusters`"))
    })?;
    let spec: Option<ResolvedSpec> = serde_json::from_str(&c.spec).ok();
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
        warnings: spec.map(|s| s.warnings).unwrap_or_default(),
    })
}

pub async fn retry(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<ApiJson<serde_json::Value>, ApiError> {
    caller.require(Role::Operator)?;
    let n = st.engine.retry(&name, &caller.actor()).await?;
    Ok(ApiJson(
        serde_json::json!({ "name": name, "retried_steps": n }),
    ))
}

pub async fn reset(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    st.engine.reset(&name, &caller.actor()).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
pub struct LogQuery {
    pub host: String,
    /// Step kind (install, init, ...); default: the host's latest started step.
    pub step: Option<String>,
    #[serde(default)]
    pub from: u64,
}

#[derive(Serialize, Deserialize)]
pub struct LogChunk {
    pub step_id: i64,
    pub kind: String,
    pub attempt: u32,
    pub state: String,
    /// Offset to ask from next time.
    pub next: u64,
    pub data: String,
}

pub async fn logs(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<ApiJson<LogChunk>, ApiError> {
    caller.require(Role::Viewer)?;
    let c = st
        .store
        .cluster(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cluster `{name}`")))?;
    let steps = st.store.steps(c.id).await?;
    let step = steps
        .iter()
        .filter(|s| s.host_name == q.host && q.step.as_ref().is_none_or(|k| &s.kind == k))
        .filter(|s| s.state != "pending")
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
    let chunks = st.store.step_log(step.id, step.attempt, q.from).await?;
    let mut data = Vec::new();
    let mut next = q.from;
    for (off, bytes) in chunks {
        if off > next {
            break; // a gap: wait for the missing chunk
        }
        let skip = (next - off) as usize;
        if skip < bytes.len() {
            data.extend_from_slice(&bytes[skip..]);
            next = off + bytes.len() as u64;
        }
    }
    Ok(ApiJson(LogChunk {
        step_id: step.id,
        kind: step.kind.clone(),
        attempt: step.attempt as u32,
        state: step.state.clone(),
        next,
        data: String::from_utf8_lossy(&data).into_owned(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsEdit {
    #[serde(default)]
    pub add_masters: Vec<String>,
    #[serde(default)]
    pub add_nodes: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `berth add` / `berth delete`: edits the stored Clusterfile's hosts and applies it.
pub async fn edit_hosts(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(e): ApiJson<HostsEdit>,
) -> Result<ApiJson<ApplyResponse>, ApiError> {
    caller.require(Role::Operator)?;
    let c = st
        .store
        .cluster(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cluster `{name}`")))?;
    let text = berth_shared::clusterfile::edit_hosts(
        &c.clusterfile,
        &e.add_masters,
        &e.add_nodes,
        &e.remove,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let a = st.engine.apply(&text, &caller.actor()).await?;
    Ok(ApiJson(ApplyResponse {
        name: a.name,
        warnings: a.warnings,
    }))
}
