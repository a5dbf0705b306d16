//! The trustworthy core, tried as an attacker and a fault injector would: noisy hooks,
//! hostile reports from an enrolled host, hosts that vanish, crashes at the worst moment.
//! Each test is named after what broke.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn setup(extra: &[&str], names: &[&str]) -> (Controller, Vec<Proc>, PathBuf) {
    let ctl = Controller::start(extra);
    let agents = ctl.agents(names);
    ctl.push_examples();
    let marks = ctl.dir.path().join("marks");
    fs::create_dir_all(&marks).unwrap();
    (ctl, agents, marks)
}

#[test]
fn a_noisy_hook_does_not_wedge_its_host_and_its_log_is_capped() {
    let (ctl, agents, _mk) = setup(&["--log-cap", "1M"], &["m0"]);
    // ~3 MB of output in a moment (apt, kubeadm, tar -v do this).
    let b = hook_bundle(
        ctl.dir.path(),
        "noisy",
        &[("install", "i=0; while [ $i -lt 60 ]; do yes 'noise noise noise noise noise noise noise noise noise noise' | head -c 50000; i=$((i+1)); done; echo done-installing")],
        "",
    );
    push_dir(&ctl, &b, "noisy:v1");
    let cf = ctl.clusterfile("noisy", &["m0"], &[], &["noisy:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = ctl.cli(&["logs", "noisy", "--host", "m0", "--step", "install"]);
    let text = stdout(&log);
    assert!(
        text.len() < 1_200_000,
        "log is capped: {} bytes",
        text.len()
    );
    assert!(
        text.contains("[… truncated ")
            && text.contains(" bytes: over the controller's per-step log cap]"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    // Nothing was refused for size: batches are sized by bytes (the agent logs a 413 as
    // "too large" and "splitting it").
    let agent_log = agents[0].log_text();
    assert!(
        !agent_log.contains("too large") && !agent_log.contains("refused"),
        "{agent_log}"
    );
    // The host still takes work.
    let cf = ctl.clusterfile("noisy", &["m0"], &[], &["noisy:v1", "hello-app:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_agent_cannot_move_a_step_it_does_not_own_forge_outputs_or_fetch_other_blobs() {
    let (ctl, _agents, mk) = setup(&[], &["m0", "n1"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=6".to_string(),
    ];
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["hello:v1", "hello-app:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    let st = wait_for("installs running", Duration::from_secs(60), || {
        let st = ctl.status("c1");
        (step_of(&st, "n1", "install")["state"] == "running"
            && step_of(&st, "m0", "install")["state"] == "running")
            .then_some(st)
    });
    let n1_install = step_of(&st, "n1", "install")["id"].as_i64().unwrap();
    let m0_install = step_of(&st, "m0", "install")["id"].as_i64().unwrap();
    // The signed plan carries only the host's own part; the cluster's shared part is one
    // context document it names by digest, served to hosts with a released step.
    let plan = ctl
        .agent_client("n1")
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&json!({"wait_secs": 0, "have_generation": 0}))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    use base64::Engine as _;
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(plan["plan"]["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["version"],
        berth_shared::plan::PLAN_VERSION,
        "{payload}"
    );
    let text = payload.to_string();
    assert!(
        !text.contains("BERTH_NODES") && !text.contains("ClusterConfiguration"),
        "{text}"
    );
    assert_eq!(payload["steps"][0]["env"]["BERTH_HOST"], "n1");
    let ctx_digest = payload["context"]["digest"].as_str().unwrap().to_string();
    let ctx_url = format!(
        "{}/v1/agent/contexts/sha256/{}",
        ctl.url(),
        ctx_digest.trim_start_matches("sha256:")
    );
    let body = ctl.agent_client("n1").get(&ctx_url).send().unwrap();
    assert_eq!(body.status().as_u16(), 200);
    let body = body.bytes().unwrap();
    use sha2::Digest as _;
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))),
        ctx_digest
    );
    assert_eq!(payload["context"]["size"].as_u64(), Some(body.len() as u64));
    let ctx: Value = serde_json::from_slice(&body).unwrap();
    assert!(ctx["clusterfile"]
        .as_str()
        .unwrap()
        .contains("kind: ClusterConfiguration"));
    assert_eq!(ctx["berth"]["BERTH_MASTER0"], "m0");
    let unknown = ctl
        .agent_client("n1")
        .get(format!(
            "{}/v1/agent/contexts/sha256/{}",
            ctl.url(),
            "ab".repeat(32)
        ))
        .send()
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(unknown.json::<Value>().unwrap()["code"], "context_unknown");
    let rep = |id: i64, state: &str, attempt: u32, outputs: Value| {
        json!([{ "type": "step", "step_id": id, "attempt": attempt, "state": state,
                  "exit_code": 0, "reason": null, "started_at": null, "ended_at": null,
                  "log_tail": null, "outputs": outputs }])
    };
    // An unknown state is refused by the wire type.
    let (s, b) = agent_report(&ctl, "n1", rep(n1_install, "banana", 1, json!({})));
    assert_eq!((s, b["code"].as_str()), (422, Some("bad_request")), "{b}");
    // Another host's step.
    let (s, b) = agent_report(&ctl, "n1", rep(m0_install, "succeeded", 1, json!({})));
    assert_eq!(
        (s, b["code"].as_str(), b["entry"].as_u64()),
        (403, Some("step_not_yours"), Some(0)),
        "{b}"
    );
    // No such step.
    let (s, b) = agent_report(&ctl, "n1", rep(999_999, "succeeded", 1, json!({})));
    assert_eq!((s, b["code"].as_str()), (404, Some("step_unknown")), "{b}");
    // A stale attempt.
    let (s, b) = agent_report(&ctl, "n1", rep(n1_install, "succeeded", 7, json!({})));
    assert_eq!((s, b["code"].as_str()), (409, Some("stale_attempt")), "{b}");
    // States an agent may not report.
    let (s, b) = agent_report(&ctl, "n1", rep(n1_install, "pending", 1, json!({})));
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("illegal_transition")),
        "{b}"
    );
    // Outputs that would steer later hooks, or forge master0's.
    for outputs in [
        json!({"PATH": "/tmp/evil"}),
        json!({"LD_PRELOAD": "/tmp/x.so"}),
        json!({"JOIN_TOKEN": "forged"}),
        json!({"BERTH_MASTER0_IP": "6.6.6.6"}),
    ] {
        let (s, b) = agent_report(&ctl, "n1", rep(n1_install, "succeeded", 1, outputs.clone()));
        assert_eq!(
            (s, b["code"].as_str()),
            (422, Some("output_not_allowed")),
            "{outputs} {b}"
        );
    }
    // A log offset that does not fit, and a gap.
    let log = |offset: u64| json!([{ "type": "log", "step_id": n1_install, "attempt": 1, "offset": offset, "data": "x" }]);
    let (s, b) = agent_report(&ctl, "n1", log(u64::MAX));
    assert_eq!((s, b["code"].as_str()), (422, Some("bad_log_chunk")), "{b}");
    let (s, b) = agent_report(&ctl, "n1", log(1 << 40));
    assert_eq!((s, b["code"].as_str()), (409, Some("bad_log_chunk")), "{b}");
    // A blob of a step not released to n1 (the app bundle goes to master0 only).
    let app = serde_json::from_slice::<Value>(
        &ctl.cli(&["bundle", "inspect", "hello-app:v1", "-o", "json"])
            .stdout,
    )
    .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let r = ctl
        .agent_client("n1")
        .get(format!("{}/v1/blobs/sha256/{app}", ctl.url()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<Value>().unwrap()["code"], "blob_not_released");

    // None of it changed anything: the cluster finishes on its own, with init's token.
    let out = ctl.cli(&["status", "c1", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // With nothing released to it any more, n1 no longer gets the cluster's context.
    let r = ctl.agent_client("n1").get(&ctx_url).send().unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<Value>().unwrap()["code"], "context_not_released");
    let st = ctl.status("c1");
    assert_eq!(st["phase"], "Running");
    assert_ne!(st["outputs"]["JOIN_TOKEN"], "forged");
    assert!(st["outputs"].get("PATH").is_none(), "{st}");
    assert_eq!(step_of(&st, "n1", "install")["attempt"], 1);
    let token = st["outputs"]["JOIN_TOKEN"].as_str().unwrap();
    assert!(marks(&mk, "n1").contains(&format!("join {token}")));
    // A report sent twice is a duplicate, accepted, changing nothing.
    let (s, _) = agent_report(&ctl, "n1", rep(n1_install, "succeeded", 1, json!({})));
    assert_eq!(s, 204);
    let (s, b) = agent_report(&ctl, "n1", rep(n1_install, "failed", 1, json!({})));
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("illegal_transition")),
        "{b}"
    );
    assert_eq!(
        step_of(&ctl.status("c1"), "n1", "install")["state"],
        "succeeded"
    );
}

