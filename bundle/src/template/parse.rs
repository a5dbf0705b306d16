//! Parsing: the syntax tree (nodes, pipelines, arguments) built from the lexed items,
//! with variables, function names and argument counts checked.

use super::funcs::{arity, FUNCS};
use super::lex::{split, Item, Tok};
use super::value::Value;
use super::{check_size, terr, TemplateError, MAX_DEPTH};

pub(super) fn parse(src: &str) -> Result<Vec<Node>, TemplateError> {
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

#[derive(Debug, Clone)]
pub(super) enum Arg {
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
pub(super) struct Pipe {
    pub(super) cmds: Vec<Vec<Arg>>,
    pub(super) line: usize,
}

#[derive(Debug)]
pub(super) enum Node {
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
pub(super) struct Branch {
    pub(super) var: Option<String>,
    pub(super) cond: Pipe,
    pub(super) body: Vec<Node>,
}

/// What ended a list of nodes, and its line: `{{ end }}`, or `{{ else … }}` with the tokens
/// after `else`.
enum Stop {
    End(usize),
    Else(usize, Vec<Tok>),
}

pub(super) fn undefined(line: usize, name: &str) -> TemplateError {
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
