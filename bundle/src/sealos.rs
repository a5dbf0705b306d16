//! A sealos cluster image's config made into a bundle manifest, following sealos's rules
//! (labring/sealos `constants/bash.go`, `filesystem/rootfs`, `guest`, `types/v1beta1`):
//!
//! - type from the `sealos.io.type` or `apps.sealos.io/type` label: `rootfs`, `patch`,
//!   `application` (→ `app`); no label means app;
//! - a rootfs image's `check`, `init` and `clean` labels are hooks, each run on every host as
//!   sealos runs them: `cd <rootfs>/scripts && bash <label>` with the label's `$VARS` expanded
//!   by that shell from the env; without a label, `check.sh` / `init.sh` / `clean.sh` in
//!   `scripts/` when the image has them. sealos's `init` (on every host, before kubeadm) is
//!   berth's `install` phase. `init-cri` runs before `init` and `clean-cri` after `clean`
//!   when labelled; `init-registry` / `clean-registry` (label or script) run on master0, the
//!   host sealos keeps its registry on. sealos runs only the rootfs image's scripts (patch
//!   images' files overlay it), so patch and app images get no hooks;
//! - `Env` is the bundle's env; a rootfs image also gets `SEALOS_SYS_KUBE_VERSION` (its
//!   `version` label) and `SEALOS_SYS_SEALOS_VERSION`;
//! - `Entrypoint` and `Cmd` are the bundle's `commands`: shell commands run after the
//!   cluster is up, on every host for rootfs and patch images and on master0 for app images.
//!
//! The hooks are small generated scripts under `.berth/` in the bundle.

use crate::image::RunConfig;
use berth_shared::bundle::{RawManifest, API_VERSION, KIND, MANIFEST_FILE};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What `SEALOS_SYS_SEALOS_VERSION` says: the sealos release whose image rules berth follows.
pub const SEALOS_VERSION: &str = "v4.3.7";
/// Where the generated hook scripts live in a bundle.
pub const HOOK_DIR: &str = ".berth";
/// The type labels, in the order sealos reads them.
pub const TYPE_LABELS: [&str; 2] = ["sealos.io.type", "apps.sealos.io/type"];
/// How long a sealos image's hooks and commands may take: sealos sets no limit, and a
/// Kubernetes rootfs's `init` installs a container runtime and loads images.
const TIMEOUT: &str = "1h";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealosError {
    #[error(
        "label `{label}`: `{value}` is not an image type; sealos knows rootfs, patch, application"
    )]
    Type { label: String, value: String },
    #[error("label `{0}` holds a control character; a hook label is one shell command line")]
    Label(String),
    #[error("Env `{0}`: not NAME=VALUE with a NAME of A-Z a-z 0-9 _")]
    Env(String),
    #[error("{0}")]
    Io(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SealosError + '_ {
    move |e| SealosError::Io(format!("{}: {e}", path.display()))
}

/// The berth type a sealos image's labels give it.
pub fn image_type(labels: &BTreeMap<String, String>) -> Result<&'static str, SealosError> {
    for key in TYPE_LABELS {
        if let Some(v) = labels.get(key) {
            return match v.as_str() {
                "rootfs" => Ok("rootfs"),
                "patch" => Ok("patch"),
                "application" | "app" | "" => Ok("app"),
                other => Err(SealosError::Type {
                    label: key.to_string(),
                    value: other.to_string(),
                }),
            };
        }
    }
    Ok("app")
}

/// Writes `bundle.yaml` and the hook scripts into `root` (the image's files, `scripts/`
/// included), for an image named `name:version`. Returns the manifest written.
pub fn write_bundle(
    root: &Path,
    config: &RunConfig,
    name: &str,
    version: &str,
) -> Result<RawManifest, SealosError> {
    let labels = config.labels.clone().unwrap_or_default();
    let bundle_type = image_type(&labels)?;
    let mut env = BTreeMap::new();
    for kv in config.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        let ok = !k.is_empty()
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(SealosError::Env(kv.clone()));
        }
        env.insert(k.to_string(), v.to_string());
    }
    let mut hooks = BTreeMap::new();
    let mut timeouts = BTreeMap::new();
    if bundle_type == "rootfs" {
        env.insert(
            "SEALOS_SYS_KUBE_VERSION".into(),
            labels.get("version").cloned().unwrap_or_default(),
        );
        env.insert("SEALOS_SYS_SEALOS_VERSION".into(), SEALOS_VERSION.into());
        let scripts = root.join("scripts");
        // A label's command, or sealos's default script when the image has it.
        let step = |key: &str, fallback: bool| -> Result<Option<String>, SealosError> {
            if let Some(v) = labels.get(key) {
                if v.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(SealosError::Label(key.to_string()));
                }
                return Ok(Some(format!("bash {v}")));
            }
            let default = format!("{key}.sh");
            Ok((fallback && scripts.join(&default).is_file()).then(|| format!("bash {default}")))
        };
        let on_master0 =
            |cmd: String| format!("if [ \"$BERTH_HOST\" = \"$BERTH_MASTER0\" ]; then\n  {cmd}\nfi");
        let check: Vec<String> = step("check", true)?.into_iter().collect();
        let install: Vec<String> = [
            step("init-cri", false)?,
            step("init-registry", true)?.map(on_master0),
            step("init", true)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        let clean: Vec<String> = [
            step("clean", true)?,
            step("clean-registry", true)?.map(on_master0),
            step("clean-cri", false)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        for (hook, lines) in [("check", check), ("install", install), ("clean", clean)] {
            if lines.is_empty() {
                continue;
            }
            let rel = format!("{HOOK_DIR}/{hook}.sh");
            write_hook(root, &rel, &lines)?;
            hooks.insert(hook.to_string(), rel);
            timeouts.insert(hook.to_string(), TIMEOUT.to_string());
        }
    }
    let commands: Vec<String> = config
        .entrypoint
        .iter()
        .flatten()
        .chain(config.cmd.iter().flatten())
        .cloned()
        .collect();
    if !commands.is_empty() {
        timeouts.insert("cmd".into(), TIMEOUT.into());
    }
    let manifest = RawManifest {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        name: name.into(),
        version: version.into(),
        bundle_type: bundle_type.into(),
        env,
        hooks,
        timeouts,
        cmd: vec![],
        commands,
        rerunnable: vec![],
        allow_setuid: false,
        outputs: None,
        arch: None,
    };
    let path = root.join(MANIFEST_FILE);
    let text = serde_norway::to_string(&manifest)
        .map_err(|e| SealosError::Io(format!("bundle.yaml: {e}")))?;
    fs::write(&path, text).map_err(io_err(&path))?;
    Ok(manifest)
}

fn write_hook(root: &Path, rel: &str, lines: &[String]) -> Result<(), SealosError> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let body = format!(
        "#!/bin/bash\n# Made by berth from the sealos image's labels: sealos runs each as\n# `cd <rootfs>/scripts && bash <label>` with the cluster's env.\nset -e\ncd \"$BERTH_ROOTFS/scripts\"\n{}\n",
        lines.join("\n")
    );
    // A file the image itself put at this path is replaced, never written through.
    let _ = fs::remove_file(&path);
    fs::write(&path, body).map_err(io_err(&path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io_err(&path))
}

/// The bundle name and version for an image reference `[registry/]name[:tag]`: the
/// registry host is dropped from the manifest's name (the tag the bundle is stored under
/// keeps it), no tag means `latest`.
pub fn name_and_version(reference: &str) -> (String, String) {
    let (_, name, tag) = berth_shared::bundle_ref::split_reference(reference);
    (name.to_string(), tag.to_string())
}
