//! How users name a stored bundle: `name:tag` or `sha256:<hex>`.

use crate::Digest;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRef {
    Digest(Digest),
    Tag { name: String, tag: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a bundle reference; use name:tag (name of a-z 0-9 - _ . /, tag of A-Z a-z 0-9 - _ .) or sha256:<64 hex>")]
pub struct BundleRefError(pub String);

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b))
        && !n.starts_with('/')
        && !n.ends_with('/')
        && !n.contains("//")
        && !n.split('/').any(|c| c == "." || c == "..")
}

pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl FromStr for BundleRef {
    type Err = BundleRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sha256:") {
            return s
                .parse()
                .map(BundleRef::Digest)
                .map_err(|_| BundleRefError(s.into()));
        }
        let (name, tag) = s.rsplit_once(':').ok_or_else(|| BundleRefError(s.into()))?;
        if !valid_name(name) || !valid_tag(tag) {
            return Err(BundleRefError(s.into()));
        }
        Ok(BundleRef::Tag {
            name: name.into(),
            tag: tag.into(),
        })
    }
}

impl fmt::Display for BundleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleRef::Digest(d) => write!(f, "{d}"),
            BundleRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_and_digests() {
        assert_eq!(
            "labring/etcd:v3.4".parse::<BundleRef>(),
            Ok(BundleRef::Tag {
                name: "labring/etcd".into(),
                tag: "v3.4".into()
            })
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<BundleRef>(), Ok(BundleRef::Digest(_))));
        for bad in [
            "etcd",
            "Etcd:v1",
            "etcd:",
            ":v1",
            "../x:v1",
            "a//b:v1",
            "sha256:zz",
            "etcd:v 1",
        ] {
            assert_eq!(
                bad.parse::<BundleRef>(),
                Err(BundleRefError(bad.into())),
                "{bad}"
            );
        }
    }
}