#[test]
fn a_hook_output_cannot_override_the_operators_env_or_set_path() {
    let (ctl, _agents, _mk) = setup(&[], &["m0", "n1"]);
    let b = hook_bundle(
        ctl.dir.path(),
        "outs",
        &[
            ("init", "echo 'GREETING=from-output' >> \"$BERTH_OUTPUTS\"; echo 'PATH=/nowhere' >> \"$BERTH_OUTPUTS\"; echo 'OTHER=x' >> \"$BERTH_OUTPUTS\""),
            ("install", ":"),
            ("join-node", "echo \"seen=$GREETING path=$PATH\"; test \"$GREETING\" = from-operator"),
        ],
        "outputs:\n  init: [GREETING]\n",
    );
    push_dir(&ctl, &b, "outs:v1");
    let cf = ctl.clusterfile(
        "c1",
        &["m0"],
        &["n1"],
        &["outs:v1"],
        &["GREETING=from-operator".to_string()],
    );
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
    let st = ctl.status("c1");
    let keys: Vec<&String> = st["outputs"].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["GREETING"], "only declared outputs: {st}");
    let log = stdout(&ctl.cli(&["logs", "c1", "--host", "m0", "--step", "init"]));
    assert!(log.contains("output `PATH` dropped"), "{log}");
    assert!(log.contains("output `OTHER` dropped"), "{log}");
    // Outputs sit below spec.env: a later hook sees the operator's value.
    let log = stdout(&ctl.cli(&["logs", "c1", "--host", "n1", "--step", "join-node"]));
    assert!(
        log.contains("seen=from-operator path=/usr/local/sbin:"),
        "{log}"
    );
}

