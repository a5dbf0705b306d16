//! Hook outputs: which names a hook may publish, the limits both sides hold them to, and
//! the parser of the `$BERTH_OUTPUTS` file.
//!
//! Outputs are an allow-list: a bundle declares, per hook, the names it publishes
//! (`outputs: {init: [JOIN_TOKEN]}`); nothing else is published. Some names are refused
//! even when declared, because they steer how later hooks run rather than what they do.

use std::collections::BTreeMap;

/// At most this many outputs per step.
pub const MAX_OUTPUTS: usize = 64;
/// Each value at most this many bytes.
pub const MAX_OUTPUT_VALUE: usize = 16 * 1024;
/// The `$BERTH_OUTPUTS` file (and a step's outputs, names and values) at most this many
/// bytes in all.
pub const MAX_OUTPUTS_FILE: usize = 64 * 1024;
/// A name at most this many bytes.
pub const MAX_OUTPUT_NAME: usize = 128;

/// The limits in words, for messages and docs.
pub const LIMITS: &str =
    "at most 64 outputs, each value at most 16 KiB, 64 KiB in all (names, `=` and newlines included)";

/// The names never allowed, in words, for messages and docs.
pub const FORBIDDEN: &str = "never BERTH_*, PATH, LD_*, BASH*, ENV, IFS, HOME, SHELL, SHELLOPTS, PS4, CDPATH, TMPDIR, GLIBC_TUNABLES, GCONV_PATH, *_PROXY/*_proxy, TLS trust (SSL_*, OPENSSL_*, CURL_*, REQUESTS_CA_BUNDLE, WGETRC), or an interpreter's code-loading variable (PERL5*, PERLLIB, PYTHON*, NODE_*, RUBYOPT, RUBYLIB, LUA_*, ERL_*, DOTNET_*, CLASSPATH, JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS, GIT_*)";

/// Names an output may never take, declared or not: they would steer how later hooks run
/// (`PATH`, `LD_PRELOAD`, `BASH_ENV`, `PERL5OPT`, a proxy, …) or forge berth's own values.
/// This is a backstop behind the allow-list, not a replacement for it.
pub fn forbidden_name(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "BERTH_", "LD_", "BASH", "PERL5", "PYTHON", "GIT_", "NODE_", "LUA_", "ERL_", "DOTNET_",
        "OPENSSL_", "SSL_", "CURL_",
    ];
    const EXACT: &[&str] = &[
        "PATH",
        "ENV",
        "IFS",
        "HOME",
        "SHELL",
        "SHELLOPTS",
        "PS4",
        "CDPATH",
        "TMPDIR",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "REQUESTS_CA_BUNDLE",
        "WGETRC",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || EXACT.contains(&name)
        || name.to_ascii_lowercase().ends_with("_proxy")
}

/// A valid output name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes, not forbidden.
pub fn valid_name(name: &str) -> bool {
    well_formed(name) && !forbidden_name(name)
}

fn well_formed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_OUTPUT_NAME
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a step's outputs are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputsError {
    #[error("$BERTH_OUTPUTS holds {0} bytes; {LIMITS}")]
    FileTooLarge(usize),
    #[error("$BERTH_OUTPUTS is not UTF-8 text")]
    NotText,
    #[error("line {line} of $BERTH_OUTPUTS is not KEY=VALUE with a name of letters, digits and `_` (not starting with a digit, at most 128 bytes)")]
    Malformed { line: usize },
    #[error("{0} outputs; {LIMITS}")]
    TooMany(usize),
    #[error("output `{key}` is {len} bytes long; {LIMITS}")]
    ValueTooLong { key: String, len: usize },
    #[error("outputs of {0} bytes in all; {LIMITS}")]
    TooLarge(usize),
    #[error("output `{0}` holds a control character (a NUL, a carriage return, an escape …); values are one line of text (tabs allowed)")]
    ControlCharacter(String),
}

/// What a hook wrote to `$BERTH_OUTPUTS`, read whole (the caller reads at most one byte
/// more than [`MAX_OUTPUTS_FILE`], so a larger file is seen as one): `KEY=VALUE` lines,
/// blank lines and `#` comments skipped, a later line overriding an earlier one. The
/// names the hook may publish (`may`) are kept; the others are returned apart so the
/// caller can say it dropped them. Over any limit, or malformed: an error, and nothing is
/// published — outputs are never cut.
#[allow(clippy::type_complexity)]
pub fn parse_file(
    bytes: &[u8],
    may: impl Fn(&str) -> bool,
) -> Result<(BTreeMap<String, String>, Vec<String>), OutputsError> {
    if bytes.len() > MAX_OUTPUTS_FILE {
        return Err(OutputsError::FileTooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| OutputsError::NotText)?;
    let mut kept = BTreeMap::new();
    let mut dropped = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| well_formed(k))
            .ok_or(OutputsError::Malformed { line: i + 1 })?;
        if may(k) {
            kept.insert(k.to_string(), v.to_string());
        } else if !dropped.iter().any(|d| d == k) {
            dropped.push(k.to_string());
        }
    }
    check(&kept)?;
    Ok((kept, dropped))
}

