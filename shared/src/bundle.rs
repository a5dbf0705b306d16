//! The bundle manifest (`bundle.yaml`) and its validation.

use crate::relpath::SafeRelPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub const API_VERSION: &str = "berth.dev/v1";
pub const KIND: &str = "Bundle";
pub const MANIFEST_FILE: &str = "bundle.yaml";
/// The default timeout of a hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// bundle.yaml may not be larger than this.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BundleType {
    Rootfs,
    Patch,
    App,
}

/// Every hook a bundle may declare, in the order the phases run them (docs/bundles.md).
pub const HOOKS: [&str; 10] = [
    "check",
    "install",
    "init",
    "join-master",
    "join-node",
    "leave",
    "remove",
    "upgrade",
    "rollback",
    "clean",
];

/// `bundle.yaml` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawManifest {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub bundle_type: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub hooks: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: BTreeMap<String, String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// sealos-style shell commands (an imported image's `Entrypoint` and `Cmd`), instead of
    /// `cmd`: each `$(VAR)`-expanded from the env and run by `bash -c` in the bundle's
    /// directory, one after the other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default)]
    pub rerunnable: Vec<String>,
    /// Keep setuid/setgid bits when unpacking (default: strip them).
    #[serde(default)]
    pub allow_setuid: bool,
    /// Which hooks may publish outputs, and which names (default: none publishes any).
    #[serde(default)]
    pub outputs: Option<BTreeMap<String, Vec<String>>>,
    /// The CPU architecture the bundle is built for (`x86_64`, `aarch64`; `amd64` and
    /// `arm64` as sealos writes them); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// An architecture as the agents report it (Rust's and `uname -m`'s names): `amd64` is
/// `x86_64`, `arm64` is `aarch64`; other names are taken as written when they are short
/// lowercase words.
pub fn normalize_arch(a: &str) -> Option<String> {
    let a = a.trim();
    match a {
        "amd64" | "x86_64" => Some("x86_64".into()),
        "arm64" | "aarch64" => Some("aarch64".into()),
        _ if !a.is_empty()
            && a.len() <= 16
            && a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            Some(a.to_string())
        }
        _ => None,
    }
}

/// A validated manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub bundle_type: BundleType,
    pub env: BTreeMap<String, String>,
    pub hooks: BTreeMap<String, SafeRelPath>,
    /// Per-hook timeouts in seconds.
    pub timeouts: BTreeMap<String, u64>,
    pub cmd: Vec<String>,
    /// sealos-style shell commands run instead of `cmd` (see [`RawManifest::commands`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    pub rerunnable: Vec<String>,
    pub allow_setuid: bool,
    /// Hooks that may publish outputs → the names each may publish: an allow-list. Without
    /// `outputs:` in bundle.yaml no hook publishes any. (Manifests stored before outputs
    /// were an allow-list may hold `null`, "any name": read as none.)
    #[serde(default, deserialize_with = "declared_outputs")]
    pub outputs: BTreeMap<String, Vec<String>>,
    /// The architecture it is built for (normalized); None: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

fn declared_outputs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    let m: BTreeMap<String, Option<Vec<String>>> = Deserialize::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(hook, keys)| (hook, keys.unwrap_or_default()))
        .collect())
}

/// What is wrong with a manifest: the file, the field, and what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bundle.yaml: {field}: {message}")]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        message: message.into(),
    }
}

