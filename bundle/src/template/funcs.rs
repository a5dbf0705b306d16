//! The built-in functions and their helpers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use super::value::{short, Value};
use super::{terr, TemplateError, ENTRY_BYTES, MAX_EVAL_BYTES};

/// `v` as JSON (for `toJson` and `toYaml`): a missing value is `null`, a number that
/// parses as one is a number.
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Missing => J::Null,
        Value::Str(s) => J::String(s.clone()),
        Value::Bool(b) => J::Bool(*b),
        Value::Num(s) => {
            if let Ok(i) = s.parse::<i64>() {
                J::from(i)
            } else if let Ok(u) = s.parse::<u64>() {
                J::from(u)
            } else {
                s.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| J::String(s.clone()), J::Number)
            }
        }
        Value::List(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, x)| (k.clone(), to_json(x))).collect()),
    }
}

/// Go's `json.Marshal` escapes these within strings (the only place JSON can hold them).
fn go_json_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The parts of `s` split at `sep` as Go's `strings.Split` makes them (an empty `sep`
/// splits after each character), refusing more than the evaluation limit could hold.
fn go_split(f: &str, sep: &str, s: &str, line: usize) -> Result<Vec<String>, TemplateError> {
    let count = if sep.is_empty() {
        s.chars().count()
    } else {
        s.matches(sep).count() + 1
    };
    if count.saturating_mul(ENTRY_BYTES) > MAX_EVAL_BYTES {
        return Err(terr(
            line,
            format!("`{f}` would produce more than the evaluation limit"),
        ));
    }
    Ok(if sep.is_empty() {
        s.chars().map(String::from).collect()
    } else {
        s.split(sep).map(str::to_string).collect()
    })
}

/// `index`: one step into `v` by `key`.
fn index(v: &Value, key: &Value, line: usize) -> Result<Value, TemplateError> {
    let position = |len: usize| {
        let text = key.text();
        let i: i64 = text.trim().parse().map_err(|_| {
            terr(
                line,
                format!(
                    "`index` of {} needs an integer, got `{}`",
                    v.kind(),
                    short(&text)
                ),
            )
        })?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < len)
            .ok_or_else(|| terr(line, format!("`index` {i} is out of range (length {len})")))
    };
    Ok(match v {
        Value::Missing => Value::Missing,
        Value::Map(m) => m
            .get(key.text().as_ref())
            .cloned()
            .unwrap_or(Value::Missing),
        Value::List(items) => items
            .get(position(items.len())?)
            .cloned()
            .unwrap_or(Value::Missing),
        // Go gives the byte.
        Value::Str(s) => s
            .as_bytes()
            .get(position(s.len())?)
            .map_or(Value::Missing, |b| Value::Num(b.to_string())),
        other => return Err(terr(line, format!("`index` cannot index {}", other.kind()))),
    })
}

