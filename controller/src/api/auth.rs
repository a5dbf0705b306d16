//! Who is calling: bearer-token principals for the API, client certificates for agents.

use super::error::ApiError;
use super::AppState;
use crate::pki::hash_secret;
use crate::store::{ApiPrincipal, HostRow, Role};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use berth_shared::api::codes;

/// The client certificate presented in the TLS handshake, if any (already verified to
/// chain to the CA). Inserted into every request's extensions by the server's accept loop.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<std::sync::Arc<PresentedCert>>);

/// What the controller uses of a client certificate, read once per connection.
#[derive(Debug, Clone)]
pub struct PresentedCert {
    /// sha256 of the DER, hex: how a host is found.
    pub fingerprint: String,
    /// Unix seconds; 0 when unreadable (then the certificate counts as expired).
    pub not_before: i64,
    pub not_after: i64,
    /// The subject CN: the host name the controller signed it for.
    pub name: Option<String>,
}

impl PresentedCert {
    pub fn of(der: &[u8]) -> PresentedCert {
        let leaf = berth_shared::cert::Leaf::of_der(der).ok();
        PresentedCert {
            fingerprint: berth_shared::Digest::of(der).hex(),
            not_before: leaf.as_ref().map_or(0, |l| l.validity.not_before),
            not_after: leaf.as_ref().map_or(0, |l| l.validity.not_after),
            name: leaf.and_then(|l| l.common_name),
        }
    }
}

/// An API caller, authenticated by `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Caller(pub ApiPrincipal);

/// The route table's role check (`api::Table`): authenticates the bearer token, refuses a
/// role below the route's with 403, and leaves the caller in the request for its handler.
pub async fn require_role(
    axum::extract::State((state, role)): axum::extract::State<(AppState, Role)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::authenticate(&parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require(role) {
        return e.into_response();
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

impl Caller {
    /// Fails with 403 unless the caller's role is at least `min`.
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.0.role <= min {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                format!(
                    "token `{}` has role {}; this needs {} or higher",
                    self.0.name,
                    self.0.role.as_str(),
                    min.as_str()
                ),
            ))
        }
    }
    pub fn actor(&self) -> String {
        format!("api-token:{}", self.0.token_id)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Checked already by the route's role (`require_role`).
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        Caller::authenticate(parts, state).await
    }
}

impl Caller {
    async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    codes::UNAUTHENTICATED,
                    "missing `Authorization: Bearer <token>` header",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    codes::UNAUTHENTICATED,
                    "Authorization header must be `Bearer <token>`",
                )
            })?;
        match state.store.api_principal(&hash_secret(token)).await? {
            Some(p) => Ok(Caller(p)),
            None => Err(ApiError::unauthenticated(
                codes::UNAUTHENTICATED,
                "API token is unknown or revoked",
            )),
        }
    }
}

/// An enrolled, non-revoked agent, identified by its client certificate (whose sha256
/// is the second field).
pub struct AgentHost(pub HostRow, pub String);

impl FromRequestParts<AppState> for AgentHost {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .extensions
            .get::<PeerCert>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    codes::CLIENT_CERT_REQUIRED,
                    "agent calls need the client certificate issued at enrollment (mutual TLS)",
                )
            })?;
        // The handshake checked the validity; a kept-alive connection can outlive it.
        if presented.not_after <= crate::time::now_unix() {
            return Err(ApiError::unauthenticated(
                codes::CERTIFICATE_EXPIRED,
                format!(
                    "this client certificate expired at {}; re-enroll the host (`berth token create --reenroll NAME`, then `berth-agent join --reenroll`)",
                    crate::time::rfc3339(presented.not_after)
                ),
            ));
        }
        let fingerprint = presented.fingerprint.clone();
        let found = match state.store.host_by_fingerprint(&fingerprint).await? {
            Some(h) => Some(h),
            // Unknown, but signed by this CA for a host: a certificate issued after the one
            // on record is one this controller issued before a restore from an older backup.
            None => match &presented.name {
                Some(name) => {
                    let rebound = state
                        .store
                        .rebind_newer_cert(
                            name,
                            &fingerprint,
                            (presented.not_before, presented.not_after),
                        )
                        .await?;
                    if rebound.is_some() {
                        tracing::warn!(host = %name, "accepted a newer certificate than the one on record (controller restored from an older backup)");
                    }
                    rebound
                }
                None => None,
            },
        };
        match found {
            None => Err(ApiError::unauthenticated(
                codes::HOST_UNKNOWN,
                "this client certificate belongs to no enrolled host (was the host deleted?); join again with a new token",
            )),
            Some(h) if h.revoked => Err(ApiError::unauthenticated(
                codes::HOST_REVOKED,
                format!("host `{}` has been revoked; delete it and join again to re-enroll", h.name),
            )),
            Some(h) => {
                if h.has_previous_cert && !h.via_previous_cert {
                    // The host switched to its renewed certificate: retire the old one.
                    state.store.forget_previous_cert(h.id, &fingerprint).await?;
                }
                Ok(AgentHost(h, fingerprint))
            }
        }
    }
}
