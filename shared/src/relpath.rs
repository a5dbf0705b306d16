//! `SafeRelPath`: a relative path that cannot climb out of the directory it is joined to.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A normalised relative path: `/`-separated, no empty, `.` or `..` components, not
/// absolute, no NUL. `./a//b` normalises to `a/b`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SafeRelPath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelPathError {
    #[error("`{0}` is an absolute path; only paths relative to the bundle root are allowed")]
    Absolute(String),
    #[error("`{0}` contains `..`; paths may not leave the bundle root")]
    ParentDir(String),
    #[error("path is empty")]
    Empty,
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
}

impl SafeRelPath {
    pub fn new(s: &str) -> Result<SafeRelPath, RelPathError> {
        if s.contains('\0') {
            return Err(RelPathError::Nul(s.replace('\0', "\\0")));
        }
        if s.starts_with('/') {
            return Err(RelPathError::Absolute(s.to_string()));
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => continue,
                ".." => return Err(RelPathError::ParentDir(s.to_string())),
                c => parts.push(c),
            }
        }
        if parts.is_empty() {
            return Err(RelPathError::Empty);
        }
        Ok(SafeRelPath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent path, `None` for a top-level name.
    pub fn parent(&self) -> Option<SafeRelPath> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| SafeRelPath(p.to_string()))
    }
}

impl TryFrom<String> for SafeRelPath {
    type Error = RelPathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SafeRelPath::new(&s)
    }
}

impl From<SafeRelPath> for String {
    fn from(p: SafeRelPath) -> String {
        p.0
    }
}

impl fmt::Display for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SafeRelPath {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A relative path without `..`, inside the bundle or rootfs.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SafeRelPath {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(SafeRelPath::new("./a//b/").unwrap().as_str(), "a/b");
        assert_eq!(
            SafeRelPath::new("a/b").unwrap().parent().unwrap().as_str(),
            "a"
        );
        assert_eq!(
            SafeRelPath::new("/etc/passwd").unwrap_err().to_string(),
            "`/etc/passwd` is an absolute path; only paths relative to the bundle root are allowed"
        );
        assert_eq!(
            SafeRelPath::new("a/../../b").unwrap_err().to_string(),
            "`a/../../b` contains `..`; paths may not leave the bundle root"
        );
        assert_eq!(SafeRelPath::new("./"), Err(RelPathError::Empty));
    }
}
