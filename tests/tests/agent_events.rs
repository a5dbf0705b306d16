//! Every record an agent causes is bounded (issue 22, finding 3): a host that reports
//! refused plans by the hundred thousand costs one row, one log line a minute, and a
//! count an operator sees in `berth get hosts`.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::{json, Value};

fn store_bytes(ctl: &Controller) -> u64 {
    if let Some(db) = &ctl.database {
        return db
            .psql("SELECT pg_database_size(current_database())")
            .parse()
            .unwrap();
    }
    ["berth.db", "berth.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(ctl.data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// 20 batches of 5,000 `plan_rejected` entries, each reason with a newline and a
/// terminal escape sequence: one row, counted; at most one log line; the message one
/// clean line; the store and the log barely grow.
#[test]
fn a_host_flooding_plan_refusals_costs_one_counted_row_and_one_log_line() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(1, "1h");
    let out = ctl.join("noisy", &token, &hash);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = ctl.dir.path().join("controller.log");
    let log_before = std::fs::metadata(&log).unwrap().len();
    let store_before = store_bytes(&ctl);

    // Short reasons under the 1 MiB body limit, the last of each batch 2,000 bytes long.
    let short = format!(
        "signature invalid\n\u{1b}[2J\u{1b}[31mforged line {}",
        "x".repeat(60)
    );
    let long = format!(
        "signature invalid\n\u{1b}[2J\u{1b}[31mforged line {}",
        "x".repeat(2_000)
    );
    let entries: Vec<Value> = (0..5_000)
        .map(
            |i| json!({"type": "plan_rejected", "reason": if i == 4_999 { &long } else { &short }}),
        )
        .collect();
    let entries = Value::Array(entries);
    for _ in 0..20 {
        let (s, b) = agent_report(&ctl, "noisy", entries.clone());
        assert_eq!(s, 204, "{b}");
    }

    let hosts: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    let events = hosts[0]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{hosts}");
    assert_eq!(events[0]["kind"], "plan_rejected");
    assert_eq!(events[0]["count"], 100_000);
    let msg = events[0]["message"].as_str().unwrap();
    assert_eq!(msg.len(), 512, "the last message, cut");
    assert!(
        msg.starts_with("signature invalid  [2J [31mforged line xxx"),
        "{msg}"
    );
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    let table = stdout(&ctl.cli(&["get", "hosts"]));
    assert!(table.contains("EVENTS"), "{table}");
    assert!(table.contains("plan_rejected x100000 ("), "{table}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("agent refused a plan").count(),
        1,
        "one line a minute"
    );
    assert!(
        !text.contains("\u{1b}[2J"),
        "no escape sequence reaches the log"
    );
    let log_growth = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(log_growth < 64 * 1024, "the log grew {log_growth} bytes");
    let store_growth = store_bytes(&ctl).saturating_sub(store_before);
    assert!(
        store_growth < 1 << 20,
        "the store grew {store_growth} bytes"
    );

    // Gone with the host.
    let out = ctl.cli(&["host", "delete", "noisy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (token, hash) = ctl.create_token(1, "1h");
    std::fs::remove_dir_all(ctl.agent_dir("noisy")).unwrap();
    let out = ctl.join("noisy", &token, &hash);
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    assert_eq!(hosts[0]["events"], json!([]), "{hosts}");
}