impl Manifest {
    /// Parses and validates `bundle.yaml`. `exists(path)` tells whether a regular file is at
    /// that path inside the bundle (hooks must point at one).
    pub fn parse(
        yaml: &str,
        exists: impl Fn(&SafeRelPath) -> bool,
    ) -> Result<Manifest, ManifestError> {
        if yaml.len() > MAX_MANIFEST_BYTES {
            return Err(err(
                "(file)",
                format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let raw: RawManifest =
            serde_norway::from_str(yaml).map_err(|e| err("(document)", e.to_string()))?;
        raw.validate(exists)
    }
}

impl RawManifest {
    pub fn validate(
        self,
        exists: impl Fn(&SafeRelPath) -> bool,
    ) -> Result<Manifest, ManifestError> {
        if self.api_version != API_VERSION {
            return Err(err(
                "apiVersion",
                format!(
                    "`{}` is not supported; use `{API_VERSION}`",
                    self.api_version
                ),
            ));
        }
        if self.kind != KIND {
            return Err(err(
                "kind",
                format!("`{}` is not supported; use `{KIND}`", self.kind),
            ));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b));
        if !name_ok {
            return Err(err(
                "name",
                format!(
                    "`{}` must be 1-128 characters of a-z, 0-9, `-`, `_`, `.`, `/`",
                    self.name
                ),
            ));
        }
        let version_ok = !self.version.is_empty()
            && self.version.len() <= 128
            && self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
        if !version_ok {
            return Err(err(
                "version",
                format!(
                    "`{}` must be 1-128 characters of A-Z, a-z, 0-9, `-`, `_`, `.`, `+`",
                    self.version
                ),
            ));
        }
        let bundle_type = match self.bundle_type.as_str() {
            "rootfs" => BundleType::Rootfs,
            "patch" => BundleType::Patch,
            "app" => BundleType::App,
            other => {
                return Err(err(
                    "type",
                    format!("unknown type `{other}`; allowed: rootfs, patch, app"),
                ))
            }
        };
        for k in self.env.keys() {
            if k.is_empty()
                || k.as_bytes()[0].is_ascii_digit()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(err(
                    format!("env.{k}"),
                    "environment variable names use A-Z, a-z, 0-9 and `_` and do not start with a digit",
                ));
            }
        }
        let mut hooks = BTreeMap::new();
        for (hook, path) in &self.hooks {
            if !HOOKS.contains(&hook.as_str()) {
                return Err(err(
                    format!("hooks.{hook}"),
                    format!("unknown hook; allowed: {}", HOOKS.join(", ")),
                ));
            }
            let p =
                SafeRelPath::new(path).map_err(|e| err(format!("hooks.{hook}"), e.to_string()))?;
            if !exists(&p) {
                return Err(err(
                    format!("hooks.{hook}"),
                    format!("file `{p}` does not exist in the bundle"),
                ));
            }
            hooks.insert(hook.clone(), p);
        }
        let mut timeouts = BTreeMap::new();
        for (hook, value) in &self.timeouts {
            if !HOOKS.contains(&hook.as_str()) && hook != "cmd" {
                return Err(err(
                    format!("timeouts.{hook}"),
                    format!("unknown hook; allowed: {}, cmd", HOOKS.join(", ")),
                ));
            }
            let d = humantime::parse_duration(value).map_err(|_| {
                err(
                    format!("timeouts.{hook}"),
                    format!("`{value}` is not a duration; use e.g. 90s, 10m, 1h"),
                )
            })?;
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err(err(
                    format!("timeouts.{hook}"),
                    format!("`{value}` must be between 1s and 24h"),
                ));
            }
            timeouts.insert(hook.clone(), d.as_secs().max(1));
        }
        for (i, c) in self.cmd.iter().enumerate() {
            if c.is_empty() {
                return Err(err(format!("cmd[{i}]"), "empty command"));
            }
        }
        if !self.cmd.is_empty() && !self.commands.is_empty() {
            return Err(err(
                "commands",
                "a bundle runs either `cmd` (a program and its arguments) or `commands` (shell command lines), not both",
            ));
        }
        for (i, c) in self.commands.iter().enumerate() {
            if c.trim().is_empty() || c.contains('\0') {
                return Err(err(
                    format!("commands[{i}]"),
                    "empty command or a NUL in it",
                ));
            }
        }
        for r in &self.rerunnable {
            if !HOOKS.contains(&r.as_str()) {
                return Err(err(
                    "rerunnable",
                    format!("unknown hook `{r}`; allowed: {}", HOOKS.join(", ")),
                ));
            }
        }
        let mut outputs = BTreeMap::new();
        for (hook, keys) in self.outputs.unwrap_or_default() {
            if !HOOKS.contains(&hook.as_str()) && hook != "cmd" {
                return Err(err(
                    format!("outputs.{hook}"),
                    format!("unknown hook; allowed: {}, cmd", HOOKS.join(", ")),
                ));
            }
            if keys.len() > crate::outputs::MAX_OUTPUTS {
                return Err(err(
                    format!("outputs.{hook}"),
                    format!(
                        "{} names; a hook publishes at most {}",
                        keys.len(),
                        crate::outputs::MAX_OUTPUTS
                    ),
                ));
            }
            for k in &keys {
                if !crate::outputs::valid_name(k) {
                    return Err(err(
                        format!("outputs.{hook}"),
                        format!(
                            "`{}` is not an allowed output name (letters, digits, `_`; {})",
                            k.chars().take(64).collect::<String>(),
                            crate::outputs::FORBIDDEN
                        ),
                    ));
                }
            }
            outputs.insert(hook, keys);
        }
        let arch = match &self.arch {
            None => None,
            Some(a) => Some(normalize_arch(a).ok_or_else(|| {
                err(
                    "arch",
                    format!(
                        "`{}` is not an architecture; use x86_64 (amd64) or aarch64 (arm64)",
                        a.chars().take(32).collect::<String>()
                    ),
                )
            })?),
        };
        Ok(Manifest {
            arch,
            outputs,
            name: self.name,
            version: self.version,
            bundle_type,
            env: self.env,
            hooks,
            timeouts,
            cmd: self.cmd,
            commands: self.commands,
            rerunnable: self.rerunnable,
            allow_setuid: self.allow_setuid,
        })
    }
}

