//! Hook outputs are an allow-list and are never cut (issue 22, findings 2 and 4): a
//! hostile master0 driven through the agent API cannot hand a node's hooks `PERL5OPT`
//! (or any name its bundle does not declare), and an outputs file over the limits fails
//! its step with the reason instead of publishing part of it.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// The steps of `host`'s current signed plan, as (id, attempt, kind).
fn plan_steps(ctl: &Controller, host: &str) -> Vec<(i64, u64, String)> {
    let plan: Value = ctl
        .agent_client(host)
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&json!({"wait_secs": 1, "have_generation": 0}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let Some(payload) = plan["plan"]["payload"].as_str() else {
        return Vec::new();
    };
    use base64::Engine as _;
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    payload["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_i64().unwrap(),
                s["attempt"].as_u64().unwrap(),
                s["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn succeeded(id: i64, attempt: u64, outputs: Value) -> Value {
    json!([{ "type": "step", "step_id": id, "attempt": attempt, "state": "succeeded",
              "exit_code": 0, "reason": null, "started_at": null, "ended_at": null,
              "log_tail": null, "outputs": outputs }])
}

/// master0 has no agent: the test is master0, with its certificate, reporting every step
/// it is given as done — and trying to publish, from `init`, names that would run code in
/// a node's hooks. The bundle declares no outputs, so every one is refused with
/// `output_not_allowed`, none is stored, and the node's `join-node` hook (a perl one-liner
/// that would run the debugger's `BEGIN` block) sees none of them.
#[test]
fn a_hostile_master0_cannot_hand_a_node_perl5opt() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(2, "1h");
    let out = ctl.join("m0", &token, &hash);
    assert!(out.status.success(), "{}", stderr(&out));
    let _node = ctl.agents(&["n1"]);
    let proof = ctl.dir.path().join("perl-debugger-ran");
    let b = hook_bundle(
        ctl.dir.path(),
        "perlish",
        &[
            ("init", ":"),
            (
                "join-node",
                "echo \"PERL5OPT=${PERL5OPT:-unset} PERL5DB=${PERL5DB:-unset} NODE_OPTIONS=${NODE_OPTIONS:-unset} http_proxy=${http_proxy:-unset} JOIN_TOKEN=${JOIN_TOKEN:-unset}\"\nperl -e 'print \"perl ran\\n\"'",
            ),
        ],
        "",
    );
    push_dir(&ctl, &b, "perlish:v1");
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["perlish:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let hostile = [
        json!({"PERL5OPT": "-d", "PERL5DB": format!("BEGIN {{ system(\"touch {}\") }}", proof.display())}),
        json!({"NODE_OPTIONS": "--require /tmp/evil.js"}),
        json!({"PYTHONPATH": "/tmp/evil"}),
        json!({"GCONV_PATH": "/tmp/evil"}),
        json!({"http_proxy": "http://6.6.6.6:3128"}),
        json!({"TMPDIR": "/tmp/evil"}),
        json!({"JOIN_TOKEN": "undeclared"}),
    ];
    let mut done = BTreeSet::new();
    wait_for("master0's init reported", Duration::from_secs(90), || {
        for (id, attempt, kind) in plan_steps(&ctl, "m0") {
            if !done.insert((id, attempt)) {
                continue;
            }
            if kind == "init" {
                for outputs in &hostile {
                    let (s, b) = agent_report(&ctl, "m0", succeeded(id, attempt, outputs.clone()));
                    assert_eq!(
                        (s, b["code"].as_str()),
                        (422, Some("output_not_allowed")),
                        "{outputs} {b}"
                    );
                    let msg = b["message"].as_str().unwrap();
                    assert!(
                        msg.contains("a hook publishes only the names its bundle declares for it under `outputs:`"),
                        "{msg}"
                    );
                }
            }
            let mut report = succeeded(id, attempt, json!({}));
            if kind == "check" {
                // NUL in the text an agent sends: stored (as U+FFFD) on both engines,
                // never a failed write (PostgreSQL's TEXT holds no NUL).
                report[0]["reason"] = json!("a\u{0}b");
                report[0]["log_tail"] = json!("tail\u{0}");
            }
            let (s, b) = agent_report(&ctl, "m0", report);
            assert_eq!(s, 204, "{kind}: {b}");
            if kind == "init" {
                return Some(());
            }
        }
        None
    });
    let out = ctl.cli(&["status", "c1", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("c1");
    assert_eq!(st["outputs"], json!({}), "{st}");
    let log = stdout(&ctl.cli(&["logs", "c1", "--host", "n1", "--step", "join-node"]));
    assert!(
        log.contains(
            "PERL5OPT=unset PERL5DB=unset NODE_OPTIONS=unset http_proxy=unset JOIN_TOKEN=unset"
        ),
        "{log}"
    );
    assert!(log.contains("perl ran"), "{log}");
    assert!(!proof.exists(), "the debugger's BEGIN block ran");
}

/// A hook that writes 64 values of 16 KiB (a megabyte) fails its step with the limit in
/// the reason and publishes nothing; a hook whose outputs fit gets every byte of each.
#[test]
fn outputs_over_the_limits_fail_the_step_and_outputs_that_fit_are_whole() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "m1"]);
    let names: Vec<String> = (0..64).map(|i| format!("K{i}")).collect();
    let declare = format!("outputs:\n  init: [{}]\n", names.join(", "));
    let write = |n: usize, len: usize| {
        format!(
            "v=$(head -c {len} /dev/zero | tr '\\0' v)\ni=0\nwhile [ $i -lt {n} ]; do echo \"K$i=$v\" >>\"$BERTH_OUTPUTS\"; i=$((i + 1)); done"
        )
    };
    let big = hook_bundle(
        ctl.dir.path(),
        "big",
        &[("init", &write(64, 16 * 1024))],
        &declare,
    );
    push_dir(&ctl, &big, "big:v1");
    let cf = ctl.clusterfile("big", &["m0"], &[], &["big:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(!out.status.success(), "{}", stdout(&out));
    let st = ctl.status("big");
    assert_eq!(st["phase"], "Failed", "{st}");
    let init = step_of(&st, "m0", "init");
    assert_eq!(init["state"], "failed", "{init}");
    let reason = init["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        format!(
            "outputs: $BERTH_OUTPUTS holds {} bytes; at most 64 outputs, each value at most 16 KiB, 64 KiB in all (names, `=` and newlines included)",
            64 * 1024 + 1
        ),
        "{init}"
    );
    assert_eq!(st["outputs"], json!({}), "nothing of it was published");
    let log = stdout(&ctl.cli(&["logs", "big", "--host", "m0", "--step", "init"]));
    assert!(
        log.contains("the step fails and publishes nothing"),
        "{log}"
    );

    // Four values of 16,000 bytes fit: every byte of every one arrives.
    let fits = hook_bundle(
        ctl.dir.path(),
        "fits",
        &[("init", &write(4, 16_000))],
        &declare,
    );
    push_dir(&ctl, &fits, "fits:v1");
    let cf = ctl.clusterfile("fits", &["m1"], &[], &["fits:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("fits");
    let outs = st["outputs"].as_object().unwrap();
    assert_eq!(outs.len(), 4, "{st}");
    for i in 0..4 {
        assert_eq!(outs[&format!("K{i}")], json!("v".repeat(16_000)));
    }
}

/// The limits hold for a step's outputs all together: two bundles of 40 outputs each fail
/// the step on the agent with the reason (not a report the controller refuses and a step
/// left to time out); a value with a NUL in it (it would break every later hook's start)
/// fails its step too.
#[test]
fn a_steps_outputs_are_held_to_the_limits_together_and_values_are_text() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["t0", "t1"]);
    let forty = |prefix: &str| {
        let names: Vec<String> = (0..40).map(|i| format!("{prefix}{i}")).collect();
        (
            format!("outputs:\n  init: [{}]\n", names.join(", ")),
            format!(
                "i=0\nwhile [ $i -lt 40 ]; do echo \"{prefix}$i=v\" >>\"$BERTH_OUTPUTS\"; i=$((i + 1)); done"
            ),
        )
    };
    for p in ["A", "B"] {
        let (declare, hook) = forty(p);
        let b = hook_bundle(
            ctl.dir.path(),
            &format!("forty{}", p.to_lowercase()),
            &[("init", &hook)],
            &declare,
        );
        // Rootfs bundles merge into one tree: each hook needs a path of its own.
        move_hook(&b, "init", &format!("scripts/init-{p}.sh"));
        push_dir(&ctl, &b, &format!("forty{}:v1", p.to_lowercase()));
    }
    let cf = ctl.clusterfile("two", &["t0"], &[], &["fortya:v1", "fortyb:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(!out.status.success(), "{}", stdout(&out));
    let st = ctl.status("two");
    let init = step_of(&st, "t0", "init");
    assert_eq!(init["state"], "failed", "{init}");
    assert_eq!(
        init["reason"],
        "outputs: 80 outputs; at most 64 outputs, each value at most 16 KiB, 64 KiB in all (names, `=` and newlines included)"
    );
    assert_eq!(st["outputs"], json!({}));

    let nul = hook_bundle(
        ctl.dir.path(),
        "nul",
        &[(
            "init",
            "printf 'JOIN_TOKEN=abc\\000def\\n' >>\"$BERTH_OUTPUTS\"",
        )],
        "outputs:\n  init: [JOIN_TOKEN]\n",
    );
    push_dir(&ctl, &nul, "nul:v1");
    let cf = ctl.clusterfile("nul", &["t1"], &[], &["nul:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(!out.status.success(), "{}", stdout(&out));
    let st = ctl.status("nul");
    let init = step_of(&st, "t1", "init");
    assert_eq!(
        init["reason"],
        "outputs: output `JOIN_TOKEN` holds a control character (a NUL, a carriage return, an escape …); values are one line of text (tabs allowed)",
        "{init}"
    );
}
