//! Names that would be bugs as bare strings: host names.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An agent's name: a DNS-style name, 1–63 characters of `a-z`, `0-9`, `-` and `.`,
/// starting and ending with a letter or digit. Used as the certificate subject and the
/// key hosts are listed and revoked by.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("host name `{name}` is not valid: {why}")]
pub struct HostNameError {
    pub name: String,
    pub why: &'static str,
}

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = HostNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| HostNameError {
            name: s.to_string(),
            why,
        };
        if s.is_empty() || s.len() > 63 {
            return Err(err("it must be 1 to 63 characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(err(
                "use only lowercase letters, digits, `-` and `.` (pass --name to choose one)",
            ));
        }
        let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = s.as_bytes();
        if !first_last_ok(bytes[0]) || !first_last_ok(bytes[bytes.len() - 1]) {
            return Err(err("it must start and end with a letter or digit"));
        }
        Ok(HostName(s.to_string()))
    }
}

impl TryFrom<String> for HostName {
    type Error = HostNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for HostName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A host name: lowercase letters, digits, `-` and `.`."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for HostName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_style_names() {
        for ok in ["a", "node-1", "db1.dc2", "0abc"] {
            assert_eq!(ok.parse::<HostName>().map(|h| h.to_string()), Ok(ok.into()));
        }
    }

    #[test]
    fn rejects_with_exact_errors() {
        assert_eq!(
            "".parse::<HostName>().unwrap_err().to_string(),
            "host name `` is not valid: it must be 1 to 63 characters long"
        );
        assert_eq!(
            "Node_1".parse::<HostName>().unwrap_err().to_string(),
            "host name `Node_1` is not valid: use only lowercase letters, digits, `-` and `.` (pass --name to choose one)"
        );
        assert_eq!(
            "-a".parse::<HostName>().unwrap_err().to_string(),
            "host name `-a` is not valid: it must start and end with a letter or digit"
        );
        assert!("a".repeat(64).parse::<HostName>().is_err());
        assert!("../x".parse::<HostName>().is_err());
    }
}