pub(super) fn call(
    f: &str,
    args: Vec<Value>,
    line: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, TemplateError> {
    arity(f, args.len(), line)?;
    let text = |i: usize| args[i].text();
    Ok(match f {
        "default" => {
            if args[1].truthy() {
                args[1].clone()
            } else {
                args[0].clone()
            }
        }
        "eq" | "ne" => {
            let first = text(0);
            let hit = args[1..].iter().any(|b| b.text() == first);
            Value::Bool(if f == "eq" { hit } else { !hit })
        }
        "not" => Value::Bool(!args[0].truthy()),
        "and" | "or" => {
            let want = f == "or";
            args.iter()
                .find(|v| v.truthy() == want)
                .cloned()
                .unwrap_or_else(|| args[args.len() - 1].clone())
        }
        "lower" => Value::Str(text(0).to_lowercase()),
        "upper" => Value::Str(text(0).to_uppercase()),
        "trim" => Value::Str(text(0).trim().to_string()),
        "quote" => Value::Str(format!("{:?}", text(0).as_ref())),
        // sprig: the pipeline's value is the last argument.
        "contains" => Value::Bool(text(1).contains(text(0).as_ref())),
        "hasPrefix" => Value::Bool(text(1).starts_with(text(0).as_ref())),
        "hasSuffix" => Value::Bool(text(1).ends_with(text(0).as_ref())),
        "trimPrefix" => {
            let s = text(1);
            Value::Str(s.strip_prefix(text(0).as_ref()).unwrap_or(&s).to_string())
        }
        "trimSuffix" => {
            let s = text(1);
            Value::Str(s.strip_suffix(text(0).as_ref()).unwrap_or(&s).to_string())
        }
        "replace" => {
            let (old, new, s) = (text(0), text(1), text(2));
            if old.is_empty() {
                Value::Str(s.into_owned())
            } else {
                // The result is charged by the caller; bound it before building it.
                let grows = new.len().saturating_sub(old.len());
                if s.matches(old.as_ref()).count().saturating_mul(grows) > MAX_EVAL_BYTES {
                    return Err(terr(
                        line,
                        "`replace` would produce more than the evaluation limit",
                    ));
                }
                Value::Str(s.replace(old.as_ref(), &new))
            }
        }
        "squote" => Value::Str(format!("'{}'", text(0))),
        "b64enc" => {
            use base64::Engine as _;
            Value::Str(base64::engine::general_purpose::STANDARD.encode(text(0).as_bytes()))
        }
        "b64dec" => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(0).as_bytes())
                .map_err(|e| terr(line, format!("`b64dec`: not base64: {e}")))?;
            Value::Str(String::from_utf8_lossy(&bytes).into_owned())
        }
        "indent" | "nindent" => {
            let n: usize = text(0).trim().parse().map_err(|_| {
                terr(
                    line,
                    format!("`{f}` needs a number of spaces, got `{}`", text(0)),
                )
            })?;
            let text = text(1);
            if n > 256 || text.len().saturating_mul(n + 1) > MAX_EVAL_BYTES {
                return Err(terr(
                    line,
                    format!("`{f} {n}` would produce more than the evaluation limit"),
                ));
            }
            let pad = " ".repeat(n);
            let body = text
                .split('\n')
                .map(|l| format!("{pad}{l}"))
                .collect::<Vec<_>>()
                .join("\n");
            Value::Str(if f == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        "toYaml" => {
            let y = match &args[0] {
                // A string is YAML's spelling of one (quoted when it must be), as before
                // lists and maps; a missing value stays an empty string.
                Value::Str(_) | Value::Missing => serde_norway::to_string(text(0).as_ref()),
                other => serde_norway::to_string(&to_json(other)),
            }
            .map_err(|e| terr(line, format!("`toYaml`: {e}")))?;
            Value::Str(y.trim_end_matches('\n').to_string())
        }
        "toJson" => {
            let j = serde_json::to_string(&to_json(&args[0]))
                .map_err(|e| terr(line, format!("`toJson`: {e}")))?;
            Value::Str(go_json_escape(j))
        }
        "semverCompare" => Value::Bool(semver_matches(&text(0), &text(1), line)?),
        "env" => Value::Str(env(&text(0)).unwrap_or_default()),
        "split" => Value::Map(Rc::new(
            go_split(f, &text(0), &text(1), line)?
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("_{i}"), Value::Str(s)))
                .collect(),
        )),
        "splitList" => Value::List(Rc::new(
            go_split(f, &text(0), &text(1), line)?
                .into_iter()
                .map(Value::Str)
                .collect(),
        )),
        "join" => {
            let sep = text(0);
            // sprig: a list's elements, missing ones left out; anything else as one.
            let parts: Vec<Cow<'_, str>> = match &args[1] {
                Value::List(items) => items
                    .iter()
                    .filter(|x| !matches!(x, Value::Missing))
                    .map(Value::text)
                    .collect(),
                Value::Missing => Vec::new(),
                other => vec![other.text()],
            };
            let len = parts
                .iter()
                .map(|p| p.len())
                .fold(0usize, usize::saturating_add);
            let seps = sep.len().saturating_mul(parts.len().saturating_sub(1));
            if len.saturating_add(seps) > MAX_EVAL_BYTES {
                return Err(terr(
                    line,
                    "`join` would produce more than the evaluation limit",
                ));
            }
            Value::Str(parts.join(sep.as_ref()))
        }
        "index" => {
            let mut args = args.iter();
            let mut cur = args.next().cloned().unwrap_or(Value::Missing);
            for key in args {
                cur = index(&cur, key, line)?;
            }
            cur
        }
        "len" => Value::Num(
            match &args[0] {
                Value::Missing => 0,
                Value::Str(s) => s.len(),
                Value::List(items) => items.len(),
                Value::Map(m) => m.len(),
                other => {
                    return Err(terr(
                        line,
                        format!("`len` of {} (`{}`)", other.kind(), short(&other.text())),
                    ))
                }
            }
            .to_string(),
        ),
        "toString" => Value::Str(text(0).into_owned()),
        // sprig (cast.ToInt): numbers truncated, numeric strings parsed, anything else 0.
        "int" | "int64" => Value::Num(
            match &args[0] {
                Value::Num(n) | Value::Str(n) => {
                    let n = n.trim();
                    n.parse::<i64>()
                        .ok()
                        .or_else(|| n.parse::<f64>().ok().map(|f| f.trunc() as i64))
                        .unwrap_or(0)
                }
                Value::Bool(b) => i64::from(*b),
                _ => 0,
            }
            .to_string(),
        ),
        "empty" => Value::Bool(!args[0].truthy()),
        // sprig: only a missing value and the empty string fail.
        "required" => match &args[1] {
            Value::Missing => return Err(terr(line, text(0))),
            Value::Str(s) if s.is_empty() => return Err(terr(line, text(0))),
            v => v.clone(),
        },
        "hasKey" => {
            Value::Bool(matches!(&args[0], Value::Map(m) if m.contains_key(text(1).as_ref())))
        }
        "printf" => Value::Str(printf(&text(0), &args[1..])),
        // sealos's own: the address `idx` into an IPv4 network, the network of a CIDR; as
        // sealos, a bad CIDR renders as its error text.
        "ipAt" => Value::Str(match text(0).parse::<Ipv4Cidr>() {
            Ok(net) => {
                let idx: u32 = text(1).trim().parse().unwrap_or(u32::MAX);
                net.at(idx)
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "out of ip address range".into())
            }
            Err(e) => format!("invalid cidr: {e}"),
        }),
        "ipNet" => Value::Str(match text(0).parse::<Ipv4Cidr>() {
            Ok(net) => net.to_string(),
            Err(e) => format!("invalid cidr: {e}"),
        }),
        "list" => Value::List(Rc::new(args)),
        "dict" => {
            // sprig: a key without a value maps to the empty string.
            let mut m = BTreeMap::new();
            let mut args = args.into_iter();
            while let Some(k) = args.next() {
                let v = args.next().unwrap_or_else(|| Value::Str(String::new()));
                m.insert(k.text().into_owned(), v);
            }
            Value::Map(Rc::new(m))
        }
        other => return Err(terr(line, format!("function `{other}` not defined"))),
    })
}

