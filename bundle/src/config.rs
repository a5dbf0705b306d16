//! Clusterfile `Config` objects applied to an unpacked rootfs, and template rendering (and
//! checking) of the whole tree.
//!
//! Strategies (sealos semantics): `merge` deep-merges YAML `data` into every `---` document
//! of the target; `override` replaces the file; `insert` puts `data` before the existing
//! content; `append` after it. Writes go through a temp file and a rename, never through a
//! symlink.

use crate::template::{self, render, TemplateError, MAX_TEMPLATE_BYTES};
use berth_shared::SafeRelPath;
use serde_norway::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Merge,
    Override,
    Insert,
    Append,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "merge" => Some(Strategy::Merge),
            "override" => Some(Strategy::Override),
            "insert" => Some(Strategy::Insert),
            "append" => Some(Strategy::Append),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Config for `{path}`: the target file does not exist in the rootfs (merge needs one)")]
    MissingTarget { path: String },
    #[error("Config for `{path}`: merge needs a YAML target, but it does not parse: {why}")]
    TargetNotYaml { path: String, why: String },
    #[error("Config for `{path}`: data is not YAML: {why}")]
    DataNotYaml { path: String, why: String },
    #[error("Config for `{path}`: {why}")]
    Unsafe { path: String, why: String },
    #[error("template {path}: {source}")]
    Template {
        path: String,
        #[source]
        source: TemplateError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The full path of `rel` under `root`, refusing when any existing component (the last
/// included) is a symlink.
fn resolve(root: &Path, rel: &SafeRelPath) -> Result<PathBuf, ConfigError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ConfigError::Unsafe {
                    path: rel.to_string(),
                    why: format!(
                        "`{}` is a symlink; Configs never write through symlinks",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
                    ),
                })
            }
            _ => {}
        }
    }
    Ok(cur)
}

/// Applies one Config to the rootfs at `root`.
pub fn apply(
    root: &Path,
    rel: &SafeRelPath,
    strategy: Strategy,
    data: &str,
) -> Result<(), ConfigError> {
    let target = resolve(root, rel)?;
    let existing = match fs::read(&target) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_at(&target)(e)),
    };
    let joined = |a: &[u8], b: &[u8]| {
        let mut v = a.to_vec();
        if !v.is_empty() && !v.ends_with(b"\n") {
            v.push(b'\n');
        }
        v.extend_from_slice(b);
        v
    };
    let new = match strategy {
        Strategy::Override => data.as_bytes().to_vec(),
        Strategy::Insert => joined(data.as_bytes(), existing.as_deref().unwrap_or_default()),
        Strategy::Append => joined(existing.as_deref().unwrap_or_default(), data.as_bytes()),
        Strategy::Merge => {
            let existing = existing.ok_or_else(|| ConfigError::MissingTarget {
                path: rel.to_string(),
            })?;
            merge_documents(rel, &existing, data)?.into_bytes()
        }
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    write_atomic(&target, &new, None)
}

fn merge_documents(rel: &SafeRelPath, existing: &[u8], data: &str) -> Result<String, ConfigError> {
    let text = std::str::from_utf8(existing).map_err(|_| ConfigError::TargetNotYaml {
        path: rel.to_string(),
        why: "not UTF-8".into(),
    })?;
    let patch: Value = serde_norway::from_str(data).map_err(|e| ConfigError::DataNotYaml {
        path: rel.to_string(),
        why: e.to_string(),
    })?;
    let mut docs = Vec::new();
    for doc in berth_shared::yaml::documents(text) {
        let v = doc.map_err(|e| ConfigError::TargetNotYaml {
            path: rel.to_string(),
            why: e.to_string(),
        })?;
        docs.push(v);
    }
    if docs.is_empty() {
        docs.push(Value::Null);
    }
    let mut out = String::new();
    for (i, mut d) in docs.into_iter().enumerate() {
        deep_merge(&mut d, &patch);
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_norway::to_string(&d).map_err(|e| ConfigError::TargetNotYaml {
                path: rel.to_string(),
                why: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// Mappings merge key by key, recursively; anything else is replaced by the patch.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Mapping(b), Value::Mapping(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn write_atomic(target: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), ConfigError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let tmp = target.with_file_name(format!(".{name}.berth-tmp"));
    fs::write(&tmp, bytes).map_err(io_at(&tmp))?;
    let mode = mode.or_else(|| {
        fs::metadata(target)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777)
    });
    if let Some(m) = mode {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(m)).map_err(io_at(&tmp))?;
    }
    fs::rename(&tmp, target).map_err(io_at(target))
}

/// Calls `f(entry, rel, out_rel)` for every regular `*.tmpl` file under `root`, sorted by
/// path, without following symlinks: `rel` is its path relative to `root`, `out_rel` the
/// path it renders to.
fn for_each_template(
    root: &Path,
    mut f: impl FnMut(&walkdir::DirEntry, &str, &str) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| ConfigError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e.into(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(rel) = entry
            .path()
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
        else {
            continue;
        };
        let Some(out_rel) = template::rendered_path(rel) else {
            continue;
        };
        f(&entry, rel, out_rel)?;
    }
    Ok(())
}

/// Reads the template at `path` (`rel` in errors): at most [`MAX_TEMPLATE_BYTES`], UTF-8.
fn read_template(path: &Path, rel: &str) -> Result<String, ConfigError> {
    let file = fs::File::open(path).map_err(io_at(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_TEMPLATE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    template::decode(&bytes)
        .map(str::to_owned)
        .map_err(|source| ConfigError::Template {
            path: rel.to_string(),
            source,
        })
}

/// Parses every regular `*.tmpl` file under `root` (an unpacked bundle or rootfs) without
/// rendering it, and returns how many there are. The first bad one is the error, naming the
/// file and line: `template etc/app.conf.tmpl: line 3: …`.
pub fn check_templates(root: &Path) -> Result<usize, ConfigError> {
    let mut checked = 0;
    for_each_template(root, |entry, rel, _| {
        let src = read_template(entry.path(), rel)?;
        template::check(&src).map_err(|source| ConfigError::Template {
            path: rel.to_string(),
            source,
        })?;
        checked += 1;
        Ok(())
    })?;
    Ok(checked)
}

/// Renders every regular `*.tmpl` file under `root` into the same path without `.tmpl`,
/// keeping its mode. Returns the rendered paths, sorted. An error names the file and line:
/// `template etc/app.conf.tmpl: line 3: …`.
pub fn render_templates(
    root: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut done = Vec::new();
    for_each_template(root, |entry, rel, out_rel| {
        let src = read_template(entry.path(), rel)?;
        let rendered = render(&src, env).map_err(|source| ConfigError::Template {
            path: rel.to_string(),
            source,
        })?;
        let out_rel = SafeRelPath::new(out_rel).map_err(|e| ConfigError::Unsafe {
            path: rel.to_string(),
            why: e.to_string(),
        })?;
        let target = resolve(root, &out_rel)?;
        let mode = entry
            .metadata()
            .map(|m| m.permissions().mode() & 0o7777)
            .ok();
        write_atomic(&target, rendered.as_bytes(), mode)?;
        done.push(out_rel.to_string());
        Ok(())
    })?;
    Ok(done)
}
