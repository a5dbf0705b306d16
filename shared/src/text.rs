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
    }
}