/// Go's `printf` for the verbs templates use: `%s`, `%v`, `%d` (the value's text), `%q`
/// (quoted) and `%%`; a verb without a value prints `%!v(MISSING)` as Go does, and any other
/// verb prints its value's text.
fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => match args.next() {
                Some(v) if verb == 'q' => out.push_str(&format!("{:?}", v.text())),
                Some(v) => out.push_str(&v.text()),
                None => out.push_str(&format!("%!{verb}(MISSING)")),
            },
            None => out.push_str("%!(NOVERB)"),
        }
    }
    out
}

/// An IPv4 network, for `ipAt` and `ipNet`.
struct Ipv4Cidr {
    base: u32,
    mask: u32,
    prefix: u32,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        let ip: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("invalid CIDR address: {s}"))?;
        let prefix: u32 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Ipv4Cidr {
            base: u32::from(ip) & mask,
            mask,
            prefix,
        })
    }
}

impl Ipv4Cidr {
    fn at(&self, idx: u32) -> Option<std::net::Ipv4Addr> {
        let last = self.base | !self.mask;
        self.base
            .checked_add(idx)
            .filter(|ip| *ip <= last)
            .map(std::net::Ipv4Addr::from)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", std::net::Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Whether `version` satisfies `constraint`, read as Masterminds/semver (what sprig's
/// `semverCompare` uses): `||` separates alternatives, `,` or spaces the comparators that
/// must all hold, `x`/`*` are wildcards; a leading `v` and missing minor or patch numbers
/// are allowed in the version.
fn semver_matches(constraint: &str, version: &str, line: usize) -> Result<bool, TemplateError> {
    let bad =
        |what: &str, e: &dyn fmt::Display| terr(line, format!("`semverCompare`: {what}: {e}"));
    let v = version.trim().trim_start_matches('v');
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let mut parts: Vec<&str> = core.split('.').collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    let version = semver::Version::parse(&format!("{}{rest}", parts.join(".")))
        .map_err(|e| bad(&format!("`{v}` is not a version"), &e))?;
    for alt in constraint.split("||") {
        // Comparators: `>= 1.2` may carry a space after its operator.
        let mut comps: Vec<String> = Vec::new();
        let mut pending = String::new();
        for tok in alt.split([',', ' ']).filter(|t| !t.is_empty()) {
            if tok.chars().all(|c| "<>=~^!".contains(c)) {
                pending.push_str(tok);
                continue;
            }
            let tok = format!("{pending}{tok}");
            pending.clear();
            let tok = tok.replacen(
                'v',
                "",
                usize::from(
                    tok.trim_start_matches(|c| "<>=~^".contains(c))
                        .starts_with('v'),
                ),
            );
            // A bare version is an exact one in Masterminds (Cargo would read a caret).
            let bare = !tok.starts_with(|c| "<>=~^".contains(c)) && !tok.contains(['x', 'X', '*']);
            comps.push(if bare { format!("={tok}") } else { tok });
        }
        if comps.is_empty() {
            return Err(bad(&format!("`{constraint}`"), &"an empty constraint"));
        }
        let req = semver::VersionReq::parse(&comps.join(", "))
            .map_err(|e| bad(&format!("`{constraint}` is not a constraint"), &e))?;
        if req.matches(&version) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every function templates may call.
pub(super) const FUNCS: [&str; 41] = [
    "default",
    "eq",
    "ne",
    "not",
    "and",
    "or",
    "lower",
    "upper",
    "trim",
    "quote",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "trimPrefix",
    "trimSuffix",
    "replace",
    "squote",
    "b64enc",
    "b64dec",
    "indent",
    "nindent",
    "toYaml",
    "semverCompare",
    "env",
    "split",
    "splitList",
    "join",
    "index",
    "len",
    "toString",
    "empty",
    "required",
    "hasKey",
    "list",
    "dict",
    "toJson",
    "int",
    "int64",
    "printf",
    "ipAt",
    "ipNet",
];

/// Checks that function `f` can take `got` arguments (at parse time, and again before each
/// call).
pub(super) fn arity(f: &str, got: usize, line: usize) -> Result<(), TemplateError> {
    let exactly = |n: usize| {
        if got == n {
            Ok(())
        } else {
            Err(terr(
                line,
                format!("`{f}` takes {n} argument(s), got {got}"),
            ))
        }
    };
    match f {
        "default" | "contains" | "hasPrefix" | "hasSuffix" | "trimPrefix" | "trimSuffix"
        | "indent" | "nindent" | "semverCompare" | "split" | "splitList" | "join" | "required"
        | "hasKey" | "ipAt" => exactly(2),
        "replace" => exactly(3),
        "not" | "lower" | "upper" | "trim" | "quote" | "squote" | "b64enc" | "b64dec"
        | "toYaml" | "env" | "len" | "toString" | "empty" | "toJson" | "int" | "int64"
        | "ipNet" => exactly(1),
        "eq" | "ne" if got < 2 => Err(terr(line, format!("`{f}` needs at least 2 arguments"))),
        "and" | "or" | "index" | "printf" if got == 0 => {
            Err(terr(line, format!("`{f}` needs arguments")))
        }
        "printf" => Ok(()),
        "eq" | "ne" | "and" | "or" | "index" | "list" | "dict" => Ok(()),
        other => Err(terr(line, format!("function `{other}` not defined"))),
    }
}
