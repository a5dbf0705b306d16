//! Lexing: splitting a template into literal text and actions, and an action into tokens.

use super::{terr, TemplateError};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
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
pub(super) enum Item {
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

pub(super) fn split(src: &str) -> Result<Vec<Item>, TemplateError> {
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
