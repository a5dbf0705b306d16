//! sealos build directories: a `Kubefile` (or `Sealfile`) of `FROM scratch`, `COPY`,
//! `LABEL`, `ENV`, `CMD` and `ENTRYPOINT`, built into an image tree without docker or
//! buildah. Anything that would need a container runtime (`RUN`, a base image, `ADD` of a
//! URL, `COPY --from`) is refused with the line and what to do instead.

use crate::image::RunConfig;
use berth_shared::SafeRelPath;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The file names sealos builds from, in the order it looks for them.
pub const FILES: [&str; 3] = ["Kubefile", "Sealfile", "Dockerfile"];
/// A Kubefile larger than this is not one.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct KubefileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// The Kubefile of `dir`, if it has one (and no `bundle.yaml`, which wins).
pub fn find(dir: &Path) -> Option<PathBuf> {
    FILES
        .iter()
        .take(2)
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// What a Kubefile says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kubefile {
    /// (sources, destination), in order.
    pub copies: Vec<(Vec<String>, String)>,
    pub config: RunConfig,
}

/// Parses a Kubefile's text. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Kubefile, KubefileError> {
    let mut kf = Kubefile::default();
    let mut from_seen = false;
    let mut labels = BTreeMap::new();
    let mut env: Vec<(String, String)> = Vec::new();
    for (line_no, line) in logical_lines(text) {
        let err = |message: String| KubefileError {
            file: file.to_string(),
            line: line_no,
            message,
        };
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (line.as_str(), ""),
        };
        let word = word.to_ascii_uppercase();
        if !from_seen && word != "FROM" {
            return Err(err(format!(
                "`{word}` before FROM; a Kubefile starts with `FROM scratch`"
            )));
        }
        match word.as_str() {
            "FROM" => {
                if from_seen {
                    return Err(err(
                        "a second FROM: multi-stage builds need a container runtime; build the stages elsewhere and import the result with `berth bundle import`".into(),
                    ));
                }
                if !rest.eq_ignore_ascii_case("scratch") {
                    return Err(err(format!(
                        "`FROM {rest}`: berth builds only `FROM scratch` images (it has no container runtime to layer on a base); import `{rest}` with `berth bundle import` and list both images in the Clusterfile"
                    )));
                }
                from_seen = true;
            }
            "COPY" => {
                let args = words(rest).map_err(&err)?;
                if let Some(flag) = args.iter().find(|a| a.starts_with("--")) {
                    return Err(err(format!(
                        "COPY {flag}: flags are not supported (berth copies from this directory, keeping file modes)"
                    )));
                }
                if args.len() < 2 {
                    return Err(err("COPY needs a source and a destination".into()));
                }
                if let Some(glob) = args.iter().find(|a| a.contains(['*', '?', '['])) {
                    return Err(err(format!(
                        "COPY {glob}: wildcards are not supported; name the files or their directory"
                    )));
                }
                let (dest, srcs) = args.split_last().expect("two or more");
                kf.copies.push((srcs.to_vec(), dest.clone()));
            }
            "LABEL" => {
                for (k, v) in pairs(rest).map_err(&err)? {
                    labels.insert(k, v);
                }
            }
            "ENV" => {
                for (k, v) in pairs(rest).map_err(&err)? {
                    env.retain(|(old, _)| old != &k);
                    env.push((k, v));
                }
            }
            "CMD" | "ENTRYPOINT" => {
                let list = if rest.starts_with('[') {
                    serde_json::from_str::<Vec<String>>(rest).map_err(|e| {
                        err(format!("{word}: not a JSON list of strings: {e}"))
                    })?
                } else {
                    // sealos runs each element as a shell command line.
                    vec![rest.to_string()]
                };
                if word == "CMD" {
                    kf.config.cmd = Some(list);
                } else {
                    kf.config.entrypoint = Some(list);
                }
            }
            other => {
                return Err(err(format!(
                    "`{other}` is not supported: berth builds without a container runtime; a Kubefile may use FROM scratch, COPY, LABEL, ENV, CMD, ENTRYPOINT"
                )))
            }
        }
    }
    if !from_seen {
        return Err(KubefileError {
            file: file.to_string(),
            line: 1,
            message: "no FROM; a Kubefile starts with `FROM scratch`".into(),
        });
    }
    kf.config.labels = Some(labels);
    kf.config.env = Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect());
    Ok(kf)
}

