//! sealos-compatible templates: the subset of Go's text/template that cluster images use.
//!
//! Supported: `{{ .KEY }}`, pipelines (`{{ .KEY | default "x" }}`), parentheses,
//! `if` / `else if` / `else` / `end`, comments `{{/* */}}`, trim markers `{{-` and `-}}`,
//! string, raw-string, number and boolean literals, and the functions `default`, `eq`, `ne`,
//! `not`, `and`, `or`, `lower`, `upper`, `trim` and `quote`, and the sprig functions real
//! cluster images use: `contains`, `hasPrefix`, `hasSuffix`, `trimPrefix`, `trimSuffix`,
//! `replace`, `squote`, `b64enc`, `b64dec`, `indent`, `nindent`, `toYaml` and
//! `semverCompare` (Masterminds constraints: `>=1.25.0-0`, `^1.2`, `~1.2`, `1.2.x`, `,` for
//! and, `||` for or; a leading `v` in the version is ignored). A missing key renders empty
//! (Go's `missingkey=zero` for string maps) unless `default` gives a value. Unknown
//! functions and wrong argument counts are parse errors (Go finds the latter only when the
//! action runs), so [`check`] finds every mistake that does not depend on the env.
//!
//! Written here rather than taken from a crate: the one Rust implementation of Go templates
//! (gtmpl 0.7) loops forever on an unclosed action, and templates come from bundles, which
//! are untrusted input. For the same reason everything is bounded, and exceeding a bound is
//! a [`TemplateError`] naming the line and the limit, never a crash or a hang:
//! - [`MAX_TEMPLATE_BYTES`] (1 MiB) of source. The templated files in cluster images
//!   (kubeadm, etcd, containerd and registry configs, CNI custom resources, Helm values)
//!   are a few KiB to tens of KiB; the large manifests (CRDs) are not templated.
//! - [`MAX_DEPTH`] (64) levels of `if` nesting, and separately 64 levels of parentheses
//!   within one action. Parsing and rendering recurse once per level, so this bounds the
//!   stack (about 128 frames at worst) far below any thread's stack; real templates nest 2
//!   or 3 deep.
//! - [`MAX_OUTPUT_BYTES`] (4 MiB) of rendered output, so `{{ .X }}` repeated over a large env
//!   value cannot fill the disk or memory.
//! - [`MAX_EVAL_BYTES`] (16 MiB) of values computed while rendering (every field lookup,
//!   literal and function result, counted each time it is evaluated). Without it a pipeline
//!   such as `{{ "\\" | quote | quote | … }}` doubles its value at every step and exhausts
//!   memory before anything reaches the output.

use std::collections::BTreeMap;
use std::fmt;

/// Largest template source accepted, bytes (1 MiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Deepest nesting of `if` blocks, and separately of parentheses within one action.
pub const MAX_DEPTH: usize = 64;
/// Largest rendered output, bytes (4 MiB).
pub const MAX_OUTPUT_BYTES: usize = 4 << 20;
/// Most bytes of values one render may compute (16 MiB).
pub const MAX_EVAL_BYTES: usize = 16 << 20;

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

/// Renders `src` with `env`.
pub fn render(src: &str, env: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    let nodes = parse(src)?;
    let mut r = Renderer {
        env,
        out: String::with_capacity(src.len()),
        computed: 0,
    };
    r.nodes(&nodes)?;
    Ok(r.out)
}

/// Parses `src` without rendering it: finds every error that does not depend on the env
/// (everything but the output and evaluation limits).
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

fn parse(src: &str) -> Result<Vec<Node>, TemplateError> {
    check_size(src.as_bytes())?;
    let items = split(src)?;
    let mut pos = 0;
    let (nodes, end) = parse_nodes(&items, &mut pos, 0)?;
    if let Some((kw, line)) = end {
        return Err(terr(
            line,
            format!("unexpected `{kw}` without a matching `if`"),
        ));
    }
    Ok(nodes)
}

// ---- lexing -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Ident(String),
    Str(String),
    Num(String),
    Pipe,
    LParen,
    RParen,
}

#[derive(Debug)]
enum Item {
    /// Literal text and the line it starts on.
    Text {
        text: String,
        line: usize,
    },
    Action {
        toks: Vec<Tok>,
        line: usize,
    },
}

