//! The template limits: inputs that used to overflow the stack or grow without bound now
//! return the exact error, naming the line and the limit.
#![allow(clippy::unwrap_used)]

use berth_bundle::template::{
    check, decode, render, MAX_DEPTH, MAX_EVAL_BYTES, MAX_OUTPUT_BYTES, MAX_TEMPLATE_BYTES,
};
use std::collections::BTreeMap;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Both the renderer and the parse-only check give `want`.
fn refused(src: &str, want: &str) {
    assert_eq!(render(src, &env(&[])).unwrap_err().to_string(), want);
    assert_eq!(check(src).unwrap_err().to_string(), want);
}

#[test]
fn twenty_thousand_nested_ifs_overflowed_the_stack() {
    let src = "{{if true}}".repeat(20_000) + &"{{end}}".repeat(20_000);
    refused(
        &src,
        "line 1: `if` blocks nest deeper than the limit of 64 levels",
    );
    // One per line: the error points at the first `if` too deep.
    let src = "{{ if true }}\n".repeat(20_000) + &"{{ end }}\n".repeat(20_000);
    refused(
        &src,
        "line 65: `if` blocks nest deeper than the limit of 64 levels",
    );
    // Unclosed, and under `else`.
    let src = "{{ if .A }}{{ else }}".repeat(20_000);
    refused(
        &src,
        "line 1: `if` blocks nest deeper than the limit of 64 levels",
    );
}

#[test]
fn twenty_thousand_nested_parentheses_overflowed_the_stack() {
    let src = format!("{{{{ {}.A{} }}}}", "(".repeat(20_000), ")".repeat(20_000));
    refused(
        &src,
        "line 1: parentheses nest deeper than the limit of 64 levels",
    );
    let src = format!("x\n{{{{ if {} }}}}{{{{ end }}}}", "(not ".repeat(20_000));
    refused(
        &src,
        "line 2: parentheses nest deeper than the limit of 64 levels",
    );
}

#[test]
fn nesting_up_to_the_limit_renders() {
    let ifs = |n: usize| "{{ if .A }}".repeat(n) + "deep" + &"{{ end }}".repeat(n);
    let e = env(&[("A", "x")]);
    assert_eq!(render(&ifs(MAX_DEPTH), &e).unwrap(), "deep");
    assert!(render(&ifs(MAX_DEPTH + 1), &e).is_err());
    let parens = |n: usize| format!("{{{{ {}.A{} }}}}", "(".repeat(n), ")".repeat(n));
    assert_eq!(render(&parens(MAX_DEPTH), &e).unwrap(), "x");
    assert!(render(&parens(MAX_DEPTH + 1), &e).is_err());
}

#[test]
fn a_2_mib_template_is_refused_before_parsing() {
    let src = "abc\n".repeat((2 << 20) / 4);
    // The limit is crossed after 262,144 lines of 4 bytes.
    refused(
        &src,
        "line 262145: template exceeds the size limit of 1048576 bytes (1 MiB)",
    );
    assert_eq!(
        decode(src.as_bytes()).unwrap_err().to_string(),
        "line 262145: template exceeds the size limit of 1048576 bytes (1 MiB)"
    );
    // Exactly at the limit is fine.
    let src = "x".repeat(MAX_TEMPLATE_BYTES);
    assert_eq!(render(&src, &env(&[])).unwrap().len(), MAX_TEMPLATE_BYTES);
}

#[test]
fn a_template_that_is_not_utf8_names_the_line() {
    assert_eq!(
        decode(b"ok\nok\n\xff{{ .A }}").unwrap_err().to_string(),
        "line 3: not UTF-8 text; templates must be UTF-8"
    );
}

#[test]
fn a_repeated_field_blew_up_the_output() {
    let big = "x".repeat(1 << 20);
    let e = env(&[("X", &big)]);
    let src = "{{ .X }}\n".repeat(5);
    assert_eq!(
        render(&src, &e).unwrap_err().to_string(),
        "line 4: rendered output exceeds the limit of 4194304 bytes (4 MiB)"
    );
    // A small value repeated across a whole template.
    let e = env(&[("X", &"y".repeat(100))]);
    let src = "{{.X}}".repeat(MAX_TEMPLATE_BYTES / 6);
    assert_eq!(
        render(&src, &e).unwrap_err().to_string(),
        "line 1: rendered output exceeds the limit of 4194304 bytes (4 MiB)"
    );
    // Exactly at the limit is fine.
    let e = env(&[("X", &big)]);
    let src = "{{ .X }}".repeat(MAX_OUTPUT_BYTES >> 20);
    assert_eq!(render(&src, &e).unwrap().len(), MAX_OUTPUT_BYTES);
}

#[test]
fn a_quote_pipeline_doubled_its_value_until_memory_ran_out() {
    // Every `quote` doubles the backslashes: 2^40 bytes without a bound.
    let src = format!("{{{{ \"\\\\\"{} }}}}", " | quote".repeat(40));
    assert_eq!(
        render(&src, &env(&[])).unwrap_err().to_string(),
        format!(
            "line 1: values computed while rendering exceed the limit of {MAX_EVAL_BYTES} bytes (16 MiB)"
        )
    );
    // Inside a condition, where nothing reaches the output.
    let src = format!(
        "{{{{ if eq (\"\\\\\"{}) \"\" }}}}{{{{ end }}}}",
        " | quote".repeat(40)
    );
    assert_eq!(
        render(&src, &env(&[])).unwrap_err().to_string(),
        "line 1: values computed while rendering exceed the limit of 16777216 bytes (16 MiB)"
    );
    // A handful of quotes is fine.
    assert_eq!(
        render("{{ .A | quote | quote }}", &env(&[("A", "x")])).unwrap(),
        r#""\"x\"""#
    );
}

#[test]
fn check_finds_errors_in_branches_not_taken() {
    let cases = [
        (
            "{{ if false }}\n{{ default .A }}{{ end }}",
            "line 2: `default` takes 2 argument(s), got 1",
        ),
        (
            "{{ if .NOPE }}{{ .A | upper \"x\" }}{{ end }}",
            "line 1: `upper` takes 1 argument(s), got 2",
        ),
        (
            "{{ if .NOPE }}{{ .A .B }}{{ end }}",
            "line 1: a value cannot take arguments; did you miss a function name?",
        ),
        (
            "{{ if .NOPE }}{{ eq .A }}{{ end }}",
            "line 1: `eq` needs at least 2 arguments",
        ),
        (
            "{{ if .NOPE }}{{ (and) }}{{ end }}",
            "line 1: `and` needs arguments",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(check(src).unwrap_err().to_string(), want, "{src}");
        assert_eq!(
            render(src, &env(&[])).unwrap_err().to_string(),
            want,
            "{src}"
        );
    }
    assert!(check("{{ if .A }}{{ .A | default \"x\" | upper }}{{ end }}").is_ok());
}
