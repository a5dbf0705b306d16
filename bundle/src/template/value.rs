//! The values templates compute with: strings, booleans, numbers, lists and maps, read
//! from the render's data.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use super::MAX_VALUE_DEPTH;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// A missing key or variable, JSON `null`, `nil`: prints empty.
    Missing,
    Str(String),
    Bool(bool),
    /// A number, spelled as Go prints it.
    Num(String),
    List(Rc<Vec<Value>>),
    /// Keys in sorted order, as Go ranges over and prints maps.
    Map(Rc<BTreeMap<String, Value>>),
}

impl Value {
    pub(super) fn truthy(&self) -> bool {
        match self {
            Value::Missing => false,
            Value::Str(s) => !s.is_empty(),
            Value::Bool(b) => *b,
            Value::Num(s) => !matches!(s.parse::<f64>(), Ok(n) if n == 0.0),
            Value::List(items) => !items.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }

    /// The value as `{{ . }}` prints it.
    pub(super) fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Missing => Cow::Borrowed(""),
            Value::Str(s) | Value::Num(s) => Cow::Borrowed(s),
            Value::Bool(true) => Cow::Borrowed("true"),
            Value::Bool(false) => Cow::Borrowed("false"),
            Value::List(_) | Value::Map(_) => {
                let mut out = String::new();
                self.go_print(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Appends the value as Go's `%v` prints it within a list or map.
    fn go_print(&self, out: &mut String) {
        match self {
            Value::Missing => out.push_str("<nil>"),
            Value::List(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    x.go_print(out);
                }
                out.push(']');
            }
            Value::Map(m) => {
                out.push_str("map[");
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    x.go_print(out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.text()),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::Missing => "a missing value",
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Num(_) => "a number",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// `v` from JSON, or None when it nests deeper than [`MAX_VALUE_DEPTH`] (`depth` is its
/// own level).
pub(super) fn from_json(v: &serde_json::Value, depth: usize) -> Option<Value> {
    use serde_json::Value as J;
    if depth > MAX_VALUE_DEPTH {
        return None;
    }
    Some(match v {
        J::Null => Value::Missing,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => Value::Num(number_text(n)),
        J::String(s) => Value::Str(s.clone()),
        J::Array(items) => Value::List(Rc::new(
            items
                .iter()
                .map(|x| from_json(x, depth + 1))
                .collect::<Option<_>>()?,
        )),
        J::Object(m) => Value::Map(Rc::new(
            m.iter()
                .map(|(k, x)| Some((k.clone(), from_json(x, depth + 1)?)))
                .collect::<Option<_>>()?,
        )),
    })
}

/// A JSON number as Go prints the number YAML gave it: integers as integers, floats as
/// `%v` prints a float64.
fn number_text(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        n.as_f64().map_or_else(|| n.to_string(), go_float)
    }
}

/// `f` as Go's `%v` prints it: the shortest digits that read back as `f`, in exponent form
/// (`1e+06`) when the exponent is below -4 or at least 6.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        format!("{f}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// The value at the end of field chain `names` from `v`: missing when a key is missing or
/// a step is not a map.
pub(super) fn field(v: &Value, names: &[String]) -> Value {
    let mut cur = v;
    for name in names {
        match cur {
            Value::Map(m) => match m.get(name) {
                Some(x) => cur = x,
                None => return Value::Missing,
            },
            _ => return Value::Missing,
        }
    }
    cur.clone()
}

/// At most 40 characters of `s`, for error messages.
pub(super) fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