/// The limits on a step's outputs, as published (the agent before it reports them, the
/// controller when it receives them).
pub fn check(outputs: &BTreeMap<String, String>) -> Result<(), OutputsError> {
    if outputs.len() > MAX_OUTPUTS {
        return Err(OutputsError::TooMany(outputs.len()));
    }
    let mut total = 0;
    for (k, v) in outputs {
        // A value becomes env of every later hook on every host: a NUL would make every
        // spawn fail, a carriage return or escape would forge what logs show.
        if v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(OutputsError::ControlCharacter(k.chars().take(64).collect()));
        }
        if v.len() > MAX_OUTPUT_VALUE {
            return Err(OutputsError::ValueTooLong {
                key: k.chars().take(64).collect(),
                len: v.len(),
            });
        }
        total += k.len() + v.len() + 2;
    }
    if total > MAX_OUTPUTS_FILE {
        return Err(OutputsError::TooLarge(total));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str) -> bool {
        true
    }

    #[test]
    fn names_that_steer_hooks_are_forbidden_and_others_allowed() {
        for bad in [
            "PATH",
            "LD_PRELOAD",
            "BERTH_MASTER0_IP",
            "BASH_ENV",
            "PERL5OPT",
            "PERL5DB",
            "PERL5LIB",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "GCONV_PATH",
            "http_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "TMPDIR",
            "SHELLOPTS",
            "PS4",
            "GIT_SSH_COMMAND",
            "GLIBC_TUNABLES",
            "BASHOPTS",
            "LUA_INIT",
            "ERL_AFLAGS",
            "DOTNET_STARTUP_HOOKS",
            "OPENSSL_CONF",
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "CLASSPATH",
            "",
            "9LIVES",
            "A-B",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        for good in ["JOIN_TOKEN", "CA_HASH", "_X", "proxy_port", "PERL"] {
            assert!(valid_name(good), "{good}");
        }
        assert!(!valid_name(&"A".repeat(129)));
    }

    #[test]
    fn the_file_is_kept_whole_or_refused_with_the_limit() {
        let may = |k: &str| k != "OTHER";
        let (kept, dropped) =
            parse_file(b"# comment\n\nA=1\nOTHER=x\n  B=2  \nA=3\nC=x=y\n", may).unwrap();
        assert_eq!(
            kept,
            BTreeMap::from([
                ("A".into(), "3".into()),
                ("B".into(), "2".into()),
                ("C".into(), "x=y".into())
            ])
        );
        assert_eq!(dropped, vec!["OTHER".to_string()]);

        // 64 values of 16 KiB do not fit in 64 KiB: refused whole, never cut.
        let mut big = String::new();
        for i in 0..64 {
            big.push_str(&format!("K{i}={}\n", "v".repeat(16 * 1024)));
        }
        assert_eq!(
            parse_file(&big.as_bytes()[..MAX_OUTPUTS_FILE + 1], any),
            Err(OutputsError::FileTooLarge(MAX_OUTPUTS_FILE + 1))
        );
        assert_eq!(
            parse_file(
                format!("A={}\n", "v".repeat(MAX_OUTPUT_VALUE + 1)).as_bytes(),
                any
            ),
            Err(OutputsError::ValueTooLong {
                key: "A".into(),
                len: MAX_OUTPUT_VALUE + 1
            })
        );
        let many: String = (0..65).map(|i| format!("K{i}=v\n")).collect();
        assert_eq!(
            parse_file(many.as_bytes(), any),
            Err(OutputsError::TooMany(65))
        );
        // Four full values and a name each: under the file limit but over in all.
        let four: String = (0..4)
            .map(|i| format!("K{i}={}\n", "v".repeat(16 * 1024 - 4)))
            .collect();
        assert!(four.len() <= MAX_OUTPUTS_FILE, "{}", four.len());
        assert!(parse_file(four.as_bytes(), any).is_ok());
        assert_eq!(
            parse_file(b"A=1\nnot a line\n", any),
            Err(OutputsError::Malformed { line: 2 })
        );
        assert_eq!(
            parse_file(b"B = 2\n", any),
            Err(OutputsError::Malformed { line: 1 })
        );
        assert_eq!(
            parse_file(b"1A=1\n", any),
            Err(OutputsError::Malformed { line: 1 })
        );
        assert_eq!(parse_file(b"A=\xff\n", any), Err(OutputsError::NotText));
        assert_eq!(
            parse_file(b"A=x\0y\n", any),
            Err(OutputsError::ControlCharacter("A".into()))
        );
        assert_eq!(
            parse_file(b"A=x\x1b[2Jy\n", any),
            Err(OutputsError::ControlCharacter("A".into()))
        );
        assert!(
            parse_file(b"A=x\ty\r\n", any).is_ok(),
            "a tab, and CRLF line ends"
        );
        assert_eq!(
            OutputsError::FileTooLarge(70000).to_string(),
            "$BERTH_OUTPUTS holds 70000 bytes; at most 64 outputs, each value at most 16 KiB, 64 KiB in all (names, `=` and newlines included)"
        );
        let mut over = BTreeMap::new();
        for i in 0..5 {
            over.insert(format!("K{i}"), "v".repeat(16 * 1024 - 4));
        }
        assert!(matches!(check(&over), Err(OutputsError::TooLarge(_))));
    }
}