fn split(src: &str) -> Result<Vec<Item>, TemplateError> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut line = 1usize;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let text_line = line;
        line += text.matches('\n').count();
        let after = &rest[start + 2..];
        let trim_prev =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_next {
            text = text.trim_start().to_string();
        }
        if trim_prev {
            text = text.trim_end().to_string();
        }
        if !text.is_empty() {
            items.push(Item::Text {
                text,
                line: text_line,
            });
        }
        let body_start = if trim_prev { 1 } else { 0 };
        let (body, consumed) = action_body(&after[body_start..], line)?;
        let body_lines = after[..body_start + consumed].matches('\n').count();
        let mut body = body.as_str();
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            if b.ends_with(char::is_whitespace) {
                body = b;
                trim_next = true;
            }
        }
        let trimmed = body.trim();
        if !(trimmed.starts_with("/*") && trimmed.ends_with("*/")) {
            items.push(Item::Action {
                toks: lex(trimmed, line)?,
                line,
            });
        }
        line += body_lines;
        rest = &after[body_start + consumed..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    if !text.is_empty() {
        items.push(Item::Text { text, line });
    }
    Ok(items)
}

/// The action body up to the closing `}}` (skipping quoted strings), and the bytes consumed
/// including the `}}`.
fn action_body(s: &str, line: usize) -> Result<(String, usize), TemplateError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Ok((s[..i].to_string(), i + 2)),
            _ => {}
        }
        i += 1;
    }
    Err(terr(line, "unclosed action: `{{` without `}}`"))
}

fn lex(s: &str, line: usize) -> Result<Vec<Tok>, TemplateError> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '|' => {
                toks.push(Tok::Pipe);
                i += 1
            }
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            '.' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.is_empty() {
                    return Err(terr(line, "`.` alone is not supported; use `.KEY`"));
                }
                if i < chars.len() && chars[i] == '.' {
                    return Err(terr(
                        line,
                        format!("nested field `.{name}.…` is not supported; keys are flat"),
                    ));
                }
                toks.push(Tok::Field(name));
            }
            '"' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(terr(line, "unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                Some('n') => v.push('\n'),
                                Some('t') => v.push('\t'),
                                Some('"') => v.push('"'),
                                Some('\\') => v.push('\\'),
                                Some(o) => {
                                    return Err(terr(line, format!("unknown escape `\\{o}`")))
                                }
                                None => return Err(terr(line, "unterminated string")),
                            }
                        }
                        Some(ch) => v.push(*ch),
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(v));
            }
            '`' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(terr(line, "unterminated raw string"));
                }
                toks.push(Tok::Str(chars[start..i].iter().collect()));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                toks.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if word(c) => {
                let start = i;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                toks.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => {
                return Err(terr(
                    line,
                    format!("unexpected character `{other}` in action"),
                ))
            }
        }
    }
    Ok(toks)
}

// ---- parsing ------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Arg {
    Field(String),
    Lit(Value),
    Func(String),
    Sub(Pipe),
}

#[derive(Debug, Clone)]
struct Pipe {
    cmds: Vec<Vec<Arg>>,
    line: usize,
}

#[derive(Debug)]
enum Node {
    Text {
        text: String,
        line: usize,
    },
    Out(Pipe),
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
}

const FUNCS: [&str; 23] = [
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
];

