//! Self-installing hosts: the install script and agent executables (open, like the CA:
//! the install line verifies both), and the operator calls that manage the executables.

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
use crate::blobs::IngestError;
use crate::install::{check_executable, check_platform, MAX_AGENT_BINARY, SCRIPT};
use crate::store::agent_binaries::AgentBinaryRow;
use crate::time::rfc3339;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_shared::api::{codes, AgentBinaryView};
use berth_shared::Digest;
use futures_util::TryStreamExt;
use tower::ServiceExt;

/// `GET /v1/install/agent.sh`.
pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/x-shellscript")], SCRIPT)
}

/// Waits (bounded) until the agent found next to the controller has been imported.
async fn bundled_ready(st: &AppState) {
    let mut ready = st.bundled_agent_ready.clone();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(120), ready.wait_for(|r| *r)).await;
}

async fn served(st: &AppState, os: &str, arch: &str) -> Result<(AgentBinaryRow, Digest), ApiError> {
    check_platform(os, arch).map_err(ApiError::bad_request)?;
    bundled_ready(st).await;
    let row = st.store.agent_binary(os, arch).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NO_AGENT_BINARY,
            format!("this controller serves no berth-agent for {os}/{arch}; add one with `berth agent-binary add FILE --arch {arch}`"),
        )
    })?;
    let digest: Digest = row
        .digest
        .parse()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored digest: {e}")))?;
    Ok((row, digest))
}

/// `GET /v1/install/berth-agent/{os}/{arch}`: the executable (supports `Range`).
pub async fn binary(
    State(st): State<AppState>,
    ApiPath((os, arch)): ApiPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let (_, digest) = served(&st, &os, &arch).await?;
    // Added through another controller: fetched from the bucket, checked, kept.
    if !st.agent_binaries.ensure(&digest).await? {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "berth-agent {digest} for {os}/{arch} is named in the database but on neither this controller's disk nor in the bucket"
        )));
    }
    let svc = tower_http::services::ServeFile::new(st.agent_binaries.local.path(&digest))
        .with_buf_chunk_size(256 * 1024);
    let resp = svc
        .oneshot(req)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serving the agent: {e}")))?;
    Ok(resp.map(Body::new).into_response())
}

/// `GET /v1/install/berth-agent/{os}/{arch}/sha256`: its hex digest and a newline.
pub async fn binary_sha256(
    State(st): State<AppState>,
    ApiPath((os, arch)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, digest) = served(&st, &os, &arch).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{}\n", digest.hex()),
    )
        .into_response())
}

fn view(r: AgentBinaryRow) -> Result<AgentBinaryView, ApiError> {
    Ok(AgentBinaryView {
        digest: r
            .digest
            .parse()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored digest: {e}")))?,
        os: r.os,
        arch: r.arch,
        size: r.size as u64,
        source: r.source,
        added_at: rfc3339(r.added_at),
    })
}

/// `GET /v1/agent-binaries` (viewer).
pub async fn list(State(st): State<AppState>) -> Result<ApiJson<Vec<AgentBinaryView>>, ApiError> {
    bundled_ready(&st).await;
    let rows = st.store.agent_binaries().await?;
    Ok(ApiJson(
        rows.into_iter().map(view).collect::<Result<_, _>>()?,
    ))
}

/// `PUT /v1/agent-binaries/{os}/{arch}` (admin): the body is the executable. It must be a
/// 64-bit ELF for that architecture; it replaces what was served for the pair.
pub async fn add(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((os, arch)): ApiPath<(String, String)>,
    body: Body,
) -> Result<(StatusCode, ApiJson<AgentBinaryView>), ApiError> {
    check_platform(&os, &arch).map_err(ApiError::bad_request)?;
    // An import still running must not replace what the operator adds now.
    bundled_ready(&st).await;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let received = st
        .agent_binaries
        .local
        .receive(Box::pin(stream), MAX_AGENT_BINARY)
        .await
        .map_err(|e| match e {
            IngestError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                berth_shared::api::codes::TOO_LARGE,
                format!("an agent executable may be at most {MAX_AGENT_BINARY} bytes"),
            ),
            IngestError::Io(e) => ApiError::Internal(e),
            other => ApiError::bad_request(other.to_string()),
        })?;
    let (file, a) = (received.path().to_path_buf(), arch.clone());
    tokio::task::spawn_blocking(move || check_executable(&file, &a))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, codes::ARCH_MISMATCH, e))?;
    let row = AgentBinaryRow {
        os,
        arch,
        digest: received.digest.to_string(),
        size: received.size as i64,
        source: "added".into(),
        added_at: crate::time::now_unix(),
    };
    let digest = received.digest;
    st.agent_binaries
        .local
        .commit(received)
        .map_err(ApiError::Internal)?;
    st.agent_binaries.publish([digest]).await?;
    st.store.set_agent_binary(&row, &caller.actor()).await?;
    tracing::info!(os = %row.os, arch = %row.arch, digest = %row.digest, "agent binary added");
    Ok((StatusCode::CREATED, ApiJson(view(row)?)))
}

/// `DELETE /v1/agent-binaries/{os}/{arch}` (admin).
pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((os, arch)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    bundled_ready(&st).await;
    let was_added = st
        .store
        .agent_binary(&os, &arch)
        .await?
        .is_some_and(|r| r.source == "added");
    if st
        .store
        .remove_agent_binary(&os, &arch, &caller.actor())
        .await?
    {
        // An added agent gone, the one built with this controller takes its place again
        // at once (as it would at the next start).
        if let (true, Some(path), "linux", true) = (
            was_added,
            st.bundled_agent.as_deref(),
            os.as_str(),
            arch == crate::install::this_arch(),
        ) {
            if let Err(e) =
                crate::install::import_bundled(&st.store, &st.agent_binaries, path).await
            {
                // The removal stands; the bundled agent is imported again at the next start.
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot serve the bundled berth-agent again"
                );
            }
        }
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no berth-agent is served for {os}/{arch}"
        )))
    }
}
