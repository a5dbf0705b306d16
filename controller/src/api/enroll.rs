//! Enrollment: the CA for pinning, and CSR signing against a bootstrap token.

use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::pki::hash_secret;
use crate::store::hosts::Enrolled;
use crate::store::{EnrollError, NewHost};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use berth_shared::api::{codes, EnrollRequest, EnrollResponse, Health};
use berth_shared::BootstrapToken;

pub async fn healthz(State(st): State<AppState>) -> ApiJson<Health> {
    ApiJson(Health {
        status: "ok".into(),
        version: berth_shared::VERSION.into(),
        ca_hash: st.pki.ca_hash(),
    })
}

/// The CA certificate, PEM. Agents fetch it before they trust anything and compare its
/// sha256 with the `--ca-hash` they were given.
pub async fn ca(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        st.pki.ca_pem.clone(),
    )
}

pub async fn enroll(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<ApiJson<EnrollResponse>, ApiError> {
    let token: BootstrapToken = req.token.parse().map_err(|e| {
        st.metrics.enrolled(false);
        ApiError::unauthenticated(codes::TOKEN_INVALID, format!("{e}"))
    })?;
    let secret_hash = hash_secret(&token.secret);
    // The token is judged before anything of the request is parsed or signed: without a
    // valid token a caller learns nothing about CSR handling. `enroll` below checks it
    // again in its transaction and consumes the use only when the host is recorded.
    if let Err(e) = st
        .store
        .check_bootstrap_token(&token.id, &secret_hash)
        .await
    {
        tracing::warn!(host = %req.name, token = %token.id, error = %e, "enrollment refused");
        st.metrics.enrolled(false);
        return Err(enroll_error(e));
    }
    let cert = st
        .pki
        .sign_agent_csr(&req.csr_pem, &req.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let result = st
        .store
        .enroll(NewHost {
            name: req.name.as_str(),
            token_id: &token.id,
            token_secret_hash: &secret_hash,
            cert_fingerprint: &cert.fingerprint,
            cert_serial: &cert.serial,
            cert_not_before: cert.not_before,
            cert_not_after: cert.not_after,
            facts: &req.facts,
            reenroll: req.reenroll,
        })
        .await;
    st.metrics.enrolled(result.is_ok());
    match result {
        Ok(outcome) => {
            match outcome {
                Enrolled::New(_) => {
                    tracing::info!(host = %req.name, token = %token.id, "host enrolled")
                }
                Enrolled::Reenrolled(_) => {
                    tracing::info!(host = %req.name, token = %token.id, "host re-enrolled: new key and certificate, the old ones are refused")
                }
            }
            Ok(ApiJson(EnrollResponse {
                name: req.name,
                certificate_pem: cert.pem,
                ca_pem: st.pki.ca_pem.clone(),
                plan_public_key: st.pki.plan_public_key_hex(),
                plan_key_id: st.pki.plan_key_id(),
            }))
        }
        Err(e) => {
            tracing::warn!(host = %req.name, token = %token.id, error = %e, "enrollment refused");
            Err(enroll_error(e))
        }
    }
}

/// The API answer for a refused enrollment (401 with the token's code, 409, or 500).
fn enroll_error(e: EnrollError) -> ApiError {
    match e {
        EnrollError::TokenInvalid => ApiError::unauthenticated(codes::TOKEN_INVALID, e.to_string()),
        EnrollError::TokenExpired { .. } => {
            ApiError::unauthenticated(codes::TOKEN_EXPIRED, e.to_string())
        }
        EnrollError::TokenExhausted { .. } => {
            ApiError::unauthenticated(codes::TOKEN_EXHAUSTED, e.to_string())
        }
        EnrollError::HostExists { .. } => {
            ApiError::new(StatusCode::CONFLICT, codes::HOST_EXISTS, e.to_string())
        }
        EnrollError::ReenrollNotAllowed(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            codes::REENROLL_NOT_ALLOWED,
            e.to_string(),
        ),
        EnrollError::HostUnknown { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, codes::HOST_UNKNOWN, e.to_string())
        }
        EnrollError::HostRevoked { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, codes::HOST_REVOKED, e.to_string())
        }
        EnrollError::Db(db) => ApiError::from(db),
    }
}