/// Lines joined at trailing `\`, without comments and blank lines, with their first line
/// number.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if cur.is_none() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if cur.is_some() && t.starts_with('#') {
            continue;
        }
        let (start, mut acc) = cur.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = t.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            cur = Some((start, acc));
        } else {
            acc.push_str(t);
            out.push((start, acc.trim().to_string()));
        }
    }
    if let Some((start, acc)) = cur {
        out.push((start, acc.trim().to_string()));
    }
    out
}

/// Shell-like words: whitespace separated, `"…"` and `'…'` quoted, `\` escapes in `"…"`.
/// A JSON list (`["a", "b"]`) is read as JSON.
fn words(s: &str) -> Result<Vec<String>, String> {
    if s.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(s)
            .map_err(|e| format!("not a JSON list of strings: {e}"));
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => cur.push(n),
                            None => return Err("unterminated `\"`".into()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated `\"`".into()),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated `'`".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `LABEL`/`ENV` arguments: `k=v k2="v 2"`, or the old `KEY value with spaces` form.
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let ws = words(s)?;
    let Some(first) = ws.first() else {
        return Err("needs KEY=VALUE".into());
    };
    if !first.contains('=') {
        // `ENV KEY value…`
        let value = s[s.find(char::is_whitespace).unwrap_or(s.len())..].trim();
        return Ok(vec![(first.clone(), words(value)?.join(" "))]);
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("`{w}` is not KEY=VALUE")),
        })
        .collect()
}

/// Copies what `kf` says from the build directory `dir` into `root` (an empty directory):
/// sources must be inside `dir` (no `..`, no absolute paths, not through a symlink);
/// symlinks are copied as they are (packing refuses ones that point outside).
pub fn copy_into(kf: &Kubefile, dir: &Path, root: &Path, file: &str) -> Result<(), KubefileError> {
    for (srcs, dest) in &kf.copies {
        let fail = |message: String| KubefileError {
            file: file.to_string(),
            line: 0,
            message,
        };
        let dest_rel =
            rel_or_root(dest).map_err(|e| fail(format!("COPY destination `{dest}`: {e}")))?;
        let dest_is_dir = dest.ends_with('/') || dest_rel.is_none() || srcs.len() > 1;
        for src in srcs {
            let src_rel =
                rel_or_root(src).map_err(|e| fail(format!("COPY source `{src}`: {e}")))?;
            let from = match &src_rel {
                Some(r) => crate::unpack::checked_existing(dir, r).map_err(|_| {
                    fail(format!("COPY source `{src}` is not in {}", dir.display()))
                })?,
                None => dir.to_path_buf(),
            };
            let meta = fs::symlink_metadata(&from)
                .map_err(|e| fail(format!("COPY source `{src}`: {e}")))?;
            let base = root.join(dest_rel.as_ref().map_or("", |r| r.as_str()));
            if meta.is_dir() {
                copy_tree(&from, &base).map_err(|e| fail(format!("COPY {src} {dest}: {e}")))?;
            } else {
                let target = if dest_is_dir || base.is_dir() {
                    base.join(from.file_name().unwrap_or_default())
                } else {
                    base
                };
                copy_entry(&from, &target).map_err(|e| fail(format!("COPY {src} {dest}: {e}")))?;
            }
        }
    }
    Ok(())
}

fn rel_or_root(p: &str) -> Result<Option<SafeRelPath>, String> {
    let trimmed = p.trim_start_matches('/');
    if trimmed.split('/').all(|c| c.is_empty() || c == ".") {
        return Ok(None);
    }
    SafeRelPath::new(trimmed)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Copies the contents of directory `from` into `to` (created), not following symlinks.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in walkdir::WalkDir::new(from).min_depth(1).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(from).map_err(io::Error::other)?;
        copy_entry(entry.path(), &to.join(rel))?;
    }
    Ok(())
}

