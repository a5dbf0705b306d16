//! The store's typed error: what the API layer maps to 404, 409 or 500.

/// A store call that did not happen, and why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the call is about does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The row is not in a state that allows the change (409).
    #[error("{0}")]
    Conflict(String),
    /// The database failed (500, logged).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else unexpected (500, logged), e.g. a stored value that does not decode.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Other(e.into())
    }
}