/// Parses until `end`/`else` (returned) or the end of input. `depth` is the number of
/// enclosing `if` blocks.
#[allow(clippy::type_complexity)]
fn parse_nodes(
    items: &[Item],
    pos: &mut usize,
    depth: usize,
) -> Result<(Vec<Node>, Option<(String, usize)>), TemplateError> {
    let mut nodes = Vec::new();
    while *pos < items.len() {
        let item = &items[*pos];
        *pos += 1;
        match item {
            Item::Text { text, line } => nodes.push(Node::Text {
                text: text.clone(),
                line: *line,
            }),
            Item::Action { toks, line } => match toks.first() {
                None => return Err(terr(*line, "empty action")),
                Some(Tok::Ident(k)) if k == "end" => {
                    if toks.len() > 1 {
                        return Err(terr(*line, "`end` takes no arguments"));
                    }
                    return Ok((nodes, Some(("end".into(), *line))));
                }
                Some(Tok::Ident(k)) if k == "else" => {
                    return Ok((nodes, Some(("else".into(), *line))));
                }
                Some(Tok::Ident(k)) if k == "if" => {
                    if depth >= MAX_DEPTH {
                        return Err(terr(
                            *line,
                            format!("`if` blocks nest deeper than the limit of {MAX_DEPTH} levels"),
                        ));
                    }
                    let mut branches = Vec::new();
                    let mut cond = parse_pipe(&toks[1..], *line)?;
                    let mut otherwise = Vec::new();
                    loop {
                        let (body, end) = parse_nodes(items, pos, depth + 1)?;
                        match end {
                            None => return Err(terr(*line, "`if` without a matching `end`")),
                            Some((kw, _)) if kw == "end" => {
                                branches.push((cond, body));
                                break;
                            }
                            Some((_, else_line)) => {
                                branches.push((cond.clone(), body));
                                // The `else` item is the one just consumed.
                                let Item::Action { toks: etoks, .. } = &items[*pos - 1] else {
                                    unreachable!("else is an action")
                                };
                                if etoks.len() > 2 && etoks[1] == Tok::Ident("if".into()) {
                                    cond = parse_pipe(&etoks[2..], else_line)?;
                                    continue;
                                }
                                if etoks.len() > 1 {
                                    return Err(terr(
                                        else_line,
                                        "`else` takes no arguments (use `else if`)",
                                    ));
                                }
                                let (body, end) = parse_nodes(items, pos, depth + 1)?;
                                match end {
                                    Some((kw, _)) if kw == "end" => otherwise = body,
                                    Some((_, l)) => {
                                        return Err(terr(l, "a second `else` in one `if`"))
                                    }
                                    None => {
                                        return Err(terr(*line, "`if` without a matching `end`"))
                                    }
                                }
                                break;
                            }
                        }
                    }
                    nodes.push(Node::If {
                        branches,
                        otherwise,
                    });
                }
                Some(Tok::Ident(k))
                    if ["range", "with", "define", "template", "block"].contains(&k.as_str()) =>
                {
                    return Err(terr(
                        *line,
                        format!("`{k}` is not supported in berth templates"),
                    ));
                }
                _ => nodes.push(Node::Out(parse_pipe(toks, *line)?)),
            },
        }
    }
    Ok((nodes, None))
}

fn parse_pipe(toks: &[Tok], line: usize) -> Result<Pipe, TemplateError> {
    let mut i = 0;
    let pipe = parse_pipe_inner(toks, &mut i, line, 0)?;
    if i != toks.len() {
        return Err(terr(line, "unexpected `)`"));
    }
    Ok(pipe)
}

/// `depth` is the number of enclosing parentheses.
fn parse_pipe_inner(
    toks: &[Tok],
    i: &mut usize,
    line: usize,
    depth: usize,
) -> Result<Pipe, TemplateError> {
    let mut cmds = vec![Vec::new()];
    while *i < toks.len() {
        let t = &toks[*i];
        *i += 1;
        let cur = cmds.last_mut().expect("one command at least");
        match t {
            Tok::Pipe => {
                if cur.is_empty() {
                    return Err(terr(line, "empty command before `|`"));
                }
                cmds.push(Vec::new());
            }
            Tok::RParen => {
                *i -= 1;
                break;
            }
            Tok::LParen => {
                if depth >= MAX_DEPTH {
                    return Err(terr(
                        line,
                        format!("parentheses nest deeper than the limit of {MAX_DEPTH} levels"),
                    ));
                }
                let sub = parse_pipe_inner(toks, i, line, depth + 1)?;
                if toks.get(*i) != Some(&Tok::RParen) {
                    return Err(terr(line, "unclosed `(`"));
                }
                *i += 1;
                cur.push(Arg::Sub(sub));
            }
            Tok::Field(f) => cur.push(Arg::Field(f.clone())),
            Tok::Str(s) | Tok::Num(s) => cur.push(Arg::Lit(Value::Str(s.clone()))),
            Tok::Ident(w) if w == "true" || w == "false" => {
                cur.push(Arg::Lit(Value::Bool(w == "true")))
            }
            Tok::Ident(w) if FUNCS.contains(&w.as_str()) => {
                if !cur.is_empty() {
                    return Err(terr(line, format!("function `{w}` must start a command")));
                }
                cur.push(Arg::Func(w.clone()));
            }
            Tok::Ident(w) => {
                return Err(terr(
                    line,
                    format!(
                        "function `{w}` not defined; available: {}",
                        FUNCS.join(", ")
                    ),
                ))
            }
        }
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err(terr(line, "missing value in pipeline"));
    }
    for (n, cmd) in cmds.iter().enumerate() {
        // A command after `|` gets the previous result as its last argument.
        let piped = usize::from(n > 0);
        match &cmd[0] {
            Arg::Func(f) => arity(f, cmd.len() - 1 + piped, line)?,
            _ if n > 0 => return Err(terr(line, "only a function can follow `|`")),
            _ if cmd.len() > 1 => {
                return Err(terr(
                    line,
                    "a value cannot take arguments; did you miss a function name?",
                ))
            }
            _ => {}
        }
    }
    Ok(Pipe { cmds, line })
}

