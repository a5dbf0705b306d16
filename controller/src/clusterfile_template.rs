//! Clusterfiles that are Go templates, rendered on the client before they are applied, as
//! `sealos apply -f Clusterfile --values V.yaml --set k=v --env K=V` does: the template sees
//! `.Values` (the values files deep-merged in order, then each `--set`), and `env "NAME"`
//! answers from `--env NAME=…`, then from this process's environment — except `BERTH_*`
//! (the client's own credentials), which render empty so a Clusterfile from elsewhere
//! cannot copy a token into the cluster's stored spec.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest values file read.
const MAX_VALUES_BYTES: u64 = 1 << 20;

/// What `--values`, `--set` and `--env` give a template.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    pub values: Vec<PathBuf>,
    pub set: Vec<String>,
    pub env: Vec<String>,
}

impl Inputs {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.set.is_empty() && self.env.is_empty()
    }
}

/// `text` rendered when it is a template (holds `{{`), else as it is. A Clusterfile that
/// is not a template but was given values is refused: the values would be ignored.
pub fn render(file: &Path, text: &str, inputs: &Inputs) -> Result<String> {
    if !text.contains("{{") {
        if !inputs.values.is_empty() || !inputs.set.is_empty() {
            bail!(
                "{} is not a template (no `{{{{`), so --values/--set would change nothing; drop them or template the file",
                file.display()
            );
        }
        return Ok(text.to_string());
    }
    let mut values = Value::Object(Map::new());
    for v in &inputs.values {
        let meta = std::fs::metadata(v).with_context(|| format!("--values {}", v.display()))?;
        if meta.len() > MAX_VALUES_BYTES {
            bail!(
                "--values {}: larger than {MAX_VALUES_BYTES} bytes",
                v.display()
            );
        }
        let t = std::fs::read_to_string(v).with_context(|| format!("--values {}", v.display()))?;
        let doc: Value = if t.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_norway::from_str(&t)
                .map_err(|e| anyhow::anyhow!("--values {}: {e}", v.display()))?
        };
        if !doc.is_object() {
            bail!("--values {}: a values file is a YAML mapping", v.display());
        }
        merge(&mut values, doc);
    }
    for s in &inputs.set {
        for (path, value) in parse_set(s)? {
            set_path(&mut values, &path, value);
        }
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in &inputs.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv}: use KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let lookup = |name: &str| -> Option<String> {
        if let Some(v) = env.get(name) {
            return Some(v.clone());
        }
        if name.starts_with("BERTH_") {
            return None;
        }
        std::env::var(name).ok()
    };
    let data = serde_json::json!({ "Values": values });
    berth_bundle::template::render_data(text, &data, &lookup)
        .map_err(|e| anyhow::anyhow!("{} (a Go template): {e}", file.display()))
}

/// Deep-merges `from` into `into`: mappings merge key by key, anything else is replaced.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `a.b=c,d=e` → [([a, b], c), ([d], e)], with helm's typing of values: `true`/`false`,
/// integers and `null` are typed, everything else is a string.
fn parse_set(s: &str) -> Result<Vec<(Vec<String>, Value)>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--set {s}: `{part}` is not key=value"))?;
        if k.contains('[') {
            bail!(
                "--set {s}: list indexes (`{k}`) are not supported; put lists in a --values file"
            );
        }
        let path: Vec<String> = k.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            bail!("--set {s}: `{k}` has an empty key");
        }
        let value = match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            n if n.parse::<i64>().is_ok() => Value::from(n.parse::<i64>().unwrap_or_default()),
            other => Value::String(other.to_string()),
        };
        out.push((path, value));
    }
    Ok(out)
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else {
            unreachable!("made an object above")
        };
        if i + 1 == path.len() {
            map.insert(k.clone(), value);
            return;
        }
        cur = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_is_typed_and_nested_like_helm() {
        let mut v = serde_json::json!({"a": {"keep": 1, "b": "old"}});
        for (p, x) in parse_set("a.b=new,n=3,t=true,s=v1.27").unwrap() {
            set_path(&mut v, &p, x);
        }
        assert_eq!(
            v,
            serde_json::json!({"a": {"keep": 1, "b": "new"}, "n": 3, "t": true, "s": "v1.27"})
        );
        assert_eq!(
            parse_set("x[0]=1").unwrap_err().to_string(),
            "--set x[0]=1: list indexes (`x[0]`) are not supported; put lists in a --values file"
        );
        assert_eq!(
            parse_set("novalue").unwrap_err().to_string(),
            "--set novalue: `novalue` is not key=value"
        );
    }

    #[test]
    fn values_merge_deeply_later_files_win() {
        let mut a = serde_json::json!({"m": {"x": 1, "y": [1, 2]}, "k": "a"});
        merge(
            &mut a,
            serde_json::json!({"m": {"y": [3], "z": true}, "k": "b"}),
        );
        assert_eq!(
            a,
            serde_json::json!({"m": {"x": 1, "y": [3], "z": true}, "k": "b"})
        );
    }
}
