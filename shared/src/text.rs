//! Bounding text that others control before it is stored, logged or shown.

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` as one printable line of at most `max` bytes: control characters (newlines,
/// escape sequences that would repaint a terminal or forge a log line) become spaces.
pub fn one_line(s: &str, max: usize) -> String {
    let clean: String = clip(s, max)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clean
}

/// The first control character of `s`, if any (for refusing rather than cleaning).
pub fn control_char(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control())
}

/// Checks a label a caller chooses (a token's name, a description): `min` to `max`
/// characters, none of them a control character (a newline or an escape sequence would
/// forge log lines or repaint the terminal of whoever lists it).
pub fn check_label(what: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(format!(
            "{what} must be {min} to {max} characters; it has {n}"
        ));
    }
    if let Some(c) = control_char(s) {
        return Err(format!(
            "{what} holds the control character {:?}; use printable characters only",
            c
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_character_boundaries_and_made_one_line() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(one_line("a\nb\x1b[2Jc\r", 100), "a b [2Jc ");
        assert_eq!(one_line(&"x".repeat(2000), 512).len(), 512);
        assert_eq!(control_char("ok name"), None);
        assert_eq!(control_char("bad\u{1b}"), Some('\u{1b}'));
        assert_eq!(check_label("name", "ci-bot", 1, 64), Ok(()));
        assert_eq!(
            check_label("name", "a\nb", 1, 64),
            Err("name holds the control character '\\n'; use printable characters only".into())
        );
        assert_eq!(
            check_label("name", "", 1, 64),
            Err("name must be 1 to 64 characters; it has 0".into())
        );
    }
}

/// Kubernetes-style `$(NAME)` references in `s` replaced by `lookup(NAME)` (as sealos
/// expands an image's `Cmd`): a reference to an unknown name stays as written, `$$` is a
/// literal `$`, and any other `$` is left alone.
pub fn expand_refs(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod expand_tests {
    use super::expand_refs;

    #[test]
    fn references_expand_like_kubernetes_and_sealos() {
        let env = |n: &str| match n {
            "NAME" => Some("calico".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (input, want) in [
            (
                "helm install $(NAME) charts/$(NAME)",
                "helm install calico charts/calico",
            ),
            ("$(UNKNOWN) stays", "$(UNKNOWN) stays"),
            ("$$(NAME) is escaped", "$(NAME) is escaped"),
            (
                "shell $NAME and ${NAME} untouched",
                "shell $NAME and ${NAME} untouched",
            ),
            ("[$(EMPTY)]", "[]"),
            ("unterminated $(NAME", "unterminated $(NAME"),
            ("trailing $", "trailing $"),
        ] {
            assert_eq!(expand_refs(input, env), want, "{input}");
        }
    }
}
