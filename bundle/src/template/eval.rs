//! Evaluation: values, and rendering the syntax tree within the bounds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use super::funcs::call;
use super::parse::{arity, undefined, Arg, Branch, Node, Pipe};
use super::{
    terr, TemplateError, ENTRY_BYTES, MAX_EVAL_BYTES, MAX_OUTPUT_BYTES, MAX_RANGE_ITERATIONS,
    MAX_VALUE_DEPTH,
};

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
fn field(v: &Value, names: &[String]) -> Value {
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

/// Why [`weigh`] stopped.
enum Over {
    Size,
    Depth,
}

/// Adds what `v` costs against [`MAX_EVAL_BYTES`] to `total`, stopping as soon as the total
/// is over it (so the work is bounded too), or `v` nests deeper than [`MAX_VALUE_DEPTH`];
/// `depth` is `v`'s own level.
fn weigh(v: &Value, depth: usize, total: &mut usize) -> Result<(), Over> {
    fn add(total: &mut usize, n: usize) -> Result<(), Over> {
        *total = total.saturating_add(n);
        if *total > MAX_EVAL_BYTES {
            Err(Over::Size)
        } else {
            Ok(())
        }
    }
    if depth > MAX_VALUE_DEPTH {
        return Err(Over::Depth);
    }
    let entry = ENTRY_BYTES + 2 * depth;
    match v {
        Value::Missing => Ok(()),
        Value::Str(s) | Value::Num(s) => add(total, s.len()),
        Value::Bool(b) => add(total, if *b { 4 } else { 5 }),
        Value::List(items) => {
            add(total, ENTRY_BYTES)?;
            for x in items.iter() {
                add(total, entry)?;
                weigh(x, depth + 1, total)?;
            }
            Ok(())
        }
        Value::Map(m) => {
            add(total, ENTRY_BYTES)?;
            for (k, x) in m.iter() {
                add(total, entry.saturating_add(k.len()))?;
                weigh(x, depth + 1, total)?;
            }
            Ok(())
        }
    }
}

pub(super) fn run(
    src: &str,
    nodes: &[Node],
    root: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut r = Renderer {
        root: root.clone(),
        env,
        vars: Vec::new(),
        out: String::with_capacity(src.len()),
        computed: 0,
        iterations: 0,
    };
    r.nodes(nodes, &root)?;
    Ok(r.out)
}

/// One render: the root, the env, the variables in scope (innermost last), the output so
/// far, the bytes of values computed so far and the `range` iterations run so far.
struct Renderer<'a> {
    root: Value,
    env: &'a dyn Fn(&str) -> Option<String>,
    vars: Vec<(String, Value)>,
    out: String,
    computed: usize,
    iterations: usize,
}

