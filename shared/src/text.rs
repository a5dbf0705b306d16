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
