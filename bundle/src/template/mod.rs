//! sealos-compatible templates: the subset of Go's text/template, with the sprig functions,
//! that cluster images and sealos Clusterfiles use.
//!
//! Two entry points. [`render`] renders a bundle's `*.tmpl` file against a flat string env:
//! the root `.` is a map of the env's strings, so `{{ .KEY }}` reads one, and `env "KEY"`
//! looks one up too. [`render_data`] renders a Clusterfile against structured data, helm
//! style (`sealos apply -f Clusterfile --values v.yaml --set k=v`: the root is
//! `{"Values": <merged values>}`), with `env "NAME"` answered by the caller.
//!
//! Supported:
//! - fields and chains `.A.B.C` (missing anywhere, or reached through something that is not
//!   a map, is a missing value, which renders empty: Go's `missingkey=zero`, as helm uses
//!   it), `.` (the current dot), `$` (the root), variables `$x` and `$x.A.B`, and fields of a
//!   parenthesised pipeline, `(split ":" .X)._1`;
//! - pipelines (`{{ .KEY | default "x" }}`), parentheses, and string, raw-string, number,
//!   boolean and `nil` literals; numbers from the data print as Go prints them (integers
//!   without `.0`);
//! - `{{ $x := pipeline }}` declares a variable until the `end` of the enclosing block,
//!   `{{ $x = pipeline }}` assigns one declared before (also from inside a `range`);
//! - `if` / `else if` / `else`, `with` / `else` (the dot is the value inside), and
//!   `range` / `else` over a list (in order) or a map (by sorted key), the dot being the
//!   element, with `range $v := …` or `range $i, $v := …` (index or key, and element); `if`
//!   and `with` may declare a variable too (`with $s := .Values.ssh`). A missing value, an
//!   empty list or an empty map takes the `else` branch; `range` over a string, number or
//!   boolean is an error, as in Go;
//! - comments `{{/* */}}` and trim markers `{{-` and `-}}`;
//! - Go's truthiness: `false`, `0`, the empty string, list and map, and a missing value are
//!   false, everything else is true;
//! - the functions `default` (an empty list or map counts as unset), `eq` and `ne`
//!   (comparing the printed text, so a number from the data equals the same number
//!   written in the template), `not`, `and`, `or` (both stop at the first deciding
//!   argument), `lower`, `upper`, `trim`, `quote`, `len`, `index` (a map by key, a list by
//!   integer position, several keys in turn) and `env`, and the sprig functions real
//!   cluster images and Clusterfiles use: `contains`, `hasPrefix`, `hasSuffix`,
//!   `trimPrefix`, `trimSuffix`, `replace`, `squote`, `b64enc`, `b64dec`, `indent`,
//!   `nindent`, `split` (a map `_0`, `_1`, …), `splitList`, `join`, `toString`, `empty`,
//!   `required` (fails with its message when the value is missing or an empty string),
//!   `hasKey`, `list`, `dict`, `toJson`, `toYaml` (block YAML for lists and maps, trailing
//!   newline trimmed, as helm's) and `semverCompare` (Masterminds constraints:
//!   `>=1.25.0-0`, `^1.2`, `~1.2`, `1.2.x`, `,` for and, `||` for or; a leading `v` in the
//!   version is ignored).
//!
//! A list or map printed whole renders as Go prints it (`[a b]`, `map[k:v]`). Unknown
//! functions, wrong argument counts and undefined variables are parse errors (Go finds
//! argument counts only when the action runs), so [`check`] finds every mistake that does
//! not depend on the data. `define`, `template`, `block`, `break` and `continue` are
//! refused.
//!
//! Written here rather than taken from a crate: the one Rust implementation of Go templates
//! (gtmpl 0.7) loops forever on an unclosed action, and templates come from bundles, which
//! are untrusted input. For the same reason everything is bounded, and exceeding a bound is
//! a [`TemplateError`] naming the line and the limit, never a crash or a hang:
//! - [`MAX_TEMPLATE_BYTES`] (1 MiB) of source. The templated files in cluster images
//!   (kubeadm, etcd, containerd and registry configs, CNI custom resources, Helm values)
//!   are a few KiB to tens of KiB; the large manifests (CRDs) are not templated.
//! - [`MAX_DEPTH`] (64) levels of blocks (`if`, `with` and `range` together), and separately
//!   64 levels of parentheses within one action. Parsing and rendering recurse once per
//!   level, so this bounds the stack far below any thread's stack; real templates nest 2
//!   or 3 deep.
//! - [`MAX_OUTPUT_BYTES`] (4 MiB) of rendered output, so `{{ .X }}` repeated over a large env
//!   value, or a `range` over a long list, cannot fill the disk or memory.
//! - [`MAX_EVAL_BYTES`] (16 MiB) of values computed while rendering (every field and
//!   variable lookup, literal and function result, counted each time it is evaluated; a
//!   list or map counts its contents plus 16 bytes and its indentation per entry). Without
//!   it a pipeline such as `{{ "\\" | quote | quote | … }}` doubles its value at every step
//!   and exhausts memory before anything reaches the output, and so would
//!   `{{ $x = list $x $x }}` in a `range`.
//! - [`MAX_RANGE_ITERATIONS`] (100,000) iterations of all `range`s of one render together, so
//!   nested `range`s with empty bodies cannot spin for hours without producing output.
//! - [`MAX_VALUE_DEPTH`] (128) levels of lists and maps in any value, the data's included
//!   (printing and serialising a value recurse once per level).

