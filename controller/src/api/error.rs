//! The one error type of the HTTP layer. Client errors carry their message and a stable
//! code; server errors log the cause and return a generic body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_shared::api::{codes, ErrorBody};

#[derive(Debug)]
pub enum ApiError {
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        /// For a refused report batch: the entry refused.
        entry: Option<usize>,
    },
    Overloaded {
        retry_after_secs: u64,
    },
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            entry: None,
        }
    }
    /// Names the refused entry of a report batch.
    pub fn with_entry(self, i: usize) -> Self {
        match self {
            ApiError::Client {
                status,
                code,
                message,
                ..
            } => ApiError::Client {
                status,
                code,
                message,
                entry: Some(i),
            },
            e => e,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::Invalid { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            E::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            E::Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            E::NotFound { code, message } => ApiError::new(StatusCode::NOT_FOUND, code, message),
            E::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(crate::engine::EngineError::from(e))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl ApiError {
    /// A request body over [`super::MAX_JSON_BODY`].
    pub fn body_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            berth_shared::api::codes::TOO_LARGE,
            format!(
                "the request body is larger than {} bytes (1 MiB), the most this API accepts",
                super::MAX_JSON_BODY
            ),
        )
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::body_too_large();
        }
        ApiError::new(
            e.status(),
            codes::BAD_REQUEST,
            format!("invalid JSON body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                code,
                message,
                entry,
            } => (
                status,
                Json(ErrorBody {
                    code: code.into(),
                    message,
                    entry,
                }),
            )
                .into_response(),
            ApiError::Overloaded { retry_after_secs } => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ErrorBody {
                        code: codes::OVERLOADED.into(),
                        message: format!("controller is busy; retry in {retry_after_secs} s"),
                        entry: None,
                    }),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(ErrorBody {
                        code: codes::INTERNAL.into(),
                        message: "internal error; see the controller's log".into(),
                        entry: None,
                    }),
                )
                    .into_response()
            }
        }
    }
}

/// `Json` whose rejections become `ApiError`s.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Path` whose rejections become `ApiError`s (400 `bad_request`, JSON like every other
/// refusal).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query` whose rejections become `ApiError`s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", e.body_text()))
    }
}
