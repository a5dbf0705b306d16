//! Operator calls: bootstrap tokens and hosts.

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::pki::{hash_secret, random_token};
use crate::store::Role;
use crate::time::{now_unix, rfc3339};
use axum::extract::State;
use axum::http::StatusCode;
use berth_shared::api::{AuditQuery, DeleteHostQuery};
use berth_shared::api::{CreateTokenRequest, CreateTokenResponse, HostEventView, HostView};
use berth_shared::token::{TOKEN_ID_LEN, TOKEN_SECRET_LEN};

const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
const MAX_USES: u32 = 10_000;

pub async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, ApiJson<CreateTokenResponse>), ApiError> {
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS} (365 days), got {}",
            req.ttl_secs
        )));
    }
    if req.uses == 0 || req.uses > MAX_USES {
        return Err(ApiError::bad_request(format!(
            "uses must be between 1 and {MAX_USES}, got {}",
            req.uses
        )));
    }
    if let Some(d) = &req.description {
        berth_shared::text::check_label("description", d, 0, 256).map_err(ApiError::bad_request)?;
    }
    if req.reenroll.is_some() && req.uses != 1 {
        return Err(ApiError::bad_request(
            "a re-enrollment token is for one host: uses must be 1",
        ));
    }
    let id = random_token(TOKEN_ID_LEN);
    let secret = random_token(TOKEN_SECRET_LEN);
    let expires_at = now_unix() + req.ttl_secs as i64;
    st.store
        .create_bootstrap_token(
            crate::store::hosts::NewToken {
                id: &id,
                secret_hash: &hash_secret(&secret),
                uses: req.uses,
                expires_at,
                description: req.description.as_deref(),
                reenroll_host: req.reenroll.as_ref().map(|h| h.as_str()),
            },
            &caller.actor(),
        )
        .await?;
    let token = format!("{id}.{secret}");
    let ca_hash = st.pki.ca_hash();
    let reenroll = match &req.reenroll {
        Some(h) => format!(" --reenroll --name {h}"),
        None => String::new(),
    };
    let join_command = format!(
        "berth-agent join --controller {} --token {token} --ca-hash {ca_hash}{reenroll}",
        st.advertise_url
    );
    let install_command = crate::install::one_liner(
        &st.advertise_url,
        &token,
        &ca_hash,
        &st.pki.ca_pem,
        req.reenroll.as_ref(),
    );
    Ok((
        StatusCode::CREATED,
        ApiJson(CreateTokenResponse {
            id,
            token,
            expires_at: rfc3339(expires_at),
            uses: req.uses,
            controller: st.advertise_url.clone(),
            ca_hash,
            join_command,
            install_command,
            reenroll: req.reenroll,
        }),
    ))
}

/// A host's state as `get hosts` and `/metrics` say it (`Ready` when seen within
/// `--host-grace`, `NotReady`, `Revoked`); `last_seen` is brought up to the newest
/// heartbeat not yet flushed to the store.
fn host_state(st: &AppState, h: &mut crate::store::HostRow, now: i64) -> &'static str {
    if let Some(t) = st.heartbeats.latest(h.id) {
        h.last_seen = h.last_seen.max(t);
    }
    if h.revoked {
        "Revoked"
    } else if now - h.last_seen <= st.host_grace.as_secs() as i64 {
        "Ready"
    } else {
        "NotReady"
    }
}

pub async fn list_hosts(State(st): State<AppState>) -> Result<ApiJson<Vec<HostView>>, ApiError> {
    Ok(ApiJson(host_views(&st).await?))
}

/// Every host as `get hosts` shows it (the console's hosts page too).
pub(crate) async fn host_views(st: &AppState) -> Result<Vec<HostView>, ApiError> {
    let now = now_unix();
    let hosts = st.store.hosts().await?;
    let mut events: std::collections::HashMap<i64, Vec<HostEventView>> = Default::default();
    for e in st.store.host_events().await? {
        events.entry(e.host_id).or_default().push(HostEventView {
            kind: e.kind,
            count: e.count.max(0) as u64,
            first_at: rfc3339(e.first_at),
            last_at: rfc3339(e.last_at),
            last_secs_ago: (now - e.last_at).max(0) as u64,
            message: e.message,
        });
    }
    Ok(hosts
        .into_iter()
        .map(|mut h| {
            let state = host_state(st, &mut h, now);
            let ago = (now - h.last_seen).max(0);
            HostView {
                name: h.name,
                state: state.into(),
                addresses: h.facts.addresses.clone(),
                arch: h.facts.arch.clone(),
                agent_version: h.facts.agent_version.clone(),
                last_seen: rfc3339(h.last_seen),
                last_seen_secs_ago: ago as u64,
                enrolled_at: rfc3339(h.enrolled_at),
                cert_expires_at: h.cert_not_after.map(rfc3339),
                events: events.remove(&h.id).unwrap_or_default(),
                facts: h.facts,
            }
        })
        .collect())
}