#[test]
fn a_host_claiming_another_hosts_address_cannot_become_master0() {
    let (ctl, _agents, _mk) = setup(&[], &["m0", "evil"]);
    // Both agents run on this machine, so both report the same addresses: an address in a
    // Clusterfile is ambiguous, and refused naming both.
    let hosts: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    let ip = hosts[0]["addresses"][0]
        .as_str()
        .expect("a non-loopback address")
        .to_string();
    let cf = ctl.clusterfile("c1", &[ip.as_str()], &[], &["hello:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "the address `{ip}` is claimed by hosts evil and m0"
        )) && stderr(&out).contains("(ambiguous_address)"),
        "{}",
        stderr(&out)
    );
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, json!([]));
}

#[test]
fn a_forced_reset_skips_a_host_that_dies_just_before_it() {
    let (ctl, mut agents, mk) = setup(&["--host-grace", "3s"], &["m0", "n1"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["hello:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    // n1 dies a moment before the reset: still Ready when it is forced.
    agents[1].kill9();
    let t = std::time::Instant::now();
    let out = ctl.cli(&["reset", "c1", "--force", "--wait"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        took < Duration::from_secs(3 + 10),
        "the host grace plus a few seconds, not the 10-minute loss deadline: {took:?}"
    );
    assert!(
        stderr(&out).contains("warning: clean skipped on host n1: skipped by `reset --force`: host n1 stopped answering"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&mk, "m0", "clean"), 1, "m0 cleaned");
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, json!([]));
}

#[test]
fn a_step_on_a_host_that_is_gone_becomes_lost_and_every_way_out_works() {
    let (ctl, mut agents, mk) = setup(
        &["--host-lost-after", "4s", "--host-grace", "3s"],
        &["m0", "n1"],
    );
    agents[1].kill9();
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["hello:v1"], &env);
    let out = apply_file(&ctl, &cf);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "step check failed on host n1: interrupted (lost: host n1 has not been seen for"
        ),
        "{}",
        stderr(&out)
    );
    // host delete of a member: 409 naming the cluster.
    let out = ctl.cli(&["host", "delete", "n1"]);
    assert!(
        stderr(&out).contains("host `n1` belongs to cluster `c1`")
            && stderr(&out).contains("(host_in_cluster)"),
        "{}",
        stderr(&out)
    );
    // apply while failed is allowed (it retries); the host is still gone: lost again.
    let out = ctl.cli(&["retry", "c1", "--wait"]);
    assert!(!out.status.success());
    // reset --force finishes without n1 and says so.
    let out = ctl.cli(&["reset", "c1", "--force", "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("warning: clean skipped on host n1"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("host m0"), "{}", stderr(&out));
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, json!([]));
    // Now n1 is no member: delete works.
    assert!(ctl.cli(&["host", "delete", "n1"]).status.success());

    // host delete --force of a member takes it out of its cluster first.
    let cf = ctl.clusterfile("c2", &["m0"], &[], &["hello:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    let out = ctl.cli(&["host", "delete", "m0", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st = ctl.status("c2");
    assert_eq!(st["hosts"], json!([]), "{st}");
}

#[test]
fn a_failed_clean_is_reported_not_thrown_away() {
    let (ctl, _agents, mk) = setup(&[], &["m0"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    fs::write(mk.join("fail-clean-m0"), "").unwrap();
    let out = ctl.cli(&["reset", "c1", "--wait"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reset incomplete: clean failed on m0 (exit code 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl.status("c1")["phase"], "ResetFailed");
    // An apply is refused while the reset is not finished.
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("(cluster_resetting)"),
        "{}",
        stderr(&out)
    );
    fs::remove_file(mk.join("fail-clean-m0")).unwrap();
    let out = ctl.cli(&["retry", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("cluster removed", Duration::from_secs(30), || {
        let o = ctl.cli(&["status", "c1"]);
        (!o.status.success() && stderr(&o).contains("(not_found)")).then_some(())
    });
    assert_eq!(marks(&mk, "m0").iter().filter(|l| *l == "clean").count(), 1);
}

#[test]
fn a_changed_rootfs_and_deleting_master0_are_refused_with_what_to_do() {
    let (ctl, _agents, mk) = setup(&[], &["m0", "n1"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c1", &["m0"], &["n1"], &["hello:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    // hello:v1 moves to another digest.
    let copy = ctl.dir.path().join("hello2");
    let src = repo_root().join("examples/hello");
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    fs::write(copy.join("etc/extra"), "v2\n").unwrap();
    push_dir(&ctl, &copy, "hello:v1");
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("declares no `upgrade` hook")
            && stderr(&out).contains("(upgrade_unsupported)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl.status("c1")["generation"], 1, "nothing stored");
    let out = ctl.cli(&["delete", "--masters", "m0", "--cluster", "c1"]);
    assert!(stderr(&out).contains("`m0` is master0 of cluster `c1` and cannot be deleted from it; `berth reset c1` removes the whole cluster (master0_removal)"), "{}", stderr(&out));
}

/// Hook runs per host, from the marks the hello hooks write.
fn count(mk: &Path, host: &str, what: &str) -> usize {
    marks(mk, host)
        .iter()
        .filter(|l| l.split(' ').next() == Some(what))
        .count()
}

#[test]
fn a_hook_that_finished_while_the_agent_was_down_is_not_run_again() {
    let (ctl, mut agents, mk) = setup(&[], &["m0"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=3".to_string(),
    ];
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for("install running", Duration::from_secs(60), || {
        (step_of(&ctl.status("c1"), "m0", "install")["state"] == "running").then_some(())
    });
    agents[0].kill9();
    // The hook outlives the agent and finishes.
    wait_for("install finished", Duration::from_secs(20), || {
        (count(&mk, "m0", "install") == 1).then_some(())
    });
    agents[0] = ctl.run_agent("m0");
    let out = ctl.cli(&["status", "c1", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("c1");
    assert_eq!(
        step_of(&st, "m0", "install")["attempt"],
        1,
        "no retry needed"
    );
    assert_eq!(count(&mk, "m0", "install"), 1, "{:?}", marks(&mk, "m0"));
    let log = stdout(&ctl.cli(&["logs", "c1", "--host", "m0", "--step", "install"]));
    assert!(
        log.contains("already finished (exit code 0); not running it again")
            || log.contains("was started by an earlier agent; waiting for it"),
        "{log}"
    );
}

#[test]
fn crash_trials_no_finished_hook_runs_twice_and_no_report_is_lost() {
    let trials: usize = std::env::var("BERTH_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (mut ctl, mut agents, mk) = setup(&["--host-lost-after", "20s"], &["m0", "n1"]);
    let names = ["m0", "n1"];
    let mut seed: u64 = 0x5eed_1234_abcd_ef01;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut killed_ctl, mut killed_agent, mut at_hook_end, mut retries) = (0, 0, 0, 0);
    for t in 0..trials {
        let tm = mk.join(format!("t{t}"));
        fs::create_dir_all(&tm).unwrap();
        let env = vec![
            format!("HELLO_MARKS={}", tm.display()),
            "HELLO_INSTALL_SECONDS=1".to_string(),
        ];
        let name = format!("t{t}");
        let cf = ctl.clusterfile(&name, &["m0"], &["n1"], &["hello:v1"], &env);
        assert!(ctl
            .cli(&["apply", "-f", cf.to_str().unwrap()])
            .status
            .success());
        // Kill at a random moment, or the instant a hook finishes (its mark appears).
        let victim = rnd(3) as usize; // 0: controller, 1..: agent
        if t % 2 == 0 {
            let hook = ["install", "init", "join"][rnd(3) as usize];
            let host = if hook == "init" {
                "m0"
            } else {
                names[rnd(2) as usize]
            };
            at_hook_end += 1;
            let start = std::time::Instant::now();
            while count(&tm, host, hook) == 0 && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rnd(4000)));
        }
        if victim == 0 {
            killed_ctl += 1;
            ctl.proc.as_mut().unwrap().kill9();
            std::thread::sleep(Duration::from_millis(300 + rnd(700)));
            ctl.spawn().unwrap();
        } else {
            killed_agent += 1;
            let i = victim - 1;
            agents[i].kill9();
            std::thread::sleep(Duration::from_millis(300 + rnd(1500)));
            agents[i] = ctl.run_agent(names[i]);
        }
        // Running, with `berth retry` only where a non-re-runnable hook was cut short.
        let mut ok = false;
        for _ in 0..3 {
            let out = ctl.cli(&["status", &name, "--watch"]);
            if out.status.success() {
                ok = true;
                break;
            }
            let st = ctl.status(&name);
            let cut = st["steps"].as_array().unwrap().iter().any(|s| {
                s["state"] == "interrupted"
                    && s["reason"].as_str().unwrap_or("").contains("was cut short")
            });
            assert!(cut, "trial {t}: failed without a cut-short hook: {st}");
            retries += 1;
            assert!(ctl.cli(&["retry", &name]).status.success());
        }
        assert!(ok, "trial {t}: not Running: {}", ctl.status(&name));
        let st = ctl.status(&name);
        for s in st["steps"].as_array().unwrap() {
            assert_eq!(s["state"], "succeeded", "trial {t}: {s}");
        }
        for h in names {
            for hook in ["install", "join", "init"] {
                assert!(
                    count(&tm, h, hook) <= 1,
                    "trial {t}: {hook} ran twice on {h}: {:?}",
                    marks(&tm, h)
                );
            }
            assert_eq!(count(&tm, h, "install"), 1, "trial {t}: {h}");
        }
        assert_eq!(count(&tm, "m0", "init"), 1, "trial {t}");
        assert_eq!(count(&tm, "n1", "join"), 1, "trial {t}");
        // Free the hosts for the next trial.
        let out = ctl.cli(&["reset", &name, "--wait"]);
        assert!(out.status.success(), "trial {t}: {}", stderr(&out));
    }
    let figures = format!(
        "crash trials: {trials} (controller killed {killed_ctl}, an agent killed {killed_agent}, {at_hook_end} at the instant a hook finished); every cluster Running; retries of cut-short hooks: {retries}; hooks run twice: 0; reports lost: 0"
    );
    println!("{figures}");
    // .ci/run prints this file: the figures of the run.
    let _ = fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash-trials.txt"),
        figures + "\n",
    );
}
