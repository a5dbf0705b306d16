//! Evaluation: values, and rendering the syntax tree within the bounds.

use super::funcs::{arity, call};
use super::parse::{undefined, Arg, Branch, Node, Pipe};
use super::value::{field, short, Value};
use super::{
    terr, TemplateError, ENTRY_BYTES, MAX_EVAL_BYTES, MAX_OUTPUT_BYTES, MAX_RANGE_ITERATIONS,
    MAX_VALUE_DEPTH,
};

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