pub async fn revoke_host(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if st.store.revoke_host(&name, &caller.actor()).await? {
        tracing::info!(host = %name, "host revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no host named `{name}`")))
    }
}

pub async fn delete_host(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteHostQuery>,
) -> Result<ApiJson<berth_shared::api::HostDeleted>, ApiError> {
    let removed_from = st
        .engine
        .delete_host(&name, q.force, &caller.actor())
        .await?;
    tracing::info!(host = %name, cluster = ?removed_from, "host deleted");
    Ok(ApiJson(berth_shared::api::HostDeleted {
        name,
        removed_from,
    }))
}

/// `POST /v1/api-tokens` (admin): a new bearer token with a role.
pub async fn create_api_token(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<berth_shared::api::CreateApiTokenRequest>,
) -> Result<
    (
        StatusCode,
        ApiJson<berth_shared::api::CreateApiTokenResponse>,
    ),
    ApiError,
> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role `{}` is not one of admin, operator, viewer",
            req.role
        ))
    })?;
    berth_shared::text::check_label("name", &req.name, 1, 64).map_err(ApiError::bad_request)?;
    let id = random_token(8);
    let token = format!("berth_{}_{}", role.as_str(), random_token(32));
    st.store
        .create_api_token(&id, &req.name, role, &hash_secret(&token), &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(berth_shared::api::CreateApiTokenResponse {
            id,
            name: req.name,
            role: role.as_str().into(),
            token,
        }),
    ))
}

/// `GET /metrics` (viewer): the controller's Prometheus metrics, OpenMetrics text.
pub async fn metrics(State(st): State<AppState>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let held = st
        .max_polls
        .saturating_sub(st.poll_slots.available_permits()) as i64;
    // Hosts by state and the earliest agent certificate expiry, as `get hosts` says them.
    let now = now_unix();
    let (mut ready, mut not_ready, mut revoked, mut earliest) = (0, 0, 0, None::<i64>);
    for mut h in st.store.hosts().await? {
        match host_state(&st, &mut h, now) {
            "Revoked" => {
                revoked += 1;
                continue;
            }
            "Ready" => ready += 1,
            _ => not_ready += 1,
        }
        if let Some(t) = h.cert_not_after {
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    let scraped = crate::metrics::Scraped {
        polls_held: held,
        hosts: vec![
            ("Ready", ready),
            ("NotReady", not_ready),
            ("Revoked", revoked),
        ],
        earliest_agent_cert_expiry: earliest,
        server_cert_expiry: Some(st.pki.server.not_after()),
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(&scraped),
    )
        .into_response())
}

/// `GET /v1/audit` (admin): the newest audit rows.
pub async fn audit(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<ApiJson<Vec<berth_shared::api::AuditEntryView>>, ApiError> {
    if q.limit == 0 || q.limit > 10_000 {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 10000, got {}",
            q.limit
        )));
    }
    let rows = st.store.audit_entries(q.limit).await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(|r| berth_shared::api::AuditEntryView {
                at: rfc3339(r.at),
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    ))
}

/// `GET /v1/controllers` (viewer): the controllers serving this database, live ones
/// first, with the clusters each one holds.
pub async fn controllers(
    State(st): State<AppState>,
) -> Result<ApiJson<Vec<berth_shared::api::ControllerView>>, ApiError> {
    let ttl_ms = st.engine.leases.ttl().as_millis() as i64;
    let me = st.store.member_id().to_string();
    let rows = st.store.controllers(ttl_ms).await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(|r| berth_shared::api::ControllerView {
                this: r.id == me,
                id: r.id,
                name: r.name,
                url: r.url,
                version: r.version,
                ca_hash: r.ca_hash,
                started_at: rfc3339(r.started_ms / 1000),
                seen_at: rfc3339(r.seen_ms / 1000),
                live: r.live,
                clusters: r.clusters,
            })
            .collect(),
    ))
}
