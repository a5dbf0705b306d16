//! Who is calling: bearer-token principals for the API, client certificates for agents.

use super::error::ApiError;
use super::AppState;
use crate::pki::hash_secret;
use crate::store::{ApiPrincipal, HostRow, Role};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use berth_shared::api::codes;

/// The sha256 (hex) of the client certificate presented in the TLS handshake, if any.
/// Inserted into every request's extensions by the server's accept loop.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<String>);

/// An API caller, authenticated by `Authorization: Bearer <token>`.
pub struct Caller(pub ApiPrincipal);

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
        let fingerprint = parts
            .extensions
            .get::<PeerCert>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    codes::CLIENT_CERT_REQUIRED,
                    "agent calls need the client certificate issued at enrollment (mutual TLS)",
                )
            })?;
        match state.store.host_by_fingerprint(&fingerprint).await? {
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
                    state.store.forget_previous_cert(h.id).await?;
                }
                Ok(AgentHost(h, fingerprint))
            }
        }
    }
}
