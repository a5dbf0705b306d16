//! Orchestration end to end with the real controller and several real agent processes.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::Value;
use std::fs;
use std::time::Duration;

fn steps<'a>(st: &'a Value, host: &str, kind: &str) -> Vec<&'a Value> {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["host"] == host && s["kind"] == kind)
        .collect()
}

fn time(s: &Value, k: &str) -> String {
    s[k].as_str().unwrap_or_default().to_string()
}

fn setup(names: &[&str]) -> (Controller, Vec<Proc>, std::path::PathBuf) {
    let ctl = Controller::start(&[]);
    let agents = ctl.agents(names);
    ctl.push_examples();
    let marks = ctl.dir.path().join("marks");
    fs::create_dir_all(&marks).unwrap();
    (ctl, agents, marks)
}

#[test]
fn a_three_host_cluster_is_created_in_phase_order_with_outputs_flowing_to_joins() {
    let (ctl, agents, mk) = setup(&["m0", "n1", "n2"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile(
        "c1",
        &["m0"],
        &["n1", "n2"],
        &["hello:v1", "hello-app:v1"],
        &env,
    );
    // A Config document, merged into the bundle's YAML on every host.
    let mut text = fs::read_to_string(&cf).unwrap();
    text.push_str("---\napiVersion: apps.sealos.io/v1beta1\nkind: Config\nmetadata:\n  name: settings\nspec:\n  path: etc/settings.yaml\n  match: hello:v1\n  strategy: merge\n  data: |\n    nested:\n      b: 2\n");
    fs::write(&cf, text).unwrap();
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("cluster c1: Running"),
        "{}",
        stdout(&out)
    );

    let st = ctl.status("c1");
    assert_eq!(st["phase"], "Running");
    // The list carries members and step counts, not the steps.
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    let all = st["steps"].as_array().unwrap().len() as u64;
    assert_eq!(
        list[0]["hosts"],
        serde_json::json!(["m0", "n1", "n2"]),
        "{list}"
    );
    assert_eq!(
        list[0]["steps"],
        serde_json::json!({ "succeeded": all }),
        "{list}"
    );
    let table = stdout(&ctl.cli(&["get", "clusters"]));
    assert!(
        table.contains("m0,n1,n2") && table.contains(&format!("{all} succeeded")),
        "{table}"
    );
    let init = steps(&st, "m0", "init")[0];
    for n in ["n1", "n2"] {
        let join = steps(&st, n, "join-node")[0];
        assert_eq!(join["state"], "succeeded");
        assert!(
            time(join, "started_at") >= time(init, "ended_at"),
            "no join before init: {join} vs {init}"
        );
        let install = steps(&st, n, "install")[0];
        assert!(time(install, "ended_at") <= time(join, "started_at"));
    }
    // init's secret reached every join.
    let token = st["outputs"]["JOIN_TOKEN"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 24);
    for n in ["n1", "n2"] {
        assert!(
            marks(&mk, n).contains(&format!("join {token}")),
            "{n}: {:?}",
            marks(&mk, n)
        );
    }
    // The app ran on master0 only.
    assert!(marks(&mk, "m0").contains(&"app".to_string()));
    for n in ["n1", "n2"] {
        assert!(!marks(&mk, n).iter().any(|l| l == "app"));
    }
    // Every hook got the whole stored Clusterfile, kubeadm document included.
    let cf_on_host =
        fs::read_to_string(ctl.agent_dir("n1").join("clusters/c1/Clusterfile")).unwrap();
    assert!(cf_on_host.contains("kind: ClusterConfiguration"));
    // Output values are secret unless asked for.
    let plain: Value =
        serde_json::from_slice(&ctl.cli(&["status", "c1", "-o", "json"]).stdout).unwrap();
    assert_eq!(plain["outputs"]["JOIN_TOKEN"], Value::Null);
    // The rendered template.
    let conf = fs::read_to_string(
        ctl.agent_dir("n2")
            .join("clusters/c1/rootfs/etc/hello.conf"),
    )
    .unwrap();
    assert_eq!(conf.trim(), "hello from n2 (node), master0 m0");
    let settings = fs::read_to_string(
        ctl.agent_dir("n1")
            .join("clusters/c1/rootfs/etc/settings.yaml"),
    )
    .unwrap();
    assert_eq!(
        settings,
        "greeting: hello\nnested:\n  a: 1\n  b: 2\n",
        "{:?} {}",
        ctl.cli(&["logs", "c1", "--host", "n1", "--step", "distribute"]),
        fs::read_to_string(&cf).unwrap()
    );
    // One unpack per host: the check step unpacked the bundle to run its check hook, and
    // distribute promoted that tree (Config and template applied above) instead of
    // unpacking again.
    for h in ["m0", "n1", "n2"] {
        let check = stdout(&ctl.cli(&["logs", "c1", "--host", h, "--step", "check"]));
        assert_eq!(
            check.matches("berth-agent: fetching hello:v1").count(),
            1,
            "{check}"
        );
        let dist = stdout(&ctl.cli(&["logs", "c1", "--host", h, "--step", "distribute"]));
        assert!(
            dist.contains("berth-agent: using the bundles the check step unpacked"),
            "{dist}"
        );
        assert!(!dist.contains("fetching"), "{dist}");
        assert!(!ctl.agent_dir(h).join("clusters/c1/.staged").exists());
    }
    // Concurrent reports from several agents never hit a busy database.
    for a in &agents {
        assert!(
            !a.log_text().contains("controller refused reports"),
            "{}",
            a.log_text()
        );
    }
}

#[test]
fn reports_made_while_the_controller_is_down_are_delivered_in_order_afterwards() {
    let (mut ctl, _agents, mk) = setup(&["m0"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=8".to_string(),
    ];
    let cf = ctl.clusterfile("c10", &["m0"], &[], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for("install running", Duration::from_secs(30), || {
        let st = ctl.status("c10");
        (steps(&st, "m0", "install")[0]["state"] == "running").then_some(())
    });
    assert_eq!(ctl.stop(), Some(true));
    std::thread::sleep(Duration::from_secs(20));
    ctl.spawn().unwrap();
    let out = ctl.cli(&["status", "c10", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stdout(&ctl.cli(&["logs", "c10", "--host", "m0", "--step", "install"]));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("installing... "))
        .collect();
    let want: Vec<String> = (0..8).map(|i| format!("installing... {i}")).collect();
    assert_eq!(lines, want, "every line once, in order:\n{log}");
    let st = ctl.status("c10");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(
            (s["state"].as_str(), s["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{s}"
        );
    }
}

#[test]
fn a_failed_step_stops_the_cluster_and_retry_resumes_without_rerunning_anything() {
    let (ctl, _agents, mk) = setup(&["m0", "n1", "n2"]);
    fs::write(mk.join("fail-install-n1"), "").unwrap();
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c2", &["m0"], &["n1", "n2"], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("error: cluster c2 failed: step install failed on host n1: exit code 1 (exited with code 1)"),
        "{}",
        stderr(&out)
    );
    // And says how to go on.
    assert!(
        stderr(&out).contains("berth logs c2 --host n1 --step install")
            && stderr(&out).contains("berth retry c2 --wait"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("--- log tail of install on n1 ---"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("hello: failing install on n1 because"),
        "{}",
        stdout(&out)
    );
    let st = ctl.status("c2");
    assert_eq!(st["phase"], "Failed");
    assert!(
        steps(&st, "m0", "init")[0]["state"] == "pending",
        "init must wait for every install"
    );

    fs::remove_file(mk.join("fail-install-n1")).unwrap();
    let out = ctl.cli(&["retry", "c2", "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("c2");
    assert_eq!(st["phase"], "Running");
    for s in st["steps"].as_array().unwrap() {
        let want = if s["host"] == "n1" && s["kind"] == "install" {
            2
        } else {
            1
        };
        assert_eq!(s["attempt"], want, "{s}");
        assert_eq!(s["state"], "succeeded");
    }
    for h in ["m0", "n1", "n2"] {
        let m = marks(&mk, h);
        assert_eq!(
            m.iter().filter(|l| *l == "install").count(),
            1,
            "{h}: {m:?}"
        );
        assert_eq!(m.iter().filter(|l| *l == "check").count(), 1, "{h}: {m:?}");
    }
}

#[test]
fn scale_up_runs_only_new_hosts_scale_down_leaves_and_reset_cleans_everything() {
    let (ctl, _agents, mk) = setup(&["m0", "n1", "m1", "m2", "n2"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c3", &["m0"], &["n1"], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before_m0 = marks(&mk, "m0");
    let before_n1 = marks(&mk, "n1");

    // Scale up: two masters and a node.
    let cf = ctl.clusterfile(
        "c3",
        &["m0", "m1", "m2"],
        &["n1", "n2"],
        &["hello:v1"],
        &env,
    );
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(marks(&mk, "m0"), before_m0, "old hosts ran nothing");
    assert_eq!(marks(&mk, "n1"), before_n1, "old hosts ran nothing");
    let st = ctl.status("c3");
    let j1 = steps(&st, "m1", "join-master")[0];
    let j2 = steps(&st, "m2", "join-master")[0];
    assert!(
        time(j1, "ended_at") <= time(j2, "started_at"),
        "masters join one at a time: {j1} {j2}"
    );
    assert_eq!(steps(&st, "n2", "join-node")[0]["state"], "succeeded");

    // Scale down with `berth delete`: n2 leaves, master0 removes it.
    let out = ctl.cli(&["delete", "--nodes", "n2", "--cluster", "c3", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(marks(&mk, "n2").contains(&"leave".to_string()));
    assert!(marks(&mk, "m0").contains(&"remove n2".to_string()));
    let st = ctl.status("c3");
    assert!(
        !st["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "n2"),
        "{st}"
    );
    assert!(!ctl.agent_dir("n2").join("clusters/c3").exists());

    // Reset: clean everywhere, files gone, cluster gone.
    let out = ctl.cli(&["reset", "c3", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for h in ["m0", "m1", "m2", "n1"] {
        assert!(marks(&mk, h).contains(&"clean".to_string()), "{h}");
        assert!(
            !ctl.agent_dir(h).join("clusters/c3").exists(),
            "{h}: cluster dir left"
        );
    }
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn clusterfile_errors_point_at_the_field_and_change_nothing() {
    let (ctl, _agents, _marks) = setup(&["m0"]);
    let cf = ctl.clusterfile("c4", &["ghost"], &[], &["hello:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert_eq!(
        stderr(&out).trim(),
        "error: Clusterfile document (Cluster): spec.hosts[0].ips: no enrolled host is named or has the address `ghost`; enroll it with `berth-agent join` (see `berth get hosts`) (invalid_clusterfile)"
    );
    let cf = ctl.clusterfile("c4", &["m0"], &[], &["nope:v9"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(stderr(&out).contains("spec.image[0]: no bundle `nope:v9` is stored; push it with `berth bundle push DIR --tag nope:v9`"), "{}", stderr(&out));
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
    // A host belongs to one cluster.
    let ok = ctl.clusterfile("c5", &["m0"], &[], &["hello:v1"], &[]);
    assert!(ctl
        .cli(&["apply", "-f", ok.to_str().unwrap(), "--wait"])
        .status
        .success());
    let other = ctl.clusterfile("c6", &["m0"], &[], &["hello:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("host `m0` already belongs to cluster `c5`"),
        "{}",
        stderr(&out)
    );
    // A bundle in use cannot be removed.
    let st = ctl.status("c5");
    let _ = st;
    let digest = serde_json::from_slice::<Value>(
        &ctl.cli(&["bundle", "inspect", "hello:v1", "-o", "json"])
            .stdout,
    )
    .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ctl.cli(&["bundle", "rm", &digest]);
    assert!(
        stderr(&out).contains("is used by cluster `c5`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_follow_shows_a_running_hook_as_it_writes() {
    let (ctl, _agents, mk) = setup(&["m0"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=6".to_string(),
    ];
    let cf = ctl.clusterfile("c7", &["m0"], &[], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    let mut follow = std::process::Command::new(berth_bin())
        .arg("--data-dir")
        .arg(&ctl.data_dir)
        .args(["logs", "c7", "--host", "m0", "--step", "install", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the install step exists and runs.
    wait_for("install running", Duration::from_secs(30), || {
        let st = ctl.status("c7");
        (steps(&st, "m0", "install")[0]["state"] == "running").then_some(())
    });
    let mut out = follow.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    use std::io::Read;
    while !seen.contains("installing... 1") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "logs -f ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The hook is still running while its output is already shown.
    let st = ctl.status("c7");
    assert_eq!(steps(&st, "m0", "install")[0]["state"], "running", "{seen}");
    // And a second apply while this one runs is refused, not interleaved.
    let again = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        stderr(&again)
            .contains("an apply of cluster `c7` is in progress (1 steps running); wait for it"),
        "{}",
        stderr(&again)
    );
    let status = follow.wait().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(
        format!("{seen}{rest}").contains("installed on m0"),
        "{seen}{rest}"
    );
}

#[test]
fn a_controller_killed_mid_apply_resumes_and_no_step_runs_twice() {
    let (mut ctl, _agents, mk) = setup(&["m0", "n1"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=3".to_string(),
    ];
    let cf = ctl.clusterfile("c8", &["m0"], &["n1"], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for("install running", Duration::from_secs(30), || {
        let st = ctl.status("c8");
        (steps(&st, "m0", "install")[0]["state"] == "running").then_some(())
    });
    ctl.proc.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(4)); // installs finish while the controller is down
    ctl.spawn().unwrap();
    let out = ctl.cli(&["status", "c8", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("c8");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(
            (s["state"].as_str(), s["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{s}"
        );
    }
    for h in ["m0", "n1"] {
        let m = marks(&mk, h);
        assert_eq!(
            m.iter().filter(|l| *l == "install").count(),
            1,
            "{h}: {m:?}"
        );
    }
    // The install log reached the controller whole, though it was cut off mid-step.
    let log = stdout(&ctl.cli(&["logs", "c8", "--host", "n1", "--step", "install"]));
    for i in 0..3 {
        assert!(log.contains(&format!("installing... {i}")), "{log}");
    }
    assert!(log.contains("installed on n1"), "{log}");
}

/// Kills the agent and every hook it started, as a host that loses power would.
fn kill_agent_and_hooks(ctl: &Controller, agent: &mut Proc, host: &str) {
    agent.kill9();
    for e in fs::read_dir(ctl.agent_dir(host).join("journal")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "pgid") {
            let pg = fs::read_to_string(&p).unwrap().trim().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", "--", &format!("-{pg}")])
                .status();
        }
    }
}

#[test]
fn a_hook_cut_short_with_its_host_reports_interrupted_and_waits_for_retry() {
    let (ctl, mut agents, mk) = setup(&["m0"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=30".to_string(),
    ];
    let cf = ctl.clusterfile("c9", &["m0"], &[], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for("install running", Duration::from_secs(30), || {
        let st = ctl.status("c9");
        (steps(&st, "m0", "install")[0]["state"] == "running").then_some(())
    });
    kill_agent_and_hooks(&ctl, &mut agents[0], "m0");
    let _again = ctl.run_agent("m0");
    wait_for("interrupted", Duration::from_secs(30), || {
        let st = ctl.status("c9");
        (steps(&st, "m0", "install")[0]["state"] == "interrupted").then_some(())
    });
    let st = ctl.status("c9");
    assert_eq!(st["phase"], "Failed");
    assert!(
        st["message"].as_str().unwrap().contains(
            "step install failed on host m0: interrupted (install of hello:v1 was cut short"
        ),
        "{st}"
    );
    // install is not declared re-runnable: it did not run again by itself.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(steps(&ctl.status("c9"), "m0", "install")[0]["attempt"], 1);
    assert!(!marks(&mk, "m0").contains(&"install".to_string()));
}

#[test]
fn a_rerunnable_hook_cut_short_with_its_host_runs_again_by_itself() {
    let (ctl, mut agents, mk) = setup(&["m0"]);
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_CHECK_SECONDS=4".to_string(),
    ];
    let cf = ctl.clusterfile("c11", &["m0"], &[], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    // The hook itself must have started (not just the step: it fetches and unpacks first).
    wait_for("check hook running", Duration::from_secs(30), || {
        stdout(&ctl.cli(&["logs", "c11", "--host", "m0", "--step", "check"]))
            .contains("running check of hello:v1")
            .then_some(())
    });
    kill_agent_and_hooks(&ctl, &mut agents[0], "m0");
    let _again = ctl.run_agent("m0");
    let out = ctl.cli(&["status", "c11", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stdout(&ctl.cli(&["logs", "c11", "--host", "m0", "--step", "check"]));
    assert!(
        log.contains("check of hello:v1 was cut short; running it again (declared re-runnable)"),
        "{log}"
    );
    // check (declared re-runnable) finished once, after the restart; nothing else repeated.
    let m = marks(&mk, "m0");
    assert_eq!(m.iter().filter(|l| *l == "check").count(), 1, "{m:?}");
    assert_eq!(m.iter().filter(|l| *l == "install").count(), 1, "{m:?}");
}

/// Rewrites a field of the agent's stored identity (agent.json).
fn tamper_identity(ctl: &Controller, name: &str, key: &str, value: &str) {
    let p = ctl.agent_dir(name).join("identity/agent.json");
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = Value::String(value.into());
    fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn plans_that_do_not_verify_are_refused_with_the_exact_reason_and_nothing_runs() {
    let ctl = Controller::start(&[]);
    let names = ["wronghost", "unknownkey", "badsig", "replay"];
    let (token, hash) = ctl.create_token(names.len() as u32, "1h");
    for n in names {
        assert!(ctl.join(n, &token, &hash).status.success());
    }
    // Each agent gets a different lie about what to trust or who it is.
    tamper_identity(&ctl, "wronghost", "name", "someone-else");
    tamper_identity(&ctl, "unknownkey", "plan_key_id", "0000000000000000");
    tamper_identity(&ctl, "badsig", "plan_public_key", &"ab".repeat(32));
    fs::write(ctl.agent_dir("replay").join("plan.generation"), "1000").unwrap();
    let agents: Vec<Proc> = names.iter().map(|n| ctl.run_agent(n)).collect();
    ctl.push_examples();
    let mk = ctl.dir.path().join("marks");
    fs::create_dir_all(&mk).unwrap();
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile(
        "c12",
        &["wronghost"],
        &["unknownkey", "badsig", "replay"],
        &["hello:v1"],
        &env,
    );
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    let want = [
        "plan is for host `wronghost`, not `someone-else`",
        "plan signed with unknown key id `",
        "plan signature does not verify",
        "is older than the last accepted generation 1000 (replay or rollback)",
    ];
    for (a, w) in agents.iter().zip(want) {
        wait_for(w, Duration::from_secs(30), || {
            a.log_text().contains(w).then_some(())
        });
        assert!(a.log_text().contains("plan refused; nothing from it runs"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let st = ctl.status("c12");
    for s in st["steps"].as_array().unwrap() {
        assert!(
            matches!(s["state"].as_str(), Some("released") | Some("pending")),
            "nothing ran: {s}"
        );
    }
    for n in names {
        assert!(marks(&mk, n).is_empty(), "{n} ran a hook");
        assert!(
            !ctl.agent_dir(n).join("journal").exists(),
            "{n} started a step"
        );
    }
}

/// Seconds since midnight of a tracing log line's timestamp (`2026-11-25T12:03:59.876019Z …`).
fn log_secs(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn a_released_step_reaches_a_waiting_long_poll_within_100_ms() {
    let (ctl, agents, mk) = setup(&["m0"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c13", &["m0"], &[], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ctl_log = ctl.proc.as_ref().unwrap().log_text();
    let agent_log = agents[0].log_text();
    let reports: Vec<f64> = ctl_log
        .lines()
        .filter(|l| l.contains("step report") && l.contains("state=succeeded"))
        .filter_map(log_secs)
        .collect();
    let accepted: Vec<f64> = agent_log
        .lines()
        .filter(|l| l.contains("plan accepted"))
        .filter_map(log_secs)
        .collect();
    assert!(reports.len() >= 4, "{ctl_log}");
    // Every step but the last releases the next one: the agent, already waiting in its
    // long-poll, must have the new plan within 100 ms of the report that released it.
    let mut delays = Vec::new();
    for r in &reports[..reports.len() - 1] {
        let next = accepted
            .iter()
            .find(|a| *a >= r)
            .unwrap_or_else(|| panic!("no plan after {r}:\n{agent_log}"));
        delays.push(next - r);
    }
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = delays[delays.len() / 2];
    assert!(median < 0.1, "median delivery {median:.3}s, all {delays:?}");
}

#[test]
fn a_status_request_with_its_etag_waits_for_the_next_change_or_answers_304() {
    let (ctl, _agents, mk) = setup(&["m0"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c14", &["m0"], &[], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let http = ctl.api_client().unwrap();
    let url = format!("{}/v1/clusters/c14", ctl.url());
    let get = |query: &str, etag: Option<&str>| {
        let mut req = http
            .get(format!("{url}{query}"))
            .bearer_auth(ctl.admin_token());
        if let Some(t) = etag {
            req = req.header("If-None-Match", t);
        }
        let started = std::time::Instant::now();
        let resp = req.send().unwrap();
        let tag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        (
            resp.status().as_u16(),
            tag,
            resp.text().unwrap(),
            started.elapsed(),
        )
    };
    let (code, tag, body, _) = get("", None);
    assert_eq!(code, 200, "{body}");
    let tag = tag.expect("an ETag");
    assert!(body.contains("\"Running\""), "{body}");
    // The same ETag, nothing changing: held for the wait, then 304 with no body.
    let (code, again, body, took) = get("?wait=1", Some(&tag));
    assert_eq!(
        (code, again.as_deref(), body.as_str()),
        (304, Some(tag.as_str()), "")
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Another ETag (or none): answered at once, however long the wait.
    let (code, _, _, took) = get("?wait=30", Some("\"stale\""));
    assert_eq!(code, 200);
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The summary (members and step counts) has an ETag of its own and waits the same way.
    let (code, stag, body, _) = get("?summary=true", None);
    assert_eq!(code, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["hosts"], serde_json::json!(["m0"]), "{body}");
    assert!(
        summary["steps"]["succeeded"].as_u64().unwrap() >= 4,
        "{body}"
    );
    let stag = stag.expect("an ETag");
    assert_ne!(stag, tag);
    let (code, _, body, _) = get("?summary=true&wait=1", Some(&stag));
    assert_eq!((code, body.as_str()), (304, ""));
    // A change while requests wait: answered with the new status, long before the wait.
    let wait_for_change = |query: &'static str, tag: String| {
        let (url, token, ca) = (url.clone(), ctl.admin_token(), ctl.ca_pem());
        std::thread::spawn(move || {
            let http = client(&ca, None).unwrap();
            let started = std::time::Instant::now();
            let resp = http
                .get(format!("{url}?wait=60{query}"))
                .bearer_auth(token)
                .header("If-None-Match", tag)
                .send()
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.text().unwrap(), started.elapsed())
        })
    };
    let waiter = wait_for_change("", tag.clone());
    let summary_waiter = wait_for_change("&summary=true", stag);
    std::thread::sleep(Duration::from_secs(2));
    assert!(ctl.cli(&["reset", "c14"]).status.success());
    for w in [waiter, summary_waiter] {
        let (code, body, took) = w.join().unwrap();
        // The new status, or — when the one-host reset finished while a busy controller
        // spaced the re-read after the change — the cluster is gone.
        match code {
            200 => assert!(!body.contains("\"Running\""), "{body}"),
            404 => assert!(body.contains("\"code\":\"not_found\""), "{body}"),
            _ => panic!("{code}: {body}"),
        }
        assert!(
            took > Duration::from_secs(1) && took < Duration::from_secs(30),
            "{took:?}"
        );
    }
    // A wait on a cluster that does not exist is not held.
    let resp = http
        .get(format!("{}/v1/clusters/c-none?wait=30", ctl.url()))
        .bearer_auth(ctl.admin_token())
        .header("If-None-Match", &tag)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// Writes a bundle with no hooks: one plain file, and a template when `template`.
fn hookless_bundle(dir: &std::path::Path, name: &str, template: bool) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("bundle.yaml"),
        format!(
            "apiVersion: berth.dev/v1\nkind: Bundle\nname: {name}\nversion: v1\ntype: rootfs\n"
        ),
    )
    .unwrap();
    fs::write(dir.join("etc/plain.txt"), "plain\n").unwrap();
    if template {
        fs::write(
            dir.join("etc/who.conf.tmpl"),
            "{{ .BERTH_HOST }} of {{ .BERTH_NODES }}\n",
        )
        .unwrap();
    }
}

#[test]
fn hosts_whose_steps_need_no_hook_config_or_template_never_download_the_cluster_context() {
    let (ctl, _agents, _mk) = setup(&["m0", "n1"]);
    for (name, template) in [("plain", false), ("plaintmpl", true)] {
        let src = ctl.dir.path().join(name);
        hookless_bundle(&src, name, template);
        let tag = format!("{name}:v1");
        let out = ctl.cli(&["bundle", "push", src.to_str().unwrap(), "--tag", &tag]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let contexts = |h: &str| -> usize {
        fs::read_dir(ctl.agent_dir(h).join("cache/contexts"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let cf = ctl.clusterfile("c15", &["m0"], &["n1"], &["plain:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for h in ["m0", "n1"] {
        let cdir = ctl.agent_dir(h).join("clusters/c15");
        assert_eq!(
            fs::read_to_string(cdir.join("rootfs/etc/plain.txt")).unwrap(),
            "plain\n"
        );
        assert_eq!(contexts(h), 0, "{h} fetched a context it did not need");
        assert!(!cdir.join("Clusterfile").exists());
    }
    let out = ctl.cli(&["reset", "c15", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A template needs the cluster's values: that host fetches the context, once.
    let cf = ctl.clusterfile("c16", &["m0"], &["n1"], &["plaintmpl:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("c16");
    let n1_ip = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "n1")
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    for h in ["m0", "n1"] {
        let cdir = ctl.agent_dir(h).join("clusters/c16");
        assert_eq!(
            fs::read_to_string(cdir.join("rootfs/etc/who.conf")).unwrap(),
            format!("{h} of {n1_ip}\n")
        );
        assert_eq!(contexts(h), 1);
        assert!(cdir.join("Clusterfile").exists());
    }
}

/// A sample's value in OpenMetrics text, e.g. `berth_connections_open`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_reports_and_plan_deliveries_for_viewers_only() {
    let (ctl, agents, mk) = setup(&["m0"]);
    let url = format!("{}/metrics", ctl.url());
    let http = ctl.api_client().unwrap();
    let r = http.get(&url).send().unwrap();
    assert_eq!(r.status(), 401, "metrics need a token");
    let r = http
        .get(&url)
        .bearer_auth("berth_viewer_nope")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "a made-up token is refused");

    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c30", &["m0"], &[], &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st = ctl.status("c30");
    let steps = st["steps"].as_array().unwrap().len() as f64;

    let viewer = stdout(&ctl.cli(&[
        "api-token",
        "create",
        "--name",
        "prometheus",
        "--role",
        "viewer",
    ]))
    .trim()
    .to_string();
    let r = http.get(&url).bearer_auth(&viewer).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // Every step reported at least its start and its end (some batched together).
    let reports = sample(&text, "berth_agent_report_duration_seconds_count").unwrap();
    assert!(
        reports >= steps,
        "{reports} report requests for {steps} steps\n{text}"
    );
    // Each step after the first was released while the agent waited in its poll.
    let deliveries = sample(&text, "berth_plan_delivery_seconds_count").unwrap();
    assert!(
        deliveries >= steps - 1.0,
        "{deliveries} woken polls for {steps} steps\n{text}"
    );
    let within_100ms = sample(&text, "berth_plan_delivery_seconds_bucket{le=\"0.1\"}").unwrap();
    assert!(within_100ms >= deliveries - 1.0, "{text}");
    // The agent's connection and this one; the agent's poll is held right now.
    assert!(
        sample(&text, "berth_connections_open").unwrap() >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "berth_connections_accepted_total").unwrap() >= 2.0,
        "{text}"
    );
    wait_for(
        "the agent's poll to be held",
        Duration::from_secs(10),
        || {
            let t = http
                .get(&url)
                .bearer_auth(&viewer)
                .send()
                .ok()?
                .text()
                .ok()?;
            (sample(&t, "berth_agent_polls_held")? >= 1.0).then_some(())
        },
    );
    drop(agents);
}

#[test]
fn a_summary_watch_prints_step_counts_and_ends_with_the_full_status() {
    let (ctl, _agents, mk) = setup(&["m0"]);
    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("c31", &["m0"], &[], &["hello:v1"], &env);
    // `berth ARGS` with BERTH_PROGRESS=progress; a bad value is refused first.
    let with_progress = |args: &[&str], progress: &str| {
        ctl.cli_command(args)
            .env("BERTH_PROGRESS", progress)
            .output()
            .unwrap()
    };
    let refused = |args: &[&str]| {
        let out = with_progress(args, "bogus");
        assert!(!out.status.success());
        assert_eq!(
            stderr(&out).trim(),
            "error: BERTH_PROGRESS=bogus: use `summary` or `steps`"
        );
    };
    let apply = ["apply", "-f", cf.to_str().unwrap(), "--wait"];
    refused(&apply);
    let out = with_progress(&apply, "summary");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let steps = ctl.status("c31")["steps"].as_array().unwrap().len();
    // Progress lines of counts, the last one all succeeded; no line per step.
    assert!(
        err.lines()
            .any(|l| l.ends_with(&format!("cluster c31 is Running: {steps} succeeded"))),
        "{err}"
    );
    assert!(!err.lines().any(|l| l.contains(" m0 ")), "{err}");
    // Then the full status, as without it.
    assert!(
        stdout(&out).contains("cluster c31: Running"),
        "{}",
        stdout(&out)
    );

    // `reset --wait` follows the same choice, read before the reset is sent.
    let reset = ["reset", "c31", "--wait"];
    refused(&reset);
    assert_eq!(ctl.status("c31")["phase"], "Running", "nothing was reset");
    let out = with_progress(&reset, "summary");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("] cluster c31 is Resetting: ")),
        "{err}"
    );
    assert!(!err.lines().any(|l| l.contains("waiting for")), "{err}");
    assert!(
        stdout(&out).contains("cluster c31 reset and removed"),
        "{}",
        stdout(&out)
    );
}
