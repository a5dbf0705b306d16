//! Audit what matters (issue 22, finding 9): reads of secrets are audited and the log is
//! readable (`berth get audit`); API-token names and token descriptions are bounded and
//! printable; `agent-binary add` takes programs only; removing an added agent serves the
//! bundled one again at once.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

fn audit(ctl: &Controller) -> Vec<Value> {
    let out = ctl.cli(&["get", "audit", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `berth backup` (CA key, admin token) and `status --show-outputs` each leave an audit
/// row naming who read what; a viewer cannot read the log.
#[test]
fn reads_of_secrets_are_audited() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    ctl.push_examples();
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
    // A PostgreSQL store is backed up with PostgreSQL's tools (tests/tests/postgres.rs).
    let backs_up = ctl.database.is_none();
    if backs_up {
        let file = ctl.dir.path().join("b.tar");
        let out = ctl.cli(&["backup", "-o", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = ctl.cli(&["status", "c1", "--show-outputs"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let rows = audit(&ctl);
    let find = |action: &str| {
        rows.iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {rows:#?}"))
            .clone()
    };
    if backs_up {
        let b = find("backup.download");
        assert_eq!(b["target"], "controller");
        assert_eq!(b["actor"], "api-token:admin");
        assert!(b["detail"]
            .as_str()
            .unwrap()
            .contains("CA key, admin token"));
    }
    let o = find("cluster.outputs.read");
    assert_eq!(
        (o["target"].as_str(), o["actor"].as_str()),
        (Some("c1"), Some("api-token:admin"))
    );
    // Newest first: the outputs read came last.
    assert_eq!(rows[0]["action"], "cluster.outputs.read");

    let viewer = stdout(&ctl.cli(&["api-token", "create", "--name", "v", "--role", "viewer"]));
    let out = ctl
        .cli_command(&["get", "audit"])
        .env("BERTH_TOKEN", viewer.trim())
        .output()
        .unwrap();
    assert!(stderr(&out).contains("(forbidden)"), "{}", stderr(&out));
}

/// Token names with a newline or an escape sequence and a 900 KB description are refused
/// with the exact reason; nothing is created.
#[test]
fn token_names_and_descriptions_are_bounded_and_printable() {
    let ctl = Controller::start(&[]);
    let api = ctl.api_client().unwrap();
    let post = |path: &str, body: Value| {
        let r = api
            .post(format!("{}{path}", ctl.url()))
            .bearer_auth(ctl.admin_token())
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    for (name, why) in [
        (
            "ci\nbot",
            "name holds the control character '\\n'; use printable characters only",
        ),
        (
            "\u{1b}[2Jadmin",
            "name holds the control character '\\u{1b}'; use printable characters only",
        ),
        ("", "name must be 1 to 64 characters; it has 0"),
    ] {
        let (s, b) = post("/v1/api-tokens", json!({"name": name, "role": "viewer"}));
        assert_eq!((s, b["code"].as_str()), (400, Some("bad_request")), "{b}");
        assert_eq!(b["message"], why);
    }
    let long = "d".repeat(900_000);
    for (desc, why) in [
        (
            long.as_str(),
            "description must be 0 to 256 characters; it has 900000",
        ),
        (
            "line one\nline two",
            "description holds the control character '\\n'; use printable characters only",
        ),
    ] {
        let (s, b) = post(
            "/v1/tokens",
            json!({"ttl_secs": 60, "uses": 1, "description": desc}),
        );
        assert_eq!((s, b["code"].as_str()), (400, Some("bad_request")), "{b}");
        assert_eq!(b["message"], why);
    }
    assert!(audit(&ctl)
        .iter()
        .all(|r| !r["action"].as_str().unwrap().starts_with("token")
            && !r["action"].as_str().unwrap().starts_with("api-token")));
}

/// A 64-bit x86_64 ELF header of type `e_type`, no program headers.
fn elf_header(e_type: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[16..18].copy_from_slice(&e_type.to_le_bytes());
    h[18..20].copy_from_slice(&62u16.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes());
    h[54..56].copy_from_slice(&56u16.to_le_bytes());
    h
}

/// A core dump, an object file and a shared library are refused, each named; an added
/// program is served, and once removed the bundled agent is served again, no restart.
#[test]
fn agent_binary_add_takes_programs_only_and_remove_restores_the_bundled_one() {
    let ctl = Controller::start(&[]);
    let dir = ctl.dir.path();
    let core = dir.join("core");
    let mut bytes = elf_header(4);
    bytes.extend(vec![0u8; 4096]);
    std::fs::write(&core, &bytes).unwrap();
    let obj = dir.join("x.o");
    std::fs::write(&obj, elf_header(1)).unwrap();
    let lib = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("zlib (a shared library of every Debian) is installed");
    for (file, why) in [
        (
            core.to_str().unwrap(),
            "a core dump, not an executable (arch_mismatch)",
        ),
        (
            obj.to_str().unwrap(),
            "an object file (.o), not an executable (arch_mismatch)",
        ),
        (lib, "a shared library, not an executable (arch_mismatch)"),
    ] {
        let out = ctl.cli(&["agent-binary", "add", file, "--arch", "x86_64"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(why), "{file}: {}", stderr(&out));
    }

    let api = ctl.api_client().unwrap();
    let served = || {
        let r = api
            .get(format!(
                "{}/v1/install/berth-agent/linux/x86_64/sha256",
                ctl.url()
            ))
            .send()
            .unwrap();
        (r.status() == 200).then(|| r.text().unwrap().trim().to_string())
    };
    let bundled = wait_for("the bundled agent served", Duration::from_secs(60), served);
    let out = ctl.cli(&["agent-binary", "add", "/usr/bin/true", "--arch", "x86_64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(served().unwrap(), bundled);
    let out = ctl.cli(&["agent-binary", "remove", "--arch", "x86_64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(served().as_deref(), Some(bundled.as_str()));
    let list: Vec<Value> =
        serde_json::from_slice(&ctl.cli(&["agent-binary", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["source"], "bundled");
}