/// Checks that function `f` can take `got` arguments (at parse time, and again before each
/// call).
fn arity(f: &str, got: usize, line: usize) -> Result<(), TemplateError> {
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
        | "indent" | "nindent" | "semverCompare" => exactly(2),
        "replace" => exactly(3),
        "not" | "lower" | "upper" | "trim" | "quote" | "squote" | "b64enc" | "b64dec"
        | "toYaml" => exactly(1),
        "eq" | "ne" if got < 2 => Err(terr(line, format!("`{f}` needs at least 2 arguments"))),
        "and" | "or" if got == 0 => Err(terr(line, format!("`{f}` needs arguments"))),
        "eq" | "ne" | "and" | "or" => Ok(()),
        other => Err(terr(line, format!("function `{other}` not defined"))),
    }
}

// ---- evaluation ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Missing,
    Str(String),
    Bool(bool),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Missing => false,
            Value::Str(s) => !s.is_empty(),
            Value::Bool(b) => *b,
        }
    }
    fn text(&self) -> &str {
        match self {
            Value::Missing => "",
            Value::Str(s) => s,
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// One render: the env, the output so far, and the bytes of values computed so far.
struct Renderer<'a> {
    env: &'a BTreeMap<String, String>,
    out: String,
    computed: usize,
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

    /// Counts a computed value against [`MAX_EVAL_BYTES`].
    fn charge(&mut self, v: Value, line: usize) -> Result<Value, TemplateError> {
        self.computed = self.computed.saturating_add(v.text().len());
        if self.computed > MAX_EVAL_BYTES {
            return Err(terr(
                line,
                format!(
                    "values computed while rendering exceed the limit of {MAX_EVAL_BYTES} bytes ({} MiB)",
                    MAX_EVAL_BYTES >> 20
                ),
            ));
        }
        Ok(v)
    }

    fn nodes(&mut self, nodes: &[Node]) -> Result<(), TemplateError> {
        for n in nodes {
            match n {
                Node::Text { text, line } => self.emit(text, *line)?,
                Node::Out(p) => {
                    let v = self.pipe(p)?;
                    self.emit(v.text(), p.line)?;
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if self.pipe(cond)?.truthy() {
                            self.nodes(body)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.nodes(otherwise)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe) -> Result<Value, TemplateError> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            let mut args = Vec::new();
            for a in &cmd[1..] {
                args.push(self.arg(a, p.line)?);
            }
            if let Some(v) = prev.take() {
                args.push(v);
            }
            prev = Some(match &cmd[0] {
                Arg::Func(f) => {
                    let v = call(f, args, p.line)?;
                    self.charge(v, p.line)?
                }
                first => {
                    if !args.is_empty() {
                        return Err(terr(
                            p.line,
                            "a value cannot take arguments; did you miss a function name?",
                        ));
                    }
                    self.arg(first, p.line)?
                }
            });
        }
        Ok(prev.unwrap_or(Value::Missing))
    }

    fn arg(&mut self, a: &Arg, line: usize) -> Result<Value, TemplateError> {
        match a {
            Arg::Field(k) => {
                let v = self
                    .env
                    .get(k)
                    .map(|v| Value::Str(v.clone()))
                    .unwrap_or(Value::Missing);
                self.charge(v, line)
            }
            Arg::Lit(v) => self.charge(v.clone(), line),
            // Charged inside, as its commands run.
            Arg::Sub(p) => self.pipe(p),
            Arg::Func(f) => {
                let v = call(f, Vec::new(), line)?;
                self.charge(v, line)
            }
        }
    }
}

fn call(f: &str, args: Vec<Value>, line: usize) -> Result<Value, TemplateError> {
    arity(f, args.len(), line)?;
    Ok(match f {
        "default" => {
            if args[1].truthy() {
                args[1].clone()
            } else {
                args[0].clone()
            }
        }
        "eq" | "ne" => {
            let hit = args[1..].iter().any(|b| b.text() == args[0].text());
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
        "lower" => Value::Str(args[0].text().to_lowercase()),
        "upper" => Value::Str(args[0].text().to_uppercase()),
        "trim" => Value::Str(args[0].text().trim().to_string()),
        "quote" => Value::Str(format!("{:?}", args[0].text())),
        // sprig: the pipeline's value is the last argument.
        "contains" => Value::Bool(args[1].text().contains(args[0].text())),
        "hasPrefix" => Value::Bool(args[1].text().starts_with(args[0].text())),
        "hasSuffix" => Value::Bool(args[1].text().ends_with(args[0].text())),
        "trimPrefix" => Value::Str(
            args[1]
                .text()
                .strip_prefix(args[0].text())
                .unwrap_or(args[1].text())
                .to_string(),
        ),
        "trimSuffix" => Value::Str(
            args[1]
                .text()
                .strip_suffix(args[0].text())
                .unwrap_or(args[1].text())
                .to_string(),
        ),
        "replace" => {
            let (old, new, s) = (args[0].text(), args[1].text(), args[2].text());
            if old.is_empty() {
                Value::Str(s.to_string())
            } else {
                // The result is charged by the caller; bound it before building it.
                let grows = new.len().saturating_sub(old.len());
                if s.matches(old).count().saturating_mul(grows) > MAX_EVAL_BYTES {
                    return Err(terr(
                        line,
                        "`replace` would produce more than the evaluation limit",
                    ));
                }
                Value::Str(s.replace(old, new))
            }
        }
        "squote" => Value::Str(format!("'{}'", args[0].text())),
        "b64enc" => {
            use base64::Engine as _;
            Value::Str(base64::engine::general_purpose::STANDARD.encode(args[0].text()))
        }
        "b64dec" => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(args[0].text())
                .map_err(|e| terr(line, format!("`b64dec`: not base64: {e}")))?;
            Value::Str(String::from_utf8_lossy(&bytes).into_owned())
        }
        "indent" | "nindent" => {
            let n: usize = args[0].text().trim().parse().map_err(|_| {
                terr(
                    line,
                    format!("`{f}` needs a number of spaces, got `{}`", args[0].text()),
                )
            })?;
            let text = args[1].text();
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
            // Values are strings here: YAML's spelling of one (quoted when it must be).
            let y = serde_norway::to_string(args[0].text())
                .map_err(|e| terr(line, format!("`toYaml`: {e}")))?;
            Value::Str(y.trim_end_matches('\n').to_string())
        }
        "semverCompare" => Value::Bool(semver_matches(args[0].text(), args[1].text(), line)?),
        other => return Err(terr(line, format!("function `{other}` not defined"))),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("A", "x"),
            ("PORT", "2379"),
            ("EMPTY", ""),
            ("CRI", "containerd"),
            ("VER", "v1.27.7"),
            ("LINES", "a\nb"),
            ("COLON", "a: b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn renders_the_sealos_subset() {
        let cases = [
            ("a={{ .A }} b={{ .B }}|", "a=x b=|"),
            (
                "{{ .B | default \"d\" }} {{ default \"d2\" .A }} {{ .EMPTY | default \"e\" }}",
                "d x e",
            ),
            ("{{ if eq .A \"x\" }}yes{{ else }}no{{ end }}", "yes"),
            (
                "{{ if .B }}b{{ else if eq .PORT \"2379\" }}port{{ else }}none{{ end }}",
                "port",
            ),
            ("{{ if not .B }}nob{{ end }}", "nob"),
            ("{{ if and .A (eq .PORT \"1\") }}1{{ else }}0{{ end }}", "0"),
            (
                "{{ if ne (default \"z\" .B) \"z\" }}set{{ else }}unset{{ end }}",
                "unset",
            ),
            ("a\n  {{- .A -}}  \nb", "axb"),
            ("{{/* a comment */}}k", "k"),
            ("{{ .A | upper | quote }}", "\"X\""),
            ("{{ `raw}}` }}", "raw}}"),
            // sprig, as labring's images use it.
            ("{{ if contains \"containerd\" .CRI }}c{{ end }}", "c"),
            ("{{ if hasPrefix \"v1.2\" .VER }}p{{ end }}{{ if hasSuffix \".7\" .VER }}s{{ end }}", "ps"),
            ("{{ .VER | trimPrefix \"v\" }} {{ trimSuffix \".7\" .VER }}", "1.27.7 v1.27"),
            ("{{ replace \".\" \"-\" .VER }} {{ .A | squote }}", "v1-27-7 'x'"),
            ("{{ .A | b64enc }} {{ \"eA==\" | b64dec }}", "eA== x"),
            ("k:{{ .LINES | nindent 2 }}\n{{ indent 1 .A }}", "k:\n  a\n  b\n x"),
            ("{{ .A | toYaml }} {{ .COLON | toYaml }}", "x 'a: b'"),
            ("{{ if semverCompare \">=1.26.0-0\" .VER }}new{{ else }}old{{ end }}", "new"),
            ("{{ if semverCompare \"<1.26\" .VER }}old{{ else }}new{{ end }}", "new"),
            ("{{ if semverCompare \"^1.27\" .VER }}1{{ end }}{{ if semverCompare \"~1.27.2\" .VER }}2{{ end }}{{ if semverCompare \"1.27.x\" .VER }}3{{ end }}", "123"),
            ("{{ if semverCompare \">= 1.20, < 1.27\" .VER }}in{{ else }}out{{ end }}", "out"),
            ("{{ if semverCompare \"<1.20 || >=1.27\" .VER }}either{{ end }}", "either"),
            ("{{ if semverCompare \"1.27.7\" .VER }}exact{{ end }}{{ if semverCompare \"1.27.6\" .VER }}no{{ end }}", "exact"),
            ("{{ if semverCompare \">=1.25\" (default \"1.24\" .NONE) }}y{{ else }}n{{ end }}", "n"),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &env()).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("a\nb\n{{ .A ", "line 3: unclosed action: `{{` without `}}`"),
            ("l1\n{{ if .A }}x", "line 2: `if` without a matching `end`"),
            ("x\n\n{{ end }}", "line 3: unexpected `end` without a matching `if`"),
            ("{{ .A }}\n{{ nosuch .A }}", "line 2: function `nosuch` not defined; available: default, eq, ne, not, and, or, lower, upper, trim, quote, contains, hasPrefix, hasSuffix, trimPrefix, trimSuffix, replace, squote, b64enc, b64dec, indent, nindent, toYaml, semverCompare"),
            ("{{ range .A }}{{ end }}", "line 1: `range` is not supported in berth templates"),
            ("{{ default .A }}", "line 1: `default` takes 2 argument(s), got 1"),
            ("{{ \"abc }}", "line 1: unclosed action: `{{` without `}}`"),
            ("{{ .A.B }}", "line 1: nested field `.A.…` is not supported; keys are flat"),
            ("{{ indent .A .A }}", "line 1: `indent` needs a number of spaces, got `x`"),
            ("{{ semverCompare \">=1\" .A }}", "line 1: `semverCompare`: `x` is not a version: unexpected character 'x' while parsing major version number"),
            ("{{ semverCompare \"!!\" .PORT }}", "line 1: `semverCompare`: `!!`: an empty constraint"),
            ("{{ replace \"a\" }}", "line 1: `replace` takes 3 argument(s), got 1"),
            ("{{ \"%%\" | b64dec }}", "line 1: `b64dec`: not base64: Invalid symbol 37, offset 0."),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &env()).unwrap_err().to_string(), want, "{src}");
        }
    }
}
