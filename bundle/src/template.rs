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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

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

fn run(
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

fn parse(src: &str) -> Result<Vec<Node>, TemplateError> {
    check_size(src.as_bytes())?;
    let items = split(src)?;
    let mut parser = Parser {
        items: &items,
        pos: 0,
        vars: Vec::new(),
    };
    let (nodes, stop) = parser.nodes(0)?;
    let (kw, line) = match stop {
        None => return Ok(nodes),
        Some(Stop::End(line)) => ("end", line),
        Some(Stop::Else(line, _)) => ("else", line),
    };
    Err(terr(
        line,
        format!("unexpected `{kw}` without a matching `if`"),
    ))
}

// ---- lexing -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `.A.B`; `.` alone is the empty chain.
    Field(Vec<String>),
    /// `$name.A.B`; `$` alone has the empty name.
    Var(String, Vec<String>),
    /// `.A.B` right after `)`: fields of the parenthesised pipeline's value.
    Chain(Vec<String>),
    Ident(String),
    Str(String),
    Num(String),
    Pipe,
    LParen,
    RParen,
    /// `:=`
    Declare,
    /// `=`
    Assign,
    Comma,
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

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The field names of a chain `.A.B` starting at `chars[i]` (a `.`, or anything else for an
/// empty chain), and the index after it. A `.` followed by no name is the dot itself when
/// `alone` allows it and it comes first, an error otherwise.
fn lex_fields(
    chars: &[char],
    mut i: usize,
    alone: bool,
    line: usize,
) -> Result<(Vec<String>, usize), TemplateError> {
    let mut names = Vec::new();
    while chars.get(i) == Some(&'.') {
        let start = i + 1;
        let mut end = start;
        while end < chars.len() && is_word(chars[end]) {
            end += 1;
        }
        if end == start {
            if alone && names.is_empty() {
                return Ok((names, end));
            }
            return Err(terr(
                line,
                "a `.` in a field chain must be followed by a name",
            ));
        }
        names.push(chars[start..end].iter().collect());
        i = end;
    }
    Ok((names, i))
}

fn lex(s: &str, line: usize) -> Result<Vec<Tok>, TemplateError> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
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
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2
            }
            '.' => {
                let chained = i > 0 && chars[i - 1] == ')';
                let (names, next) = lex_fields(&chars, i, true, line)?;
                i = next;
                toks.push(if chained {
                    Tok::Chain(names)
                } else {
                    Tok::Field(names)
                });
            }
            '$' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                let name = chars[start..i].iter().collect();
                let (names, next) = lex_fields(&chars, i, false, line)?;
                i = next;
                toks.push(Tok::Var(name, names));
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
            c if is_word(c) => {
                let start = i;
                while i < chars.len() && is_word(chars[i]) {
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
    /// A field chain from the dot (`.` itself when empty).
    Field(Vec<String>),
    /// A variable (`$` when the name is empty) and a field chain from it.
    Var(String, Vec<String>),
    Lit(Value),
    Func(String),
    /// A parenthesised pipeline and a field chain from its value.
    Sub(Pipe, Vec<String>),
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
    /// `{{ $name := pipe }}` (`declare`) or `{{ $name = pipe }}`: no output.
    Set {
        name: String,
        declare: bool,
        pipe: Pipe,
    },
    If {
        branches: Vec<Branch>,
        otherwise: Vec<Node>,
    },
    With {
        var: Option<String>,
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        /// None, the element's, or the index's (key's) and the element's.
        vars: Vec<String>,
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// `if` or `else if`: the condition, the variable it declares, the body.
#[derive(Debug)]
struct Branch {
    var: Option<String>,
    cond: Pipe,
    body: Vec<Node>,
}

/// What ended a list of nodes, and its line: `{{ end }}`, or `{{ else … }}` with the tokens
/// after `else`.
enum Stop {
    End(usize),
    Else(usize, Vec<Tok>),
}

const FUNCS: [&str; 41] = [
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

fn undefined(line: usize, name: &str) -> TemplateError {
    terr(line, format!("undefined variable `${name}`"))
}

/// The variables an action declares or assigns (`$x :=`, `$x =`, `$i, $v :=`), whether it
/// assigns, and the tokens of its pipeline.
fn split_decl(toks: &[Tok], line: usize) -> Result<(Vec<String>, bool, &[Tok]), TemplateError> {
    let (lhs, op, rest) = match toks {
        [a, Tok::Comma, b, op @ (Tok::Declare | Tok::Assign), rest @ ..] => (vec![a, b], op, rest),
        [a, op @ (Tok::Declare | Tok::Assign), rest @ ..] => (vec![a], op, rest),
        _ => return Ok((Vec::new(), false, toks)),
    };
    let mut names = Vec::new();
    for t in lhs {
        match t {
            Tok::Var(name, fields) if !name.is_empty() && fields.is_empty() => {
                names.push(name.clone())
            }
            _ => {
                return Err(terr(
                    line,
                    "only a variable (`$name`) can be declared or assigned",
                ))
            }
        }
    }
    Ok((names, *op == Tok::Assign, rest))
}

/// The parser's position in the items, and the variables in scope (innermost last).
struct Parser<'a> {
    items: &'a [Item],
    pos: usize,
    vars: Vec<String>,
}

impl<'a> Parser<'a> {
    /// Parses until `end`/`else` (returned) or the end of input; the variables declared in
    /// the list go out of scope at its end. `depth` is the number of enclosing blocks.
    fn nodes(&mut self, depth: usize) -> Result<(Vec<Node>, Option<Stop>), TemplateError> {
        let mark = self.vars.len();
        let parsed = self.list(depth);
        self.vars.truncate(mark);
        parsed
    }

    fn list(&mut self, depth: usize) -> Result<(Vec<Node>, Option<Stop>), TemplateError> {
        let items: &'a [Item] = self.items;
        let mut nodes = Vec::new();
        while let Some(item) = items.get(self.pos) {
            self.pos += 1;
            let (toks, line) = match item {
                Item::Text { text, line } => {
                    nodes.push(Node::Text {
                        text: text.clone(),
                        line: *line,
                    });
                    continue;
                }
                Item::Action { toks, line } => (toks, *line),
            };
            let kw = match toks.first() {
                None => return Err(terr(line, "empty action")),
                Some(Tok::Ident(k)) => k.as_str(),
                Some(_) => "",
            };
            match kw {
                "end" => {
                    if toks.len() > 1 {
                        return Err(terr(line, "`end` takes no arguments"));
                    }
                    return Ok((nodes, Some(Stop::End(line))));
                }
                "else" => return Ok((nodes, Some(Stop::Else(line, toks[1..].to_vec())))),
                "if" | "with" | "range" => {
                    if depth >= MAX_DEPTH {
                        return Err(terr(
                            line,
                            format!(
                                "`{kw}` blocks nest deeper than the limit of {MAX_DEPTH} levels"
                            ),
                        ));
                    }
                    // Variables the block's pipelines declare end with the block.
                    let mark = self.vars.len();
                    let node = self.block(kw, &toks[1..], line, depth);
                    self.vars.truncate(mark);
                    nodes.push(node?);
                }
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(terr(
                        line,
                        format!("`{kw}` is not supported in berth templates"),
                    ));
                }
                _ => nodes.push(self.action(toks, line)?),
            }
        }
        Ok((nodes, None))
    }

    /// An action that is not a block: a pipeline to print, or a variable to set.
    fn action(&mut self, toks: &[Tok], line: usize) -> Result<Node, TemplateError> {
        let (mut names, assign, rest) = split_decl(toks, line)?;
        let pipe = parse_pipe(rest, line, &self.vars)?;
        let Some(name) = names.pop() else {
            return Ok(Node::Out(pipe));
        };
        if !names.is_empty() {
            return Err(terr(line, "only `range` declares two variables"));
        }
        if !assign {
            self.vars.push(name.clone());
        } else if !self.vars.contains(&name) {
            return Err(undefined(line, &name));
        }
        Ok(Node::Set {
            name,
            declare: !assign,
            pipe,
        })
    }

    /// The block `kw` (`if`, `with` or `range`) whose action has `toks` after the keyword,
    /// through its `end`.
    fn block(
        &mut self,
        kw: &str,
        toks: &[Tok],
        line: usize,
        depth: usize,
    ) -> Result<Node, TemplateError> {
        let (mut names, pipe) = self.control(kw, toks, line)?;
        if kw == "range" {
            self.vars.extend(names.iter().cloned());
            let (body, stop) = self.nodes(depth + 1)?;
            let otherwise = self.otherwise(kw, line, depth, stop)?;
            return Ok(Node::Range {
                vars: names,
                pipe,
                body,
                otherwise,
            });
        }
        let mut var = names.pop();
        self.vars.extend(var.clone());
        if kw == "with" {
            let (body, stop) = self.nodes(depth + 1)?;
            let otherwise = self.otherwise(kw, line, depth, stop)?;
            return Ok(Node::With {
                var,
                pipe,
                body,
                otherwise,
            });
        }
        let mut branches = Vec::new();
        let mut cond = pipe;
        loop {
            let (body, stop) = self.nodes(depth + 1)?;
            branches.push(Branch {
                var: var.take(),
                cond,
                body,
            });
            match stop {
                Some(Stop::Else(else_line, etoks))
                    if etoks.len() > 1 && etoks[0] == Tok::Ident("if".into()) =>
                {
                    let (mut names, pipe) = self.control("if", &etoks[1..], else_line)?;
                    cond = pipe;
                    var = names.pop();
                    self.vars.extend(var.clone());
                }
                stop => {
                    let otherwise = self.otherwise(kw, line, depth, stop)?;
                    return Ok(Node::If {
                        branches,
                        otherwise,
                    });
                }
            }
        }
    }

    /// The variables declared and the pipeline of the action opening block `kw`.
    fn control(
        &self,
        kw: &str,
        toks: &[Tok],
        line: usize,
    ) -> Result<(Vec<String>, Pipe), TemplateError> {
        let (names, assign, rest) = split_decl(toks, line)?;
        if assign {
            return Err(terr(
                line,
                format!("`{kw}` can declare variables with `:=` but not assign them with `=`"),
            ));
        }
        if names.len() > 1 && kw != "range" {
            return Err(terr(line, "only `range` declares two variables"));
        }
        if rest.is_empty() && kw != "if" {
            return Err(terr(line, format!("missing value for `{kw}`")));
        }
        Ok((names, parse_pipe(rest, line, &self.vars)?))
    }

    /// The `else` branch of block `kw` opened on `line`, given what ended its body.
    fn otherwise(
        &mut self,
        kw: &str,
        line: usize,
        depth: usize,
        stop: Option<Stop>,
    ) -> Result<Vec<Node>, TemplateError> {
        let unclosed = || terr(line, format!("`{kw}` without a matching `end`"));
        match stop {
            None => Err(unclosed()),
            Some(Stop::End(_)) => Ok(Vec::new()),
            Some(Stop::Else(else_line, etoks)) => {
                if !etoks.is_empty() {
                    return Err(terr(
                        else_line,
                        if kw == "if" {
                            "`else` takes no arguments (use `else if`)".to_string()
                        } else {
                            format!("`else` in `{kw}` takes no arguments")
                        },
                    ));
                }
                let (body, stop) = self.nodes(depth + 1)?;
                match stop {
                    Some(Stop::End(_)) => Ok(body),
                    Some(Stop::Else(l, _)) => {
                        Err(terr(l, format!("a second `else` in one `{kw}`")))
                    }
                    None => Err(unclosed()),
                }
            }
        }
    }
}

/// A pipeline; `vars` are the variables in scope.
fn parse_pipe(toks: &[Tok], line: usize, vars: &[String]) -> Result<Pipe, TemplateError> {
    let mut i = 0;
    let pipe = parse_pipe_inner(toks, &mut i, line, 0, vars)?;
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
    vars: &[String],
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
                let sub = parse_pipe_inner(toks, i, line, depth + 1, vars)?;
                if toks.get(*i) != Some(&Tok::RParen) {
                    return Err(terr(line, "unclosed `(`"));
                }
                *i += 1;
                let chain = match toks.get(*i) {
                    Some(Tok::Chain(names)) => {
                        *i += 1;
                        names.clone()
                    }
                    _ => Vec::new(),
                };
                cur.push(Arg::Sub(sub, chain));
            }
            Tok::Field(names) => cur.push(Arg::Field(names.clone())),
            Tok::Var(name, names) => {
                if !name.is_empty() && !vars.contains(name) {
                    return Err(undefined(line, name));
                }
                cur.push(Arg::Var(name.clone(), names.clone()));
            }
            Tok::Chain(_) => return Err(terr(line, "unexpected field chain after `)`")),
            Tok::Str(s) => cur.push(Arg::Lit(Value::Str(s.clone()))),
            Tok::Num(s) => cur.push(Arg::Lit(Value::Num(s.clone()))),
            Tok::Ident(w) if w == "true" || w == "false" => {
                cur.push(Arg::Lit(Value::Bool(w == "true")))
            }
            Tok::Ident(w) if w == "nil" => cur.push(Arg::Lit(Value::Missing)),
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
            Tok::Declare => return Err(terr(line, "unexpected `:=`")),
            Tok::Assign => return Err(terr(line, "unexpected `=`")),
            Tok::Comma => return Err(terr(line, "unexpected `,`")),
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

// ---- evaluation ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Value {
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
    fn truthy(&self) -> bool {
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
    fn text(&self) -> Cow<'_, str> {
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

    fn kind(&self) -> &'static str {
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
fn from_json(v: &serde_json::Value, depth: usize) -> Option<Value> {
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
fn short(s: &str) -> String {
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

fn call(
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
            // A field of a string is missing (Go would fail); `.` is the dot, `$` the root.
            ("{{ .A.B }}|{{ .A.B | default \"d\" }}", "|d"),
            ("{{ range splitList \",\" \"a,b\" }}[{{ . }}]{{ end }}", "[a][b]"),
            ("{{ range $k, $v := . }}{{ if hasPrefix \"C\" $k }}{{ $k }}={{ $v }};{{ end }}{{ end }}", "COLON=a: b;CRI=containerd;"),
            ("{{ env \"A\" }}|{{ env \"NOPE\" }}|{{ $.PORT }}", "x||2379"),
            ("{{ $x := .A }}{{ $x }}{{ $x = \"y\" }}{{ $x }}{{ with $x := \"z\" }}{{ $x }}{{ end }}{{ $x }}", "xyzy"),
            ("{{ with .A }}{{ . }}{{ end }}{{ with .B }}b{{ else }}nob{{ end }}", "xnob"),
            ("{{ if 0 }}a{{ else }}b{{ end }}{{ if 1 }}c{{ end }}{{ 0 | default 5 }}", "bc5"),
            ("{{ if $v := .PORT }}{{ $v }}{{ end }}", "2379"),
            ("{{ .VER | splitList \".\" | join \"-\" }} {{ len .VER }} {{ len (split \".\" .VER) }}", "v1-27-7 7 3"),
            ("{{ list 1 \"a\" true nil }} {{ dict \"k\" \"v\" \"odd\" }}", "[1 a true <nil>] map[k:v odd:]"),
            ("{{ or .B .EMPTY }}|{{ and .A .PORT }}|{{ or .B (required \"short-circuit\" .A) }}|{{ and .B (required \"never\" .B) }}", "|2379|x|"),
            ("{{ toJson (dict \"a\" (list 1 \"<b>\")) }}", "{\"a\":[1,\"\\u003cb\\u003e\"]}"),
            ("{{ true | toYaml }} {{ .NONE | toYaml }}", "true ''"),
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
            ("{{ .A }}\n{{ nosuch .A }}", "line 2: function `nosuch` not defined; available: default, eq, ne, not, and, or, lower, upper, trim, quote, contains, hasPrefix, hasSuffix, trimPrefix, trimSuffix, replace, squote, b64enc, b64dec, indent, nindent, toYaml, semverCompare, env, split, splitList, join, index, len, toString, empty, required, hasKey, list, dict, toJson, int, int64, printf, ipAt, ipNet"),
            ("{{ define \"x\" }}{{ end }}", "line 1: `define` is not supported in berth templates"),
            ("{{ range }}{{ end }}", "line 1: missing value for `range`"),
            ("x\n{{ with .A }}y", "line 2: `with` without a matching `end`"),
            ("{{ range .A }}{{ else }}{{ else }}{{ end }}", "line 1: a second `else` in one `range`"),
            ("{{ with .A }}{{ else if .B }}{{ end }}", "line 1: `else` in `with` takes no arguments"),
            ("a\n{{ required \"need B\" .B }}", "line 2: need B"),
            ("{{ range .A }}{{ end }}", "line 1: `range` cannot iterate over a string (`x`); split a string into a list with `splitList`"),
            ("{{ $x }}", "line 1: undefined variable `$x`"),
            ("{{ if .A }}{{ $x := 1 }}{{ end }}{{ $x }}", "line 1: undefined variable `$x`"),
            ("{{ $x = 1 }}", "line 1: undefined variable `$x`"),
            ("{{ .A := 1 }}", "line 1: only a variable (`$name`) can be declared or assigned"),
            ("{{ $i, $v := .A }}", "line 1: only `range` declares two variables"),
            ("{{ index (splitList \",\" .A) 3 }}", "line 1: `index` 3 is out of range (length 1)"),
            ("{{ index .A \"k\" }}", "line 1: `index` of a string needs an integer, got `k`"),
            ("{{ len true }}", "line 1: `len` of a boolean (`true`)"),
            ("{{ .A. }}", "line 1: a `.` in a field chain must be followed by a name"),
            ("{{ break }}", "line 1: `break` is not supported in berth templates"),
            ("{{ default .A }}", "line 1: `default` takes 2 argument(s), got 1"),
            ("{{ \"abc }}", "line 1: unclosed action: `{{` without `}}`"),
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
    fn clusterfile_data() -> serde_json::Value {
        serde_json::json!({"Values": {
            "masters": ["10.0.0.1", "10.0.0.2"],
            "nodes": [],
            "images": ["labring/kubernetes:v1.27.7", "labring/helm:v3.9.4"],
            "ssh": {"user": "root", "port": 22},
            "podCIDR": "100.64.0.0/10",
            "enabled": true,
            "hosts": [{"ips": ["10.0.0.1"], "roles": ["master", "amd64"]}],
            "ratio": 1.5,
            "million": 1_000_000.0,
            "nothing": null,
        }})
    }

    #[test]
    fn renders_clusterfile_templates() {
        let data = clusterfile_data();
        let env = |name: &str| (name == "SSH_PASSWORD").then(|| "s3cret".to_string());
        let cases = [
            (
                "masters:{{- range .Values.masters }}\n  - {{ . }}{{ end }}",
                "masters:\n  - 10.0.0.1\n  - 10.0.0.2",
            ),
            (
                "{{ range $i, $ip := .Values.masters }}{{ $i }}={{ $ip }};{{ end }}",
                "0=10.0.0.1;1=10.0.0.2;",
            ),
            ("{{ range $ip := .Values.masters }}{{ $ip }} {{ end }}", "10.0.0.1 10.0.0.2 "),
            (
                "{{ range .Values.nodes }}{{ . }}{{ else }}no nodes{{ end }}{{ range .Values.missing }}x{{ else }}, none{{ end }}",
                "no nodes, none",
            ),
            (
                "{{ with .Values.ssh }}{{ .user }}@:{{ .port }}{{ end }}{{ with .Values.missing }}x{{ else }} none{{ end }}",
                "root@:22 none",
            ),
            (
                "hosts:{{ toYaml .Values.hosts | nindent 2 }}",
                "hosts:\n  - ips:\n    - 10.0.0.1\n    roles:\n    - master\n    - amd64",
            ),
            (
                "ssh:\n{{ toYaml .Values.ssh | indent 2 }}\n{{ toYaml .Values.nodes }} {{ toYaml .Values.ssh.port }} {{ toYaml .Values.podCIDR }}",
                "ssh:\n  port: 22\n  user: root\n[] 22 100.64.0.0/10",
            ),
            ("{{ env \"SSH_PASSWORD\" }}|{{ env \"NOPE\" }}|", "s3cret||"),
            (
                "{{ .Values.missing | default \"x\" }} {{ .Values.nodes | default \"none\" }} {{ .Values.nothing | default \"null\" }}",
                "x none null",
            ),
            ("{{ index .Values.images 1 }}", "labring/helm:v3.9.4"),
            ("{{ index .Values.hosts 0 \"roles\" 1 }}|{{ index .Values \"missing\" }}|", "amd64||"),
            ("{{ len .Values.images }} {{ len .Values.ssh }} {{ len .Values.nodes }}", "2 2 0"),
            ("{{ join \",\" .Values.masters }}", "10.0.0.1,10.0.0.2"),
            (
                "{{ printf \"%s:53\" .Values.podCIDR }} {{ printf \"%d%% %q %v\" 5 \"a\" .Values.enabled }} {{ printf \"%s\" }}",
                "100.64.0.0/10:53 5% \"a\" true %!s(MISSING)",
            ),
            (
                "{{ ipAt \"10.96.0.0/18\" 10 }} {{ ipAt (default \"10.96.0.0/18\" .Values.none) 10 }} {{ ipNet \"10.96.3.4/18\" }} {{ ipAt \"10.0.0.0/30\" 9 }} {{ ipNet \"bad\" }}",
                "10.96.0.10 10.96.0.10 10.96.0.0/18 out of ip address range invalid cidr: invalid CIDR address: bad",
            ),
            // sealos's own Clusterfile template: `default 22 .Values.ssh.port | int`.
            (
                "{{ default 22 .Values.ssh.port | int }} {{ \"2.9\" | int }} {{ int \"x\" }} {{ int true }} {{ default 22 .Values.nope | int64 }}",
                "22 2 0 1 22",
            ),
            ("{{ (split \":\" (index .Values.images 0))._1 }}", "v1.27.7"),
            (
                "{{ $p := split \":\" (index .Values.images 0) }}{{ $p._0 }}",
                "labring/kubernetes",
            ),
            (
                "{{ range .Values.masters }}{{ $.Values.podCIDR }};{{ end }}",
                "100.64.0.0/10;100.64.0.0/10;",
            ),
            (
                "{{ if and .Values.enabled (eq .Values.ssh.port 22) }}yes{{ else }}no{{ end }}",
                "yes",
            ),
            (
                "{{ range $k, $v := .Values.ssh }}{{ $k }}={{ $v }} {{ end }}",
                "port=22 user=root ",
            ),
            (
                "{{ (index .Values.hosts 0).roles }} {{ .Values.ssh }} {{ .Values.nodes }}",
                "[master amd64] map[port:22 user:root] []",
            ),
            (
                "{{ toJson .Values.ssh }} {{ .Values.hosts | toJson }}",
                r#"{"port":22,"user":"root"} [{"ips":["10.0.0.1"],"roles":["master","amd64"]}]"#,
            ),
            (
                "{{ if hasKey .Values.ssh \"user\" }}y{{ end }}{{ if empty .Values.nodes }}e{{ end }}{{ if not (hasKey .Values.ssh \"x\") }}n{{ end }}",
                "yen",
            ),
            (
                "{{ $l := list \"a\" 1 }}{{ toYaml (dict \"k\" $l \"b\" true) }}",
                "b: true\nk:\n- a\n- 1",
            ),
            ("{{ .Values.ssh.port | toString | quote }}", "\"22\""),
            ("{{ .Values.ratio }} {{ .Values.million }}", "1.5 1e+06"),
            ("{{ .Values.hosts.ips }}|{{ .Values.podCIDR.x }}|{{ .Values.nothing }}|", "|||"),
            (
                "{{ $found := false }}{{ range .Values.masters }}{{ if eq . \"10.0.0.2\" }}{{ $found = true }}{{ end }}{{ end }}{{ $found }}",
                "true",
            ),
            (
                "{{ range .Values.hosts }}{{ range .roles }}{{ . }}@{{ index $.Values.masters 0 }} {{ end }}{{ end }}",
                "master@10.0.0.1 amd64@10.0.0.1 ",
            ),
            ("{{ required \"need masters\" .Values.masters | len }}", "2"),
        ];
        for (src, want) in cases {
            assert_eq!(render_data(src, &data, &env).unwrap(), want, "{src}");
            assert!(check(src).is_ok(), "{src}");
        }
        let err = |src: &str| render_data(src, &data, &env).unwrap_err().to_string();
        assert_eq!(
            err("a: 1\nb: {{ required \"need x\" .Values.x }}"),
            "line 2: need x"
        );
        assert_eq!(
            err("{{ index .Values.images 2 }}"),
            "line 1: `index` 2 is out of range (length 2)"
        );
        assert_eq!(
            err("{{ range .Values.ssh.port }}{{ end }}"),
            "line 1: `range` cannot iterate over a number (`22`)"
        );
    }

    #[test]
    fn clusterfile_templates_are_bounded() {
        let data = serde_json::json!({"Values": {
            "big": (0..200_000).collect::<Vec<u32>>(),
            "few": (0..1000).collect::<Vec<u32>>(),
            "long": "y".repeat(100),
            "huge": "z".repeat(2 << 20),
        }});
        let none = |_: &str| None;
        let err = |src: &str| render_data(src, &data, &none).unwrap_err().to_string();
        // A long list, and nested ranges with empty bodies.
        assert_eq!(
            err("{{ range .Values.big }}{{ end }}"),
            "line 1: `range` iterations exceed the limit of 100000 per template"
        );
        assert_eq!(
            err("x\n{{ range .Values.few }}{{ range $.Values.few }}{{ end }}{{ end }}"),
            "line 2: `range` iterations exceed the limit of 100000 per template"
        );
        // Up to the limit is fine: 315 + 315² = 99,540 iterations.
        let src = "{{ range .Values.few }}{{ range $.Values.few }}{{ end }}{{ end }}";
        let few = serde_json::json!({"Values": {"few": (0..315).collect::<Vec<u32>>()}});
        assert_eq!(render_data(src, &few, &none).unwrap(), "");
        assert_eq!(
            err("{{ range .Values.big }}{{ $.Values.long }}{{ end }}"),
            "line 1: rendered output exceeds the limit of 4194304 bytes (4 MiB)"
        );
        // A list doubling at every iteration, and one nesting deeper at every iteration.
        assert_eq!(
            err("{{ $x := list 1 }}{{ range .Values.few }}{{ $x = list $x $x }}{{ end }}"),
            "line 1: values computed while rendering exceed the limit of 16777216 bytes (16 MiB)"
        );
        assert_eq!(
            err("{{ $x := list }}{{ range .Values.few }}{{ $x = list $x }}{{ end }}"),
            "line 1: values nest deeper than the limit of 128 levels"
        );
        let src = format!("{{{{ 1{} }}}}", " | list".repeat(200));
        assert_eq!(
            err(&src),
            "line 1: values nest deeper than the limit of 128 levels"
        );
        assert_eq!(
            err("{{ splitList \"\" .Values.huge }}"),
            "line 1: `splitList` would produce more than the evaluation limit"
        );
        assert_eq!(
            err("{{ join .Values.huge (splitList \"\" .Values.long) }}"),
            "line 1: `join` would produce more than the evaluation limit"
        );
        // Every block kind counts towards the nesting limit.
        for open in [
            "{{ with .Values }}",
            "{{ range .Values.few }}",
            "{{ if true }}{{ with 1 }}",
        ] {
            let src = open.repeat(MAX_DEPTH + 1) + &"{{ end }}".repeat(2 * MAX_DEPTH + 2);
            assert!(
                check(&src)
                    .unwrap_err()
                    .message
                    .contains("blocks nest deeper than the limit of 64 levels"),
                "{open}"
            );
        }
        // Data nesting deeper than the limit.
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_VALUE_DEPTH + 1 {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(
            render_data("x", &deep, &none).unwrap_err().to_string(),
            "line 1: the data nests deeper than the limit of 128 levels"
        );
    }
}
