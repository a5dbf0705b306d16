//! `/metrics` as an operator's Prometheus reads it: host gauges and step-duration
//! histograms that move during an apply, enrollments, plans, certificate expiries, all in
//! text that a real OpenMetrics parser (Debian's python3-prometheus-client) accepts.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every sample of the text, parsed by prometheus_client's OpenMetrics parser: name and
/// labels (`name{k="v",…}`, labels sorted) → value. A parse error fails the test.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-prometheus-client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_move_during_an_apply_and_parse_as_openmetrics() {
    let ctl = Controller::start(&["--host-grace", "3s"]);
    let mut agents = ctl.agents(&["m0", "n1"]);
    ctl.push_examples();
    let http = ctl.api_client().unwrap();
    let scrape = || {
        let r = http
            .get(format!("{}/metrics", ctl.url()))
            .bearer_auth(ctl.admin_token())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        parse(&r.text().unwrap())
    };
    let at = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let install_ok = r#"berth_step_duration_seconds_count{kind="install",outcome="succeeded"}"#;
    let before = scrape();
    assert_eq!(
        at(&before, r#"berth_hosts{state="Ready"}"#),
        2.0,
        "{before:#?}"
    );
    assert_eq!(at(&before, install_ok), 0.0);
    assert_eq!(
        at(&before, r#"berth_enrollments_total{result="accepted"}"#),
        2.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let agent_expiry = at(
        &before,
        "berth_agent_cert_earliest_expiry_timestamp_seconds{}",
    );
    let server_expiry = at(&before, "berth_server_cert_expiry_timestamp_seconds{}");
    assert!(agent_expiry > now && server_expiry > now, "{before:#?}");

    // Scraped while the apply runs: the histogram only grows, and ends with every step.
    let mk = ctl.dir.path().join("marks");
    std::fs::create_dir_all(&mk).unwrap();
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c", &["m0"], &["n1"], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut seen = Vec::new();
    let last = wait_for("every step counted", Duration::from_secs(60), || {
        let m = scrape();
        seen.push(at(&m, install_ok));
        (at(
            &m,
            r#"berth_step_duration_seconds_count{kind="join-node",outcome="succeeded"}"#,
        ) == 1.0)
            .then_some(m)
    });
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(at(&last, install_ok), 2.0);
    assert_eq!(
        at(
            &last,
            r#"berth_step_duration_seconds_count{kind="init",outcome="succeeded"}"#
        ),
        1.0
    );
    let sum = at(
        &last,
        r#"berth_step_duration_seconds_sum{kind="install",outcome="succeeded"}"#,
    );
    assert!((0.0..60.0).contains(&sum), "{sum}");
    assert!(at(&last, "berth_plans_issued_total{}") >= 5.0, "{last:#?}");
    // What the store did, what was stored and served.
    assert!(
        at(&last, "berth_log_bytes_stored_total{}") > 0.0,
        "{last:#?}"
    );
    assert!(
        at(&last, "berth_blob_bytes_served_total{}") > 0.0,
        "{last:#?}"
    );
    for op in ["reports", "tick"] {
        let n = at(
            &last,
            &format!(r#"berth_store_transaction_duration_seconds_count{{op="{op}"}}"#),
        );
        assert!(n >= 1.0, "{op}: {last:#?}");
    }

    // A refused enrollment is counted; a host that stops answering becomes NotReady.
    let (token, hash) = ctl.create_token(1, "1h");
    let wrong = format!("{}x", &token[..token.len() - 1]);
    let wrong = if wrong == token {
        format!("{}y", &token[..token.len() - 1])
    } else {
        wrong
    };
    let out = ctl.join("intruder", &wrong, &hash);
    assert!(!out.status.success());
    agents[1].kill9();
    let m = wait_for("n1 NotReady", Duration::from_secs(20), || {
        let m = scrape();
        (at(&m, r#"berth_hosts{state="NotReady"}"#) == 1.0).then_some(m)
    });
    assert_eq!(at(&m, r#"berth_hosts{state="Ready"}"#), 1.0);
    assert_eq!(
        at(&m, r#"berth_enrollments_total{result="refused"}"#),
        1.0,
        "{m:#?}"
    );

    // The shipped Grafana dashboard asks only for metrics the controller exports.
    let raw = http
        .get(format!("{}/metrics", ctl.url()))
        .bearer_auth(ctl.admin_token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let dash = std::fs::read_to_string(repo_root().join("packaging/grafana/berth.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut asked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("berth_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    raw.contains(&format!("# TYPE {family} ")),
                    "{name} in {expr}"
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 10, "{asked}");
}

/// `--metrics-listen` on both sides: the controller's `/metrics` without a token on an
/// address of its own (and nothing else there), and an agent's own metrics — when it last
/// reached the controller, its spool, the step that runs and how steps ended.
#[test]
fn metrics_listeners_of_controller_and_agent() {
    let (cport, aport) = (free_port(), free_port());
    let ctl = Controller::start(&["--metrics-listen", &format!("127.0.0.1:{cport}")]);
    let http = client(&ctl.ca_pem(), None).unwrap();
    let get = |port: u16, path: &str| {
        let r = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, text) = get(cport, "/metrics");
    assert_eq!(status, 200);
    assert!(parse(&text).contains_key("berth_plans_issued_total{}"));
    assert_eq!(
        get(cport, "/v1/hosts").0,
        404,
        "only /metrics is served there"
    );

    let (token, hash) = ctl.create_token(1, "1h");
    let out = ctl.join("m0", &token, &hash);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut cmd = agent_run_command(&ctl.agent_dir("m0"));
    cmd.args(["--metrics-listen", &format!("127.0.0.1:{aport}")]);
    let _agent = Proc::spawn("agent m0", cmd, ctl.dir.path().join("agent-m0.log"));
    let agent = |key: &str| {
        let (status, text) = get(aport, "/metrics");
        assert_eq!(status, 200);
        parse(&text).get(key).copied().unwrap_or(0.0)
    };
    wait_for("the agent's first poll", Duration::from_secs(20), || {
        (std::net::TcpStream::connect(("127.0.0.1", aport)).is_ok()
            && agent("berth_agent_last_poll_timestamp_seconds{}") > 0.0)
            .then_some(())
    });
    assert_eq!(agent("berth_agent_spool_entries{}"), 0.0);

    let src = ctl.dir.path().join("src");
    let slow = hook_bundle(&src, "slow", &[("install", "echo installing; sleep 3")], "");
    push_dir(&ctl, &slow, "slow:v1");
    let cf = ctl.clusterfile("c", &["m0"], &[], &["slow:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let running = r#"berth_agent_step_running{kind="install"}"#;
    wait_for("install running", Duration::from_secs(30), || {
        (agent(running) == 1.0).then_some(())
    });
    let done = r#"berth_agent_steps_finished_total{kind="install",outcome="succeeded"}"#;
    wait_for("install finished", Duration::from_secs(30), || {
        (agent(done) == 1.0).then_some(())
    });
    assert_eq!(agent(running), 0.0);
    assert_eq!(get(aport, "/").0, 404);
}
