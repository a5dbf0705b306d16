//! The CLI as an operator meets it: versions, completions, man pages, help text, and
//! `berth logs` of a whole host.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::fs;
use std::time::Duration;

#[test]
fn version_completions_and_man_pages() {
    let ctl = Controller::start(&[]);
    let out = ctl.cli(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stdout(&out),
        format!("client:     berth {v}\ncontroller: berth {v}\n")
    );
    let out = ctl.cli(&["version", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j, serde_json::json!({"client": v, "controller": v}));
    // No controller: the client's version, the reason, exit 1.
    let out = ctl
        .cli_command(&["version", "--server", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(&format!("client:     berth {v}\ncontroller: unreachable (")),
        "{}",
        stdout(&out)
    );

    for (shell, marker) in [
        ("bash", "_berth()"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let out = ctl.cli(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains(marker), "{shell}");
        assert!(stdout(&out).contains("rollback"), "{shell}: every command");
    }
    let dir = ctl.dir.path().join("man");
    let out = ctl.cli(&["man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = fs::read_to_string(dir.join("berth-apply.1")).unwrap();
    assert!(
        page.starts_with(".ie") && page.contains(".TH berth-apply 1"),
        "{page}"
    );
    assert!(page.contains("max\\-unavailable"), "flags are in it");
    assert!(dir.join("berth.1").exists() && dir.join("berth-exec.1").exists());
}

#[test]
fn help_says_what_each_flag_is_for() {
    let ctl = Controller::start(&[]);
    let help = |args: &[&str]| {
        let out = ctl
            .cli_command(args)
            .env("BERTH_SERVER", "https://example.invalid:7443")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let logs = help(&["logs", "--help"]);
    assert!(
        logs.lines()
            .any(|l| l.contains("<CLUSTER>") && l.contains("The cluster")),
        "{logs}"
    );
    assert!(logs.contains("The host whose step logs to print"), "{logs}");
    // A client command has no server log format; env values are not shown.
    // (Help is wrapped to the terminal: read it as one line.)
    let status = help(&["status", "--help"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!status.contains("--log-format"), "{status}");
    assert!(status.contains("[env: BERTH_SERVER]"), "{status}");
    assert!(!status.contains("example.invalid"), "{status}");
    assert!(help(&["serve", "--help"]).contains("--log-format"));
    // A flag taken from the environment is not shown as if it were required.
    let out = std::process::Command::new(berth_bin())
        .arg("logs")
        .env("BERTH_DATA_DIR", ctl.dir.path())
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(
        e.contains("Usage: berth logs --host <HOST> <CLUSTER>"),
        "{e}"
    );
}

#[test]
fn logs_of_a_host_show_every_step_in_order() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    ctl.push_examples();
    let marks = ctl.dir.path().join("marks");
    fs::create_dir_all(&marks).unwrap();
    let env = vec![format!("HELLO_MARKS={}", marks.display())];
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    let out = ctl.cli(&["logs", "c1", "--host", "m0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(
        heads,
        vec![
            "==> check on m0 (attempt 1, succeeded, exit 0)",
            "==> distribute on m0 (attempt 1, succeeded, exit 0)",
            "==> install on m0 (attempt 1, succeeded, exit 0)",
            "==> init on m0 (attempt 1, succeeded, exit 0)",
        ],
        "{text}"
    );
    // A reader that goes away ends it quietly.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --data-dir '{}' logs c1 --host m0 | head -c 10",
            berth_bin().display(),
            ctl.data_dir.display()
        ))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "==> check ");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // One step, as before.
    let out = ctl.cli(&["logs", "c1", "--host", "m0", "--step", "init"]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("==> "));
    // A host that is not in the cluster is named as such.
    let out = ctl.cli(&["logs", "c1", "--host", "nope"]);
    assert!(
        stderr(&out).contains("no host `nope` in cluster `c1` (its hosts: m0)"),
        "{}",
        stderr(&out)
    );
}

/// Every API path is spelled once, in the route table (`shared/src/routes.rs`): the
/// router, the CLI, the agent and the OpenAPI document take it from there. A `"/v1/…"`
/// string anywhere else in the code is a path that can drift from the router.
#[test]
fn no_api_path_is_spelled_outside_the_route_table() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    for krate in [
        "agent",
        "controller",
        "shared",
        "bundle",
        "files",
        "fleetsim",
    ] {
        walk(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found the sources ({})", files.len());
    let table = root.join("shared/src/routes.rs");
    let mut found = Vec::new();
    for f in files.iter().filter(|f| **f != table) {
        for (i, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if line.contains("\"/v1/") || line.contains("\"/metrics\"") {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "API paths outside the route table (use berth_shared::routes):\n{}",
        found.join("\n")
    );
}

/// `get clusters|hosts --watch` (kubectl's `-w`): the list at once, then again each time it
/// changes — as JSON lines for scripts.
#[test]
fn get_watch_prints_each_change() {
    use std::io::BufRead;
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    ctl.push_examples();
    let follow = |what: &str| {
        let mut child = ctl
            .cli_command(&["get", what, "-o", "json", "--watch"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let next = |rx: &std::sync::mpsc::Receiver<String>| -> serde_json::Value {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("a line");
        serde_json::from_str(&line).expect("one JSON document per line")
    };
    let (mut clusters, crx) = follow("clusters");
    assert_eq!(next(&crx), serde_json::json!([]));
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut phases = Vec::new();
    while phases.last().map(String::as_str) != Some("Running") {
        let v = next(&crx);
        phases.push(v[0]["phase"].as_str().unwrap().to_string());
    }
    // Printed when it changed, and not again while nothing does.
    assert!(
        crx.recv_timeout(Duration::from_secs(5)).is_err(),
        "a list that did not change was printed again"
    );
    let _ = clusters.kill();
    let (mut hosts, hrx) = follow("hosts");
    assert_eq!(next(&hrx)[0]["state"], "Ready");
    let out = ctl.cli(&["host", "revoke", "m0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(next(&hrx)[0]["state"], "Revoked");
    let _ = hosts.kill();
}

/// A log that ends inside a UTF-8 character (a Latin-1 byte, a process killed
/// mid-write) is shown to its end once the step is finished — never asked for again and
/// again.
#[test]
fn a_log_ending_in_a_broken_character_is_shown_and_done() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    let src = ctl.dir.path().join("src");
    let b = hook_bundle(&src, "latin", &[("install", r"printf 'done caf\351'")], "");
    push_dir(&ctl, &b, "latin:v1");
    let cf = ctl.clusterfile("c", &["m0"], &[], &["latin:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = ctl
        .cli_command(&["logs", "c", "--host", "m0", "--step", "install"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_for("berth logs to end", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(ended.success());
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.contains("done caf"), "{text:?}");
}

/// The engine and everything above the store hold transactions as the store's own type
/// (`store::WriteTx`): none of them names the SQL engine underneath, so a second one
/// (PostgreSQL) changes the store alone.
#[test]
fn only_the_store_names_its_sql_engine() {
    let root = repo_root().join("controller/src");
    let mut found = Vec::new();
    for dir in ["engine", "api", "ui"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.contains("Sqlite") {
                    found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                }
            }
        }
    }
    for f in ["planner.rs", "scheduler.rs", "plans.rs"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(!text.contains("Sqlite"), "{f} names Sqlite");
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The store's SQL is written once for both engines; what only one of them speaks lives in
/// `store/sqlite.rs` or `store/postgres.rs` (through `store::Dialect`).
#[test]
fn only_the_engine_modules_speak_a_dialect() {
    let dir = repo_root().join("controller/src/store");
    let dialect = [
        "json_each",
        "json_extract",
        "INDEXED BY",
        "INSERT OR",
        "VACUUM",
        "PRAGMA",
        "julianday",
        "group_concat",
        "rowid",
        "jsonb",
        "string_agg",
        "GREATEST",
        "pg_advisory",
        "?1",
    ];
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name == "sqlite.rs" || name == "postgres.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // The unit tests of `store/mod.rs` set up rows with SQLite's own SQL.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let sql = line.split("//").next().unwrap();
            for word in dialect {
                if sql.contains(word) {
                    found.push(format!("{name}:{}: {word}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