impl Manifest {
    /// Whether `hook` of this bundle may publish the output `key`: declared for that hook,
    /// and not a name that is never allowed.
    pub fn may_output(&self, hook: &str, key: &str) -> bool {
        crate::outputs::valid_name(key)
            && self
                .outputs
                .get(hook)
                .is_some_and(|keys| keys.iter().any(|k| k == key))
    }

    /// Whether the bundle has something to run after the cluster is up (`cmd` or
    /// `commands`).
    pub fn runs_commands(&self) -> bool {
        !self.cmd.is_empty() || !self.commands.is_empty()
    }

    /// The timeout of a hook (default 10 minutes).
    pub fn timeout(&self, hook: &str) -> Duration {
        self.timeouts
            .get(hook)
            .map(|s| Duration::from_secs(*s))
            .unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: berth.dev/v1\nkind: Bundle\nname: etcd\nversion: v3.4.23\ntype: rootfs\nenv:\n  PORT: \"2379\"\nhooks:\n  init: scripts/init.sh\ntimeouts:\n  init: 30m\nrerunnable: [check, install]\n";

    fn parse(y: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(y, |p| p.as_str() == "scripts/init.sh")
    }

    #[test]
    fn parses_a_good_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.bundle_type, BundleType::Rootfs);
        assert_eq!(m.timeout("init"), Duration::from_secs(1800));
        assert_eq!(m.timeout("install"), DEFAULT_HOOK_TIMEOUT);
        assert_eq!(m.hooks["init"].as_str(), "scripts/init.sh");
    }

    #[test]
    fn outputs_are_an_allow_list() {
        // Nothing declared: nothing published, by init or any other hook.
        let m = parse(GOOD).unwrap();
        assert!(!m.may_output("init", "JOIN_TOKEN"));
        assert!(!m.may_output("init", "PERL5OPT"));
        assert!(!m.may_output("join-node", "JOIN_TOKEN"));
        // A manifest stored before the allow-list (`init: null`, any name) publishes none.
        let mut old = serde_json::to_value(&m).unwrap();
        old["outputs"] = serde_json::json!({"init": null});
        let old: Manifest = serde_json::from_value(old).unwrap();
        assert!(!old.may_output("init", "JOIN_TOKEN"));
        let mut older = serde_json::to_value(&m).unwrap();
        older.as_object_mut().unwrap().remove("outputs");
        let older: Manifest = serde_json::from_value(older).unwrap();
        assert!(older.outputs.is_empty());
        let m = parse(&format!(
            "{GOOD}outputs:\n  init: [JOIN_TOKEN]\n  join-master: []\n"
        ))
        .unwrap();
        assert!(m.may_output("init", "JOIN_TOKEN"));
        assert!(!m.may_output("init", "OTHER"));
        assert!(!m.may_output("join-master", "JOIN_TOKEN"));
    }

    #[test]
    fn every_bad_field_gets_an_exact_error() {
        let cases = [
            (GOOD.replace("type: rootfs", "type: kernel"), "bundle.yaml: type: unknown type `kernel`; allowed: rootfs, patch, app"),
            (GOOD.replace("scripts/init.sh", "scripts/missing.sh"), "bundle.yaml: hooks.init: file `scripts/missing.sh` does not exist in the bundle"),
            (GOOD.replace("init: scripts/init.sh", "init: /bin/sh"), "bundle.yaml: hooks.init: `/bin/sh` is an absolute path; only paths relative to the bundle root are allowed"),
            (GOOD.replace("init: scripts/init.sh", "init: ../x.sh"), "bundle.yaml: hooks.init: `../x.sh` contains `..`; paths may not leave the bundle root"),
            (GOOD.replace("init: 30m", "init: soon"), "bundle.yaml: timeouts.init: `soon` is not a duration; use e.g. 90s, 10m, 1h"),
            (GOOD.replace("init: 30m", "init: 48h"), "bundle.yaml: timeouts.init: `48h` must be between 1s and 24h"),
            (GOOD.replace("init: 30m", "boot: 30m"), "bundle.yaml: timeouts.boot: unknown hook; allowed: check, install, init, join-master, join-node, leave, remove, upgrade, rollback, clean, cmd"),
            (GOOD.replace("  init: scripts/init.sh", "  start: scripts/init.sh"), "bundle.yaml: hooks.start: unknown hook; allowed: check, install, init, join-master, join-node, leave, remove, upgrade, rollback, clean"),
            (GOOD.replace("berth.dev/v1", "berth.dev/v2"), "bundle.yaml: apiVersion: `berth.dev/v2` is not supported; use `berth.dev/v1`"),
            (GOOD.replace("rerunnable: [check, install]", "rerunnable: [deploy]"), "bundle.yaml: rerunnable: unknown hook `deploy`; allowed: check, install, init, join-master, join-node, leave, remove, upgrade, rollback, clean"),
            (format!("{GOOD}cmd: [\"a.sh\"]\ncommands: [\"b\"]\n"), "bundle.yaml: commands: a bundle runs either `cmd` (a program and its arguments) or `commands` (shell command lines), not both"),
            (format!("{GOOD}outputs:\n  boot: [X]\n"), "bundle.yaml: outputs.boot: unknown hook; allowed: check, install, init, join-master, join-node, leave, remove, upgrade, rollback, clean, cmd"),
            (format!("{GOOD}outputs:\n  init: [LD_PRELOAD]\n"), format!("bundle.yaml: outputs.init: `LD_PRELOAD` is not an allowed output name (letters, digits, `_`; {})", crate::outputs::FORBIDDEN).leak()),
            (format!("{GOOD}outputs:\n  join-node: [BERTH_MASTER0_IP]\n"), format!("bundle.yaml: outputs.join-node: `BERTH_MASTER0_IP` is not an allowed output name (letters, digits, `_`; {})", crate::outputs::FORBIDDEN).leak()),
            (format!("{GOOD}outputs:\n  init: [PERL5OPT]\n"), format!("bundle.yaml: outputs.init: `PERL5OPT` is not an allowed output name (letters, digits, `_`; {})", crate::outputs::FORBIDDEN).leak()),
            (format!("{GOOD}arch: \"x86-64; rm\"\n"), "bundle.yaml: arch: `x86-64; rm` is not an architecture; use x86_64 (amd64) or aarch64 (arm64)"),
            (format!("{GOOD}arch: \"\"\n"), "bundle.yaml: arch: `` is not an architecture; use x86_64 (amd64) or aarch64 (arm64)"),
        ];
        // sealos's names are Rust's.
        for (written, arch) in [
            ("amd64", "x86_64"),
            ("arm64", "aarch64"),
            ("aarch64", "aarch64"),
            ("riscv64", "riscv64"),
        ] {
            let m = parse(&format!("{GOOD}arch: {written}\n")).unwrap();
            assert_eq!(m.arch.as_deref(), Some(arch));
        }
        assert_eq!(parse(GOOD).unwrap().arch, None);
        for (yaml, want) in cases {
            assert_eq!(parse(&yaml).unwrap_err().to_string(), want);
        }
        let e = parse(&format!("{GOOD}colour: blue\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bundle.yaml: (document): unknown field `colour`"),
            "{e}"
        );
    }
}