fn copy_entry(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if let Ok(old) = fs::symlink_metadata(to) {
        if !(old.is_dir() && meta.is_dir()) {
            if old.is_dir() {
                fs::remove_dir_all(to)?;
            } else {
                fs::remove_file(to)?;
            }
        }
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if meta.is_dir() {
        fs::create_dir_all(to)?;
        fs::set_permissions(to, meta.permissions())
    } else if meta.is_file() {
        fs::copy(from, to).map(|_| ())
    } else {
        Err(io::Error::other(format!(
            "{} is not a file, directory or symlink",
            from.display()
        )))
    }
}

/// Reads and parses the Kubefile at `path` (at most 1 MiB).
pub fn read(path: &Path) -> Result<Kubefile, KubefileError> {
    let file = path.display().to_string();
    let fail = |message: String| KubefileError {
        file: file.clone(),
        line: 0,
        message,
    };
    let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_BYTES {
        return Err(fail(format!(
            "larger than {MAX_BYTES} bytes; not a Kubefile"
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| fail(format!("not UTF-8 text: {e}")))?;
    parse(&text, &file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_labring_shaped_kubefile_parses() {
        let kf = parse(
            "FROM scratch\n# comment\nENV version=v1.27.7 \\\n    registry=sealos.hub:5000\nLABEL init=\"init-cri.sh && bash init.sh\" \\\n      sealos.io.type=\"rootfs\"\nLABEL old style value\nCOPY . .\nCOPY registry ./registry\nCMD [\"kubectl apply -f manifests/a.yaml\", \"helm install x charts/x\"]\nENTRYPOINT echo hi\n",
            "Kubefile",
        )
        .unwrap();
        assert_eq!(
            kf.copies,
            vec![
                (vec![".".to_string()], ".".to_string()),
                (vec!["registry".to_string()], "./registry".to_string())
            ]
        );
        let labels = kf.config.labels.unwrap();
        assert_eq!(labels["init"], "init-cri.sh && bash init.sh");
        assert_eq!(labels["sealos.io.type"], "rootfs");
        assert_eq!(labels["old"], "style value");
        assert_eq!(
            kf.config.env.unwrap(),
            vec!["version=v1.27.7", "registry=sealos.hub:5000"]
        );
        assert_eq!(
            kf.config.cmd.unwrap(),
            vec![
                "kubectl apply -f manifests/a.yaml",
                "helm install x charts/x"
            ]
        );
        assert_eq!(kf.config.entrypoint.unwrap(), vec!["echo hi"]);
    }

    #[test]
    fn what_needs_a_container_runtime_is_refused_with_the_line() {
        for (text, want) in [
            ("", "Kubefile:1: no FROM; a Kubefile starts with `FROM scratch`"),
            ("COPY a b\n", "Kubefile:1: `COPY` before FROM; a Kubefile starts with `FROM scratch`"),
            ("FROM scratch\n\nRUN make\n", "Kubefile:3: `RUN` is not supported: berth builds without a container runtime; a Kubefile may use FROM scratch, COPY, LABEL, ENV, CMD, ENTRYPOINT"),
            ("FROM scratch\nFROM scratch\n", "Kubefile:2: a second FROM: multi-stage builds need a container runtime; build the stages elsewhere and import the result with `berth bundle import`"),
            ("FROM scratch\nCOPY --from=build a b\n", "Kubefile:2: COPY --from=build: flags are not supported (berth copies from this directory, keeping file modes)"),
            ("FROM scratch\nCOPY *.yaml manifests/\n", "Kubefile:2: COPY *.yaml: wildcards are not supported; name the files or their directory"),
            ("FROM scratch\nCOPY a\n", "Kubefile:2: COPY needs a source and a destination"),
            ("FROM scratch\nCMD [\"a\", 1]\n", "Kubefile:2: CMD: not a JSON list of strings: invalid type: integer `1`, expected a string at line 1 column 7"),
            ("FROM scratch\nLABEL a=\"open\n", "Kubefile:2: unterminated `\"`"),
            ("FROM scratch\nENV =x\n", "Kubefile:2: `=x` is not KEY=VALUE"),
        ] {
            assert_eq!(parse(text, "Kubefile").unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn copy_sources_stay_inside_the_build_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        for (src, want) in [
            (
                "../x",
                "COPY source `../x`: `../x` contains `..`; paths may not leave the bundle root",
            ),
            ("etc/passwd", "COPY source `etc/passwd` is not in"),
        ] {
            let kf = parse(&format!("FROM scratch\nCOPY {src} dest\n"), "Kubefile").unwrap();
            let err = copy_into(&kf, dir.path(), root.path(), "Kubefile").unwrap_err();
            assert!(err.message.starts_with(want), "{src}: {err}");
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