use std::collections::BTreeMap;
use std::rc::Rc;

mod eval;
mod funcs;
mod lex;
mod parse;
#[cfg(test)]
mod tests;
mod value;

use eval::run;
use parse::parse;
use value::{from_json, Value};

/// Largest template source accepted, bytes (1 MiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Deepest nesting of blocks (`if`, `with` and `range` together), and separately of
/// parentheses within one action.
pub const MAX_DEPTH: usize = 64;
/// Largest rendered output, bytes (4 MiB).
pub const MAX_OUTPUT_BYTES: usize = 4 << 20;
/// Most bytes of values one render may compute (16 MiB).
pub const MAX_EVAL_BYTES: usize = 16 << 20;
/// Most `range` iterations one render may run, all `range`s together.
pub const MAX_RANGE_ITERATIONS: usize = 100_000;
/// Deepest nesting of lists and maps within one value, the data's included.
pub const MAX_VALUE_DEPTH: usize = 128;
/// What one list or map, and each of its entries, costs against [`MAX_EVAL_BYTES`] besides
/// its contents (an entry also costs two bytes per level of nesting: its indentation when
/// written as YAML).
const ENTRY_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

fn terr(line: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        line,
        message: message.into(),
    }
}

/// Renders `src` with `env`: the root `.` is a map of the env's strings, and `env "NAME"`
/// looks NAME up in the same map (missing: empty).
pub fn render(src: &str, env: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    let nodes = parse(src)?;
    let root = Value::Map(Rc::new(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect(),
    ));
    run(src, &nodes, root, &|name: &str| env.get(name).cloned())
}

/// Renders `src` against structured `data` (the root `.`, e.g. `{"Values": {...}}`), with
/// `env "NAME"` answered by `env`.
///
/// JSON `null` is a missing value; numbers print as Go prints them (integers without `.0`).
/// Data nesting deeper than [`MAX_VALUE_DEPTH`] is refused (as an error on line 1).
pub fn render_data(
    src: &str,
    data: &serde_json::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let nodes = parse(src)?;
    let root = from_json(data, 0).ok_or_else(|| {
        terr(
            1,
            format!("the data nests deeper than the limit of {MAX_VALUE_DEPTH} levels"),
        )
    })?;
    run(src, &nodes, root, env)
}

/// Parses `src` without rendering it: finds every error that does not depend on the data
/// (everything but the output, evaluation and iteration limits, and the errors of functions
/// given values they cannot use).
pub fn check(src: &str) -> Result<(), TemplateError> {
    parse(src).map(drop)
}

/// The text of a template read as bytes (a file, an archive entry), refusing more than
/// [`MAX_TEMPLATE_BYTES`] and bytes that are not UTF-8. A caller reading a file may stop
/// after `MAX_TEMPLATE_BYTES + 1` bytes: the error is the same.
pub fn decode(bytes: &[u8]) -> Result<&str, TemplateError> {
    check_size(bytes)?;
    std::str::from_utf8(bytes).map_err(|e| {
        terr(
            line_at(bytes, e.valid_up_to()),
            "not UTF-8 text; templates must be UTF-8",
        )
    })
}

/// The path a template at `rel` renders to (`rel` without `.tmpl`), or None when `rel` is
/// not a template: no `.tmpl` suffix, or nothing before it in the last component.
pub fn rendered_path(rel: &str) -> Option<&str> {
    let out = rel.strip_suffix(".tmpl")?;
    if out.is_empty() || out.ends_with('/') {
        None
    } else {
        Some(out)
    }
}

/// 1-based line of byte offset `at`.
fn line_at(bytes: &[u8], at: usize) -> usize {
    bytes[..at.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn check_size(bytes: &[u8]) -> Result<(), TemplateError> {
    if bytes.len() > MAX_TEMPLATE_BYTES {
        return Err(terr(
            line_at(bytes, MAX_TEMPLATE_BYTES),
            format!(
                "template exceeds the size limit of {MAX_TEMPLATE_BYTES} bytes ({} MiB)",
                MAX_TEMPLATE_BYTES >> 20
            ),
        ));
    }
    Ok(())
}
