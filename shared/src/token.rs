//! Bootstrap tokens (`ID.SECRET`, kubeadm style): what an agent presents once to enroll.

use std::fmt;
use std::str::FromStr;

/// A bootstrap token: a 6-character public id and a 16-character secret, both `[a-z0-9]`.
/// The controller stores only a hash of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

pub const TOKEN_ID_LEN: usize = 6;
pub const TOKEN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bootstrap token is malformed: expected ID.SECRET with a 6-character id and a 16-character secret of a-z and 0-9, as printed by `berth token create`")]
pub struct TokenFormatError;

impl FromStr for BootstrapToken {
    type Err = TokenFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = s.split_once('.').ok_or(TokenFormatError)?;
        let ok = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !ok(id, TOKEN_ID_LEN) || !ok(secret, TOKEN_SECRET_LEN) {
            return Err(TokenFormatError);
        }
        Ok(BootstrapToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "BootstrapToken({}.****)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_secret_in_debug() {
        let t: BootstrapToken = "abc123.0123456789abcdef".parse().unwrap();
        assert_eq!(t.id, "abc123");
        assert_eq!(format!("{t:?}"), "BootstrapToken(abc123.****)");
        assert_eq!(t.to_string(), "abc123.0123456789abcdef");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "abc123",
            "abc12.0123456789abcdef",
            "abc123.0123456789ABCDEF",
            "abc123.0123456789abcde",
            "abc123.0123456789abcdef.x",
        ] {
            assert_eq!(
                bad.parse::<BootstrapToken>(),
                Err(TokenFormatError),
                "{bad}"
            );
        }
    }
}
