//! How users name a stored bundle: `name:tag` or `sha256:<hex>`, written the way container
//! image names are: a name may start with a registry host and port
//! (`sealos.hub:5000/pause:3.6`, `docker.io/labring/calico:v3.24.1`), and a name without a
//! tag means `:latest`.

use crate::Digest;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRef {
    Digest(Digest),
    Tag { name: String, tag: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a bundle reference; use [registry[:port]/]name[:tag] (name of a-z 0-9 - _ . /, tag of A-Z a-z 0-9 - _ .; no tag means latest) or sha256:<64 hex>")]
pub struct BundleRefError(pub String);

/// A name: path components of `a-z 0-9 - _ .`, separated by `/`, the first of which may be
/// a registry host with a port (`localhost:5000`, `sealos.hub:5000`, `docker.io`).
pub fn valid_name(n: &str) -> bool {
    if n.is_empty() || n.len() > 128 || n.starts_with('/') || n.ends_with('/') || n.contains("//") {
        return false;
    }
    let mut parts = n.split('/').peekable();
    let first = parts.next().unwrap_or("");
    let is_registry = parts.peek().is_some()
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let path_ok = |c: &str| {
        c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    };
    (if is_registry {
        valid_registry(first)
    } else {
        path_ok(first)
    }) && parts.all(path_ok)
}

/// `host[:port]`: a DNS name or address of `a-z 0-9 - .`, and a port of 1 to 5 digits.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && !host.ends_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The name and tag of `s`: the tag follows the last `:` after the last `/` (a `:` before
/// it is a registry's port), `latest` when there is none.
fn split_tag(s: &str) -> (&str, &str) {
    let last = s.rfind('/').map_or(0, |i| i + 1);
    match s[last..].rfind(':') {
        Some(i) => (&s[..last + i], &s[last + i + 1..]),
        None => (s, "latest"),
    }
}

/// `[registry[:port]/]name[:tag][@digest]` split into the registry host (when the first
/// component is one: it has a `.` or a `:`, or is `localhost`), the name below it, and the
/// tag (`latest` when there is none). Nothing is validated.
pub fn split_reference(s: &str) -> (Option<&str>, &str, &str) {
    let s = s.split('@').next().unwrap_or(s);
    let (name, tag) = split_tag(s);
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest, tag)
        }
        _ => (None, name, tag),
    }
}

/// A name as sealos users write it: what docker and buildah record as
/// `docker.io/labring/calico` (or `docker.io/library/x`, `localhost/x` for a local build)
/// is written `labring/calico` (`x`). Other names are returned as they are.
pub fn short_name(name: &str) -> &str {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    let n = n.strip_prefix("library/").unwrap_or(n);
    n.strip_prefix("localhost/").unwrap_or(n)
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
        let (name, tag) = split_tag(s);
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
        // Written as sealos users write image names.
        for (s, name, tag) in [
            ("labring/helm", "labring/helm", "latest"),
            ("sealos.hub:5000/pause:3.6", "sealos.hub:5000/pause", "3.6"),
            (
                "localhost:5000/labring/helm:v3.8.2",
                "localhost:5000/labring/helm",
                "v3.8.2",
            ),
            (
                "localhost:5000/labring/helm",
                "localhost:5000/labring/helm",
                "latest",
            ),
            (
                "docker.io/labring/calico:v3.24.1",
                "docker.io/labring/calico",
                "v3.24.1",
            ),
            ("etcd", "etcd", "latest"),
        ] {
            assert_eq!(
                s.parse::<BundleRef>(),
                Ok(BundleRef::Tag {
                    name: name.into(),
                    tag: tag.into()
                }),
                "{s}"
            );
        }
        for bad in [
            "Etcd:v1",
            "host:port/x:v1",
            "-bad.host:5000/x:v1",
            "reg.io:123456/x:v1",
            "reg.io:/x:v1",
            "a:b:c",
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