impl Renderer<'_> {
    fn emit(&mut self, s: &str, line: usize) -> Result<(), TemplateError> {
        if self.out.len().saturating_add(s.len()) > MAX_OUTPUT_BYTES {
            return Err(terr(
                line,
                format!(
                    "rendered output exceeds the limit of {MAX_OUTPUT_BYTES} bytes ({} MiB)",
                    MAX_OUTPUT_BYTES >> 20
                ),
            ));
        }
        self.out.push_str(s);
        Ok(())
    }

    /// Counts a computed value against [`MAX_EVAL_BYTES`] and [`MAX_VALUE_DEPTH`].
    fn charge(&mut self, v: Value, line: usize) -> Result<Value, TemplateError> {
        let mut total = self.computed;
        let weighed = weigh(&v, 0, &mut total);
        self.computed = total;
        match weighed {
            Ok(()) => Ok(v),
            Err(Over::Size) => Err(terr(
                line,
                format!(
                    "values computed while rendering exceed the limit of {MAX_EVAL_BYTES} bytes ({} MiB)",
                    MAX_EVAL_BYTES >> 20
                ),
            )),
            Err(Over::Depth) => Err(terr(
                line,
                format!("values nest deeper than the limit of {MAX_VALUE_DEPTH} levels"),
            )),
        }
    }

    /// Renders `nodes` with `dot`; the variables they declare end with them.
    fn nodes(&mut self, nodes: &[Node], dot: &Value) -> Result<(), TemplateError> {
        let mark = self.vars.len();
        let rendered = self.list(nodes, dot);
        self.vars.truncate(mark);
        rendered
    }

    fn list(&mut self, nodes: &[Node], dot: &Value) -> Result<(), TemplateError> {
        for n in nodes {
            let mark = self.vars.len();
            let rendered = match n {
                Node::Text { text, line } => self.emit(text, *line),
                Node::Out(p) => {
                    let v = self.pipe(p, dot)?;
                    self.emit(&v.text(), p.line)
                }
                Node::Set {
                    name,
                    declare,
                    pipe,
                } => {
                    let v = self.pipe(pipe, dot)?;
                    if *declare {
                        self.vars.push((name.clone(), v));
                    } else {
                        let slot = self
                            .vars
                            .iter_mut()
                            .rev()
                            .find(|(n, _)| n == name)
                            .ok_or_else(|| undefined(pipe.line, name))?;
                        slot.1 = v;
                    }
                    // The declared variable outlives this node.
                    continue;
                }
                Node::If {
                    branches,
                    otherwise,
                } => self.if_(branches, otherwise, dot),
                Node::With {
                    var,
                    pipe,
                    body,
                    otherwise,
                } => self.with(var.as_deref(), pipe, body, otherwise, dot),
                Node::Range {
                    vars,
                    pipe,
                    body,
                    otherwise,
                } => self.range(vars, pipe, body, otherwise, dot),
            };
            // Variables a block's pipelines declared end with the block.
            self.vars.truncate(mark);
            rendered?;
        }
        Ok(())
    }

    fn if_(
        &mut self,
        branches: &[Branch],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), TemplateError> {
        for b in branches {
            let v = self.pipe(&b.cond, dot)?;
            let taken = v.truthy();
            if let Some(name) = &b.var {
                self.vars.push((name.clone(), v));
            }
            if taken {
                return self.nodes(&b.body, dot);
            }
        }
        self.nodes(otherwise, dot)
    }

    fn with(
        &mut self,
        var: Option<&str>,
        pipe: &Pipe,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), TemplateError> {
        let v = self.pipe(pipe, dot)?;
        if let Some(name) = var {
            self.vars.push((name.to_string(), v.clone()));
        }
        if v.truthy() {
            self.nodes(body, &v)
        } else {
            self.nodes(otherwise, dot)
        }
    }

    fn range(
        &mut self,
        vars: &[String],
        pipe: &Pipe,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), TemplateError> {
        let v = self.pipe(pipe, dot)?;
        // As Go does, the variables hold the whole value until the first iteration (and in
        // the `else` branch).
        for name in vars {
            self.vars.push((name.clone(), v.clone()));
        }
        let top = self.vars.len();
        match &v {
            Value::List(items) if !items.is_empty() => {
                for (i, x) in items.iter().enumerate() {
                    self.iteration(vars, top, || Value::Num(i.to_string()), x, pipe.line)?;
                    self.nodes(body, x)?;
                }
                Ok(())
            }
            Value::Map(m) if !m.is_empty() => {
                for (k, x) in m.iter() {
                    self.iteration(vars, top, || Value::Str(k.clone()), x, pipe.line)?;
                    self.nodes(body, x)?;
                }
                Ok(())
            }
            Value::List(_) | Value::Map(_) | Value::Missing => self.nodes(otherwise, dot),
            other => Err(terr(
                pipe.line,
                format!(
                    "`range` cannot iterate over {} (`{}`){}",
                    other.kind(),
                    short(&other.text()),
                    if matches!(other, Value::Str(_)) {
                        "; split a string into a list with `splitList`"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// Counts one `range` iteration and sets its variables (the top `vars.len()` below
    /// `top`) to `key` (when there are two) and `elem`.
    fn iteration(
        &mut self,
        vars: &[String],
        top: usize,
        key: impl FnOnce() -> Value,
        elem: &Value,
        line: usize,
    ) -> Result<(), TemplateError> {
        self.iterations += 1;
        if self.iterations > MAX_RANGE_ITERATIONS {
            return Err(terr(
                line,
                format!(
                    "`range` iterations exceed the limit of {MAX_RANGE_ITERATIONS} per template"
                ),
            ));
        }
        let base = top.saturating_sub(vars.len());
        let mut slots = self.vars.iter_mut().skip(base);
        if vars.len() == 2 {
            if let Some(slot) = slots.next() {
                slot.1 = key();
            }
        }
        if !vars.is_empty() {
            if let Some(slot) = slots.next() {
                slot.1 = elem.clone();
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            let Some((first, rest)) = cmd.split_first() else {
                return Err(terr(p.line, "missing value in pipeline"));
            };
            let v = match first {
                Arg::Func(f) if f == "and" || f == "or" => {
                    arity(f, rest.len() + usize::from(prev.is_some()), p.line)?;
                    let v = self.and_or(f == "or", rest, prev.take(), dot, p.line)?;
                    self.charge(v, p.line)?
                }
                Arg::Func(f) => {
                    let mut args = Vec::with_capacity(rest.len() + 1);
                    for a in rest {
                        args.push(self.arg(a, dot, p.line)?);
                    }
                    args.extend(prev.take());
                    let v = call(f, args, p.line, self.env)?;
                    self.charge(v, p.line)?
                }
                first => {
                    if !rest.is_empty() || prev.is_some() {
                        return Err(terr(
                            p.line,
                            "a value cannot take arguments; did you miss a function name?",
                        ));
                    }
                    self.arg(first, dot, p.line)?
                }
            };
            prev = Some(v);
        }
        Ok(prev.unwrap_or(Value::Missing))
    }

    /// `and` (`or` when `or`): the first argument that is false (true), else the last one;
    /// the arguments after the deciding one are not evaluated. `piped` is the last.
    fn and_or(
        &mut self,
        or: bool,
        args: &[Arg],
        piped: Option<Value>,
        dot: &Value,
        line: usize,
    ) -> Result<Value, TemplateError> {
        let mut last = Value::Missing;
        for a in args {
            let v = self.arg(a, dot, line)?;
            if v.truthy() == or {
                return Ok(v);
            }
            last = v;
        }
        Ok(piped.unwrap_or(last))
    }

    fn var(&self, name: &str, line: usize) -> Result<&Value, TemplateError> {
        if name.is_empty() {
            return Ok(&self.root);
        }
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| undefined(line, name))
    }

    fn arg(&mut self, a: &Arg, dot: &Value, line: usize) -> Result<Value, TemplateError> {
        let v = match a {
            Arg::Field(names) => field(dot, names),
            Arg::Var(name, names) => field(self.var(name, line)?, names),
            Arg::Lit(v) => v.clone(),
            Arg::Sub(p, names) => {
                // Charged inside, as its commands run.
                let v = self.pipe(p, dot)?;
                if names.is_empty() {
                    return Ok(v);
                }
                field(&v, names)
            }
            Arg::Func(f) => call(f, Vec::new(), line, self.env)?,
        };
        self.charge(v, line)
    }
}
