//! Clusterfiles: sealos `apps.sealos.io/v1beta1` `Cluster` and `Config` documents, accepted
//! as they are. Documents berth does not interpret (kubeadm, k3s, ...) are kept in the
//! stored text and handed to hooks.

use crate::{BundleRef, SafeRelPath};
use serde::{Deserialize, Serialize};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Largest Clusterfile accepted, bytes.
pub const MAX_CLUSTERFILE_BYTES: usize = 1 << 20;
/// Largest a single document may expand to once parsed (aliases included), bytes of JSON.
pub const MAX_EXPANDED_DOC_BYTES: usize = 4 << 20;
/// Flow collections (`[`, `{`) may nest at most this deep. The YAML scanner is quadratic in
/// flow depth (40,000 `[` took 16 s in a debug build before its own recursion limit
/// answered), so a Clusterfile is refused before it is scanned; real ones nest 2–3 deep.
pub const MAX_FLOW_DEPTH: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Clusterfile {
    pub name: String,
    pub hosts: Vec<HostGroup>,
    /// Bundle references; the first is the rootfs bundle.
    pub images: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub command: Vec<String>,
    /// berth's `spec.maxUnavailable`: nodes an upgrade takes at once (≥ 1).
    pub max_unavailable: Option<u32>,
    pub configs: Vec<ConfigDoc>,
    /// Things accepted but ignored (e.g. `ssh`), said once.
    pub warnings: Vec<String>,
    /// `spec.ssh` or a `hosts[].ssh` is present: [`without_ssh`] has work to do.
    pub ssh: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostGroup {
    /// Host names or addresses, `:port` removed.
    pub ips: Vec<String>,
    pub roles: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// 0-based index in `spec.hosts`, for error messages.
    pub index: usize,
}

impl HostGroup {
    pub fn is_master(&self) -> bool {
        self.roles.iter().any(|r| r == "master")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigDoc {
    pub name: String,
    pub path: SafeRelPath,
    pub matches: Option<String>,
    pub strategy: String,
    pub data: String,
    /// 1-based document number.
    pub doc: usize,
}

/// What is wrong, and where: document number, kind, field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("Clusterfile document {doc} ({kind}): {field}: {message}")]
pub struct ClusterfileError {
    pub doc: usize,
    pub kind: String,
    pub field: String,
    pub message: String,
}

fn cerr(
    doc: usize,
    kind: &str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> ClusterfileError {
    ClusterfileError {
        doc,
        kind: kind.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct ClusterDoc {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: ClusterSpec,
}

#[derive(Deserialize, Default)]
struct Meta {
    /// Missing, null or empty (a template's unset value): a Cluster is named `default`, as
    /// sealos names one.
    #[serde(default, deserialize_with = "name_or_default")]
    name: String,
}

fn name_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let n: Option<String> = Deserialize::deserialize(d)?;
    Ok(n.unwrap_or_default())
}

#[derive(Deserialize, Default)]
struct ClusterSpec {
    #[serde(default)]
    hosts: Vec<RawHost>,
    #[serde(default)]
    image: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default, rename = "maxUnavailable")]
    max_unavailable: Option<Value>,
    #[serde(default)]
    ssh: Option<Value>,
}

#[derive(Deserialize)]
struct RawHost {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    ssh: Option<Value>,
}

#[derive(Deserialize)]
struct RawConfigDoc {
    metadata: Meta,
    spec: RawConfigSpec,
}

#[derive(Deserialize)]
struct RawConfigSpec {
    path: String,
    #[serde(default, rename = "match")]
    matches: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    data: String,
}

/// Drops `SEALOS_SYS_*` names from a Clusterfile's env, as sealos does (they are what the
/// system tells images), with a warning naming them.
fn without_sys_env(env: &mut BTreeMap<String, String>, field: &str, warnings: &mut Vec<String>) {
    let sys: Vec<String> = env
        .keys()
        .filter(|k| k.starts_with("SEALOS_SYS"))
        .cloned()
        .collect();
    if !sys.is_empty() {
        for k in &sys {
            env.remove(k);
        }
        warnings.push(format!(
            "{field}: {} ignored: SEALOS_SYS_* names are set by the system, as in sealos",
            sys.join(", ")
        ));
    }
}

/// `K=V` strings into a map; a repeated name keeps its last value (as sealos reads it).
pub fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not KEY=VALUE"))?;
        if k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || k.as_bytes()[0].is_ascii_digit()
        {
            return Err(format!("`{k}` is not a valid environment variable name"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The line where unquoted `[` / `{` first nest deeper than `MAX_FLOW_DEPTH`, skipping
/// quoted strings and comments. Conservative: brackets in block scalars count too, so a
/// document is only refused when it really holds that many unclosed brackets.
fn flow_too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut prev_space = true;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' if prev_space => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' | '\'' => {
                while let Some(q) = chars.next() {
                    match q {
                        '\\' if c == '"' => {
                            chars.next();
                        }
                        '\n' => line += 1,
                        q if q == c => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    None
}

/// `10.0.0.1:22` → `10.0.0.1`; `[fd00::1]:22` → `fd00::1`; names and bare IPv6 unchanged.
pub fn strip_port(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    if s.matches(':').count() == 1 {
        return s.split(':').next().unwrap_or(s).to_string();
    }
    s.to_string()
}

fn valid_cluster_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

impl Clusterfile {
    pub fn parse(text: &str) -> Result<Clusterfile, ClusterfileError> {
        if text.len() > MAX_CLUSTERFILE_BYTES {
            return Err(cerr(
                0,
                "file",
                "(size)",
                format!("larger than {MAX_CLUSTERFILE_BYTES} bytes"),
            ));
        }
        if let Some(line) = flow_too_deep(text) {
            return Err(cerr(
                0,
                "file",
                "(nesting)",
                format!("line {line}: `[` / `{{` nested deeper than {MAX_FLOW_DEPTH}"),
            ));
        }
        let mut cluster: Option<(usize, ClusterDoc)> = None;
        let mut configs = Vec::new();
        for (i, doc) in crate::yaml::documents(text).enumerate() {
            let n = i + 1;
            let value = doc.map_err(|e| cerr(n, "?", "(document)", e.to_string()))?;
            let expanded = serde_json::to_vec(&value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if expanded > MAX_EXPANDED_DOC_BYTES {
                return Err(cerr(
                    n,
                    "?",
                    "(document)",
                    format!("expands to more than {MAX_EXPANDED_DOC_BYTES} bytes (YAML aliases?)"),
                ));
            }
            let api = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !api.starts_with("apps.sealos.io/") {
                continue; // kubeadm, k3s, ... kept in the stored text
            }
            match kind.as_str() {
                "Cluster" => {
                    if let Some((first, _)) = &cluster {
                        return Err(cerr(n, "Cluster", "kind", format!("a second Cluster document (the first is document {first}); one Clusterfile describes one cluster")));
                    }
                    let c: ClusterDoc = serde_norway::from_value(value)
                        .map_err(|e| cerr(n, "Cluster", "(document)", e.to_string()))?;
                    cluster = Some((n, c));
                }
                "Config" => {
                    let c: RawConfigDoc = serde_norway::from_value(value)
                        .map_err(|e| cerr(n, "Config", "(document)", e.to_string()))?;
                    let path = SafeRelPath::new(&c.spec.path)
                        .map_err(|e| cerr(n, "Config", "spec.path", e.to_string()))?;
                    // sealos writes `data` as the whole file when no strategy is given.
                    let strategy = c.spec.strategy.unwrap_or_else(|| "override".into());
                    if !["merge", "override", "insert", "append"].contains(&strategy.as_str()) {
                        return Err(cerr(n, "Config", "spec.strategy", format!("unknown strategy `{strategy}`; allowed: merge, override, insert, append")));
                    }
                    if let Some(m) = &c.spec.matches {
                        m.parse::<BundleRef>()
                            .map_err(|e| cerr(n, "Config", "spec.match", e.to_string()))?;
                    }
                    configs.push(ConfigDoc {
                        name: c.metadata.name,
                        path,
                        matches: c.spec.matches,
                        strategy,
                        data: c.spec.data,
                        doc: n,
                    });
                }
                other => {
                    return Err(cerr(
                        n,
                        other,
                        "kind",
                        format!(
                            "unknown kind `{other}` for apps.sealos.io; allowed: Cluster, Config"
                        ),
                    ));
                }
            }
        }
        let (n, mut c) = cluster.ok_or_else(|| {
            cerr(
                0,
                "file",
                "kind",
                "no `kind: Cluster` document with `apiVersion: apps.sealos.io/v1beta1`",
            )
        })?;
        let k = "Cluster";
        if c.metadata.name.is_empty() {
            c.metadata.name = "default".into();
        }
        if !valid_cluster_name(&c.metadata.name) {
            return Err(cerr(
                n,
                k,
                "metadata.name",
                format!(
                    "`{}` must be 1-63 characters of a-z, 0-9 and `-`",
                    c.metadata.name
                ),
            ));
        }
        let mut warnings = Vec::new();
        let ssh = c.spec.ssh.is_some() || c.spec.hosts.iter().any(|h| h.ssh.is_some());
        if ssh {
            warnings.push("spec.ssh and hosts[].ssh are ignored and were not stored (they hold credentials): berth agents pull their work, nothing connects over SSH".to_string());
        }
        if c.spec.image.is_empty() {
            return Err(cerr(
                n,
                k,
                "spec.image",
                "at least one bundle is needed; the first is the rootfs bundle",
            ));
        }
        for (i, img) in c.spec.image.iter().enumerate() {
            img.parse::<BundleRef>()
                .map_err(|e| cerr(n, k, format!("spec.image[{i}]"), e.to_string()))?;
        }
        let mut env = parse_env(&c.spec.env).map_err(|e| cerr(n, k, "spec.env", e))?;
        without_sys_env(&mut env, "spec.env", &mut warnings);
        if c.spec.hosts.is_empty() {
            return Err(cerr(n, k, "spec.hosts", "no hosts"));
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut hosts = Vec::new();
        for (i, h) in c.spec.hosts.into_iter().enumerate() {
            let roles: BTreeSet<&str> = h.roles.iter().map(String::as_str).collect();
            if roles.contains("master") && roles.contains("node") {
                return Err(cerr(
                    n,
                    k,
                    format!("spec.hosts[{i}].roles"),
                    "a host group is either master or node, not both",
                ));
            }
            if !roles.contains("master") && !roles.contains("node") {
                return Err(cerr(
                    n,
                    k,
                    format!("spec.hosts[{i}].roles"),
                    "needs `master` or `node`",
                ));
            }
            if h.ips.is_empty() {
                return Err(cerr(n, k, format!("spec.hosts[{i}].ips"), "empty"));
            }
            let mut ips = Vec::new();
            for ip in &h.ips {
                let key = strip_port(ip);
                if let Some(prev) = seen.insert(key.clone(), i) {
                    return Err(cerr(n, k, format!("spec.hosts[{i}].ips"), format!("host `{key}` is also in spec.hosts[{prev}]; a host belongs to one roles group")));
                }
                ips.push(key);
            }
            let mut env =
                parse_env(&h.env).map_err(|e| cerr(n, k, format!("spec.hosts[{i}].env"), e))?;
            without_sys_env(&mut env, &format!("spec.hosts[{i}].env"), &mut warnings);
            hosts.push(HostGroup {
                ips,
                roles: h.roles,
                env,
                index: i,
            });
        }
        let max_unavailable =
            match &c.spec.max_unavailable {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n @ 1..=100_000) => Some(n as u32),
                    _ => return Err(cerr(
                        n,
                        k,
                        "spec.maxUnavailable",
                        "must be a whole number from 1 to 100000 (nodes an upgrade takes at once)",
                    )),
                },
            };
        if !hosts.iter().any(HostGroup::is_master) {
            return Err(cerr(
                n,
                k,
                "spec.hosts",
                "no host has the `master` role; the first master runs init",
            ));
        }
        Ok(Clusterfile {
            name: c.metadata.name,
            hosts,
            images: c.spec.image,
            env,
            command: c.spec.command,
            max_unavailable,
            configs,
            warnings,
            ssh,
        })
    }
}

/// Whether `v` is a sealos `Cluster` document (`apps.sealos.io/*`, `kind: Cluster`).
fn is_sealos_cluster(v: &Value) -> bool {
    v.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|a| a.starts_with("apps.sealos.io/"))
        && v.get("kind").and_then(Value::as_str) == Some("Cluster")
}

/// Every document of `text`, or the first that does not parse, numbered.
fn all_documents(text: &str) -> Result<Vec<Value>, ClusterfileError> {
    crate::yaml::documents(text)
        .enumerate()
        .map(|(i, doc)| doc.map_err(|e| cerr(i + 1, "?", "(document)", e.to_string())))
        .collect()
}

/// Whether the Clusterfile means "this machine", as sealos reads it: its Cluster document
/// has no `spec.hosts` (or an empty list), or every address in them is `127.0.0.1`,
/// `localhost` or `::1` (a `:port` ignored). `false` when there is no Cluster document.
pub fn means_this_machine(text: &str) -> bool {
    let Some(cluster) = crate::yaml::documents(text)
        .filter_map(Result::ok)
        .find(is_sealos_cluster)
    else {
        return false;
    };
    let hosts = cluster
        .get("spec")
        .and_then(|s| s.get("hosts"))
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    hosts.iter().all(|h| {
        h.get("ips").and_then(Value::as_sequence).is_none_or(|ips| {
            ips.iter().all(|ip| {
                ip.as_str()
                    .map(strip_port)
                    .is_some_and(|a| matches!(a.as_str(), "127.0.0.1" | "localhost" | "::1"))
            })
        })
    })
}

/// The Clusterfile text with `spec.ssh` and `spec.hosts[].ssh` removed from its Cluster
/// document, or `None` when it has none. They hold passwords and keys that nothing in berth
/// uses, and the stored text reaches every host (`$BERTH_CLUSTERFILE`, the cluster
/// context): they must never be stored. Other documents keep their text as written (the
/// Cluster document is written anew, without its comments); a file whose documents cannot
/// be told apart line by line is written anew whole.
pub fn without_ssh(text: &str) -> Result<Option<String>, ClusterfileError> {
    let strip = |mut v: Value| -> (Value, bool) {
        let mut changed = false;
        if is_sealos_cluster(&v) {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_mapping_mut) {
                changed |= spec.remove("ssh").is_some();
                if let Some(hosts) = spec.get_mut("hosts").and_then(Value::as_sequence_mut) {
                    for h in hosts.iter_mut().filter_map(Value::as_mapping_mut) {
                        changed |= h.remove("ssh").is_some();
                    }
                }
            }
        }
        (v, changed)
    };
    let stripped: Vec<(Value, bool)> = all_documents(text)?.into_iter().map(strip).collect();
    if !stripped.iter().any(|(_, c)| *c) {
        return Ok(None);
    }
    let write = |v: &Value| {
        serde_norway::to_string(v).map_err(|e| cerr(0, "file", "(document)", e.to_string()))
    };
    // The documents' own text, split at `---` lines; used when it splits into as many
    // documents as the parser saw.
    let mut pieces: Vec<String> = vec![String::new()];
    let mut inline = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") {
            // `--- |` and the like start a document on the separator's own line.
            inline |= !bare[3..].trim().is_empty() && !bare[3..].trim_start().starts_with('#');
            pieces.push(String::new());
        } else if let Some(last) = pieces.last_mut() {
            last.push_str(line);
        }
    }
    let pieces: Vec<String> = pieces
        .into_iter()
        .filter(|p| {
            p.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect();
    let mut out = Vec::new();
    if pieces.len() == stripped.len() && !inline {
        for (piece, (v, changed)) in pieces.iter().zip(&stripped) {
            out.push(if *changed { write(v)? } else { piece.clone() });
        }
    } else {
        for (v, _) in &stripped {
            out.push(write(v)?);
        }
    }
    let mut text = String::new();
    for (i, doc) in out.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(doc);
        if !doc.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(Some(text))
}

/// Edits the hosts of the Cluster document in a Clusterfile: removes `remove` entries
/// (matched with `:port` ignored; empty groups are dropped) and appends a group for
/// `add_masters` and one for `add_nodes`. Other documents are kept in order; comments and
/// formatting are not preserved.
pub fn edit_hosts(
    text: &str,
    add_masters: &[String],
    add_nodes: &[String],
    remove: &[String],
) -> Result<String, ClusterfileError> {
    let mut docs = all_documents(text)?;
    let idx = docs
        .iter()
        .position(|d| d.get("kind").and_then(Value::as_str) == Some("Cluster"))
        .ok_or_else(|| cerr(0, "file", "kind", "no Cluster document"))?;
    let doc = docs[idx]
        .as_mapping_mut()
        .ok_or_else(|| cerr(idx + 1, "Cluster", "(document)", "not a mapping"))?;
    let spec = doc
        .entry("spec".into())
        .or_insert_with(|| Value::Mapping(Default::default()))
        .as_mapping_mut()
        .ok_or_else(|| cerr(idx + 1, "Cluster", "spec", "not a mapping"))?;
    // A Clusterfile may have no hosts yet (sealos: this machine).
    let hosts = spec
        .entry("hosts".into())
        .or_insert_with(|| Value::Sequence(Vec::new()))
        .as_sequence_mut()
        .ok_or_else(|| cerr(idx + 1, "Cluster", "spec.hosts", "not a list"))?;
    for g in hosts.iter_mut() {
        if let Some(ips) = g.get_mut("ips").and_then(Value::as_sequence_mut) {
            ips.retain(|ip| {
                ip.as_str()
                    .is_none_or(|s| !remove.iter().any(|r| strip_port(s) == strip_port(r)))
            });
        }
    }
    hosts.retain(|g| {
        g.get("ips")
            .and_then(Value::as_sequence)
            .is_some_and(|s| !s.is_empty())
    });
    for (list, role) in [(add_masters, "master"), (add_nodes, "node")] {
        if list.is_empty() {
            continue;
        }
        let mut m = serde_norway::Mapping::new();
        m.insert(
            "ips".into(),
            Value::Sequence(list.iter().map(|s| Value::String(s.clone())).collect()),
        );
        m.insert(
            "roles".into(),
            Value::Sequence(vec![Value::String(role.into())]),
        );
        hosts.push(Value::Mapping(m));
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_norway::to_string(d)
                .map_err(|e| cerr(i + 1, "?", "(document)", e.to_string()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"apiVersion: apps.sealos.io/v1beta1
kind: Cluster
metadata:
  name: default
spec:
  hosts:
  - ips: [10.0.0.1:22, node-a]
    roles: [master, amd64]
    env: [ROLE_ENV=m]
  - ips: [10.0.0.3:22]
    roles: [node, amd64]
    ssh: {user: root}
  image: [labring/kubernetes:v1.25.0, labring/calico:v3.24.1]
  env: [A=1, B=x=y]
  ssh: {passwd: hunter2}
status: {}
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
networking:
  podSubnet: 10.160.0.0/12
---
apiVersion: apps.sealos.io/v1beta1
kind: Config
metadata:
  name: calico
spec:
  path: manifests/calico.yaml
  match: labring/calico:v3.24.1
  strategy: merge
  data: |
    spec: {x: 1}
"#;

    #[test]
    fn accepts_a_sealos_clusterfile_as_is() {
        let c = Clusterfile::parse(GOOD).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.hosts[0].ips, vec!["10.0.0.1", "node-a"]);
        assert!(c.hosts[0].is_master());
        assert_eq!(c.env["B"], "x=y");
        assert_eq!(c.configs[0].doc, 3);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn a_cluster_without_a_name_is_default_as_in_sealos() {
        // What a template leaves when `.Values.clusterName` is unset, and no name at all.
        for text in [
            GOOD.replace("name: default", "name:"),
            GOOD.replace("name: default", "name: \"\""),
            GOOD.replace("metadata:\n  name: default\n", ""),
        ] {
            assert_eq!(Clusterfile::parse(&text).unwrap().name, "default", "{text}");
        }
    }

    #[test]
    fn no_hosts_or_only_loopback_means_this_machine() {
        let base = "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata: {name: one}\nspec:\n  image: [labring/kubernetes:v1.27.7]\n";
        assert!(means_this_machine(base));
        assert!(means_this_machine(&format!(
            "{base}  hosts:\n  - ips: [127.0.0.1:22]\n    roles: [master, amd64]\n"
        )));
        assert!(means_this_machine(&format!(
            "{base}  hosts:\n  - ips: [localhost]\n    roles: [master]\n"
        )));
        assert!(!means_this_machine(&format!(
            "{base}  hosts:\n  - ips: [127.0.0.1, 10.0.0.2]\n    roles: [master]\n"
        )));
        assert!(!means_this_machine(GOOD));
        assert!(!means_this_machine("apiVersion: v1\nkind: ConfigMap\n"));
    }

    #[test]
    fn ssh_credentials_are_removed_and_other_documents_kept_as_written() {
        let text = GOOD.replace(
            "podSubnet: 10.160.0.0/12",
            "podSubnet: 10.160.0.0/12 # a comment kept",
        );
        let out = without_ssh(&text).unwrap().unwrap();
        assert!(!out.contains("hunter2") && !out.contains("ssh"), "{out}");
        assert!(
            out.contains("podSubnet: 10.160.0.0/12 # a comment kept"),
            "{out}"
        );
        let c = Clusterfile::parse(&out).unwrap();
        let orig = Clusterfile::parse(&text).unwrap();
        assert_eq!(
            (c.hosts, c.images, c.env, c.configs),
            (orig.hosts, orig.images, orig.env, orig.configs)
        );
        assert!(c.warnings.is_empty());
        // Nothing to remove: the text is kept as it is.
        assert_eq!(without_ssh(&out).unwrap(), None);
        // A document that starts on its separator's line (`--- |`) cannot be split line by
        // line: the whole file is written anew, still without the credentials.
        let odd = format!("{text}--- |\n  a scalar document\n");
        let out = without_ssh(&odd).unwrap().unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("a scalar document"), "{out}");
        assert!(Clusterfile::parse(&out).is_ok(), "{out}");
    }

    #[test]
    fn errors_point_at_document_and_field() {
        let cases = [
            (GOOD.replace("roles: [node, amd64]", "roles: [master, node]"), "Clusterfile document 1 (Cluster): spec.hosts[1].roles: a host group is either master or node, not both"),
            (GOOD.replace("[10.0.0.3:22]", "[10.0.0.1]"), "Clusterfile document 1 (Cluster): spec.hosts[1].ips: host `10.0.0.1` is also in spec.hosts[0]; a host belongs to one roles group"),
            (GOOD.replace("roles: [master, amd64]", "roles: [node]"), "Clusterfile document 1 (Cluster): spec.hosts: no host has the `master` role; the first master runs init"),
            (GOOD.replace("strategy: merge", "strategy: replace"), "Clusterfile document 3 (Config): spec.strategy: unknown strategy `replace`; allowed: merge, override, insert, append"),
            (GOOD.replace("name: default", "name: Default_1"), "Clusterfile document 1 (Cluster): metadata.name: `Default_1` must be 1-63 characters of a-z, 0-9 and `-`"),
            (GOOD.replace("env: [A=1, B=x=y]", "env: [A]"), "Clusterfile document 1 (Cluster): spec.env: `A` is not KEY=VALUE"),
            (GOOD.replace("path: manifests/calico.yaml", "path: ../etc/passwd"), "Clusterfile document 3 (Config): spec.path: `../etc/passwd` contains `..`; paths may not leave the bundle root"),
        ];
        for (text, want) in cases {
            assert_eq!(Clusterfile::parse(&text).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut bomb = String::from("apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\na0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for i in 1..9 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        let err = Clusterfile::parse(&bomb).unwrap_err().to_string();
        assert!(
            err.starts_with("Clusterfile document 1 (?): (document):"),
            "{err}"
        );
    }

    #[test]
    fn edit_hosts_adds_and_removes_keeping_other_documents() {
        let out = edit_hosts(GOOD, &[], &["10.0.0.9".into()], &["10.0.0.3".into()]).unwrap();
        let c = Clusterfile::parse(&out).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[1].ips, vec!["10.0.0.9"]);
        assert!(out.contains("kind: ClusterConfiguration"));
        assert_eq!(c.configs.len(), 1);
    }
}
