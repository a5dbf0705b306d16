//! Day 2 with real agents: upgrades host by host in batches, rootfs generations, a failed
//! upgrade turned back with `berth rollback`, upgrades refused before they change
//! anything, dry runs, the event log, and `berth exec`.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A rootfs bundle `kube` at `version` whose hooks append `<ns> <host> <hook> <what>` to
/// `$MARKS` (one shared file: the order across hosts is the order of the lines' times).
/// Its upgrade hook sleeps a second so batches overlap visibly, and fails on the host
/// named by `$FAIL_UPGRADE_ON` in this version.
fn kube(dir: &Path, version: &str, fail_on: Option<&str>) -> PathBuf {
    let mark = |hook: &str, what: &str| {
        format!("echo \"$(date +%s%N) $BERTH_HOST {hook} {what}\" >> \"$MARKS\"")
    };
    let moving = "from=$BERTH_FROM_VERSION to=$BERTH_TO_VERSION fromfs=$(cat \"$BERTH_FROM_ROOTFS/VERSION\") tofs=$(cat \"$BERTH_TO_ROOTFS/VERSION\") cwd=$(cat VERSION)";
    let fail = match fail_on {
        Some(h) => {
            format!("if [ \"$BERTH_HOST\" = {h} ]; then echo upgrade breaks here >&2; exit 7; fi")
        }
        None => String::new(),
    };
    let upgrade = format!(
        "{}\nsleep 1\n{fail}\n{}",
        mark("upgrade-start", moving),
        mark("upgrade-end", moving)
    );
    let d = hook_bundle(
        dir,
        &format!("kube-{version}"),
        &[
            ("install", &mark("install", version)),
            ("init", &mark("init", version)),
            ("join-node", &mark("join-node", version)),
            ("upgrade", &upgrade),
            ("rollback", &mark("rollback", moving)),
            ("clean", &mark("clean", version)),
        ],
        "",
    );
    let y = fs::read_to_string(d.join("bundle.yaml")).unwrap();
    let y = y
        .replace(&format!("name: kube-{version}"), "name: kube")
        .replace("version: v1", &format!("version: {version}"));
    fs::write(d.join("bundle.yaml"), y).unwrap();
    // `cwd=$(cat VERSION)`: a hook runs in the tree it belongs to.
    fs::write(d.join("VERSION"), version).unwrap();
    d
}

struct Line {
    ns: u128,
    host: String,
    hook: String,
    what: String,
}

fn lines(marks: &Path) -> Vec<Line> {
    let mut v: Vec<Line> = fs::read_to_string(marks)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            Line {
                ns: p.next().unwrap().parse().unwrap(),
                host: p.next().unwrap().into(),
                hook: p.next().unwrap().into(),
                what: p.next().unwrap_or("").into(),
            }
        })
        .collect();
    v.sort_by_key(|l| l.ns);
    v
}

fn of<'a>(all: &'a [Line], hook: &str) -> Vec<&'a Line> {
    all.iter().filter(|l| l.hook == hook).collect()
}

fn at<'a>(all: &'a [Line], host: &str, hook: &str) -> &'a Line {
    all.iter()
        .find(|l| l.host == host && l.hook == hook)
        .unwrap_or_else(|| panic!("no {hook} on {host}"))
}

fn version_in(ctl: &Controller, host: &str, tree: &str) -> Option<String> {
    fs::read_to_string(
        ctl.agent_dir(host)
            .join("clusters/c")
            .join(tree)
            .join("VERSION"),
    )
    .ok()
}

#[test]
fn upgrade_in_batches_then_a_failed_upgrade_rolled_back() {
    let ctl = Controller::start(&[]);
    let hosts = ["m0", "n1", "n2", "n3"];
    let _agents = ctl.agents(&hosts);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for (v, fail) in [("v1", None), ("v2", None), ("v3", Some("n3"))] {
        push_dir(&ctl, &kube(&src, v, fail), &format!("kube:{v}"));
    }
    let env = vec![format!("MARKS={}", marks.display())];
    let cf = |v: &str| {
        ctl.clusterfile(
            "c",
            &["m0"],
            &["n1", "n2", "n3"],
            &[&format!("kube:{v}")],
            &env,
        )
    };

    let out = apply_file(&ctl, &cf("v1"));
    assert!(out.status.success(), "{}", stderr(&out));
    let created = lines(&marks).len();
    assert_eq!(created, 4 + 1 + 3, "install ×4, init, join-node ×3");

    // v1 → v2, two nodes at a time.
    let out = ctl.cli(&[
        "apply",
        "-f",
        cf("v2").to_str().unwrap(),
        "--wait",
        "--max-unavailable",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ctl.status("c")["phase"], "Running");
    let all = lines(&marks);
    let ends = of(&all, "upgrade-end");
    assert_eq!(ends.len(), 4);
    for l in &ends {
        assert_eq!(
            l.what, "from=v1 to=v2 fromfs=v1 tofs=v2 cwd=v2",
            "{}: versions and both trees",
            l.host
        );
    }
    let start = |h| at(&all, h, "upgrade-start").ns;
    let end = |h| at(&all, h, "upgrade-end").ns;
    assert!(
        end("m0") < start("n1") && end("m0") < start("n2"),
        "master0 first"
    );
    assert!(
        start("n1") < end("n2") && start("n2") < end("n1"),
        "n1 and n2 together"
    );
    assert!(
        end("n1") < start("n3") && end("n2") < start("n3"),
        "n3 in the next batch"
    );
    for h in hosts {
        assert_eq!(version_in(&ctl, h, "rootfs").as_deref(), Some("v2"), "{h}");
        assert_eq!(
            version_in(&ctl, h, "rootfs.prev").as_deref(),
            Some("v1"),
            "{h}: the old rootfs is kept"
        );
    }

    // v2 → v3 fails on n3 (the last batch): the cluster is Failed, naming host and step.
    let out = ctl.cli(&[
        "apply",
        "-f",
        cf("v3").to_str().unwrap(),
        "--wait",
        "--max-unavailable",
        "2",
    ]);
    assert!(!out.status.success());
    let st = ctl.status("c");
    assert_eq!(st["phase"], "Failed");
    let msg = st["message"].as_str().unwrap();
    assert!(msg.contains("upgrade") && msg.contains("n3"), "{msg}");
    assert_eq!(
        version_in(&ctl, "n3", "rootfs").as_deref(),
        Some("v2"),
        "n3 did not switch"
    );
    assert_eq!(version_in(&ctl, "n1", "rootfs").as_deref(), Some("v3"));
    // Another upgrade is refused until the failed one is settled, saying what to do.
    let out = ctl.cli(&["apply", "-f", cf("v1").to_str().unwrap()]);
    assert!(
        stderr(&out).contains("berth rollback") && stderr(&out).contains("(cluster_not_settled)"),
        "{}",
        stderr(&out)
    );

    let before = lines(&marks).len();
    let out = ctl.cli(&["rollback", "c", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ctl.status("c")["phase"], "Running");
    let all = lines(&marks);
    let back = &all[before..];
    assert!(
        back.iter().all(|l| l.hook == "rollback"),
        "only rollback ran"
    );
    let order: Vec<&str> = back.iter().map(|l| l.host.as_str()).collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], "n3", "the last batch first: {order:?}");
    assert_eq!(order[3], "m0", "master0 last: {order:?}");
    for l in back {
        assert_eq!(
            l.what, "from=v3 to=v2 fromfs=v3 tofs=v2 cwd=v3",
            "{}: the rollback hook of v3, from its tree, back to v2",
            l.host
        );
    }
    for h in hosts {
        assert_eq!(version_in(&ctl, h, "rootfs").as_deref(), Some("v2"), "{h}");
        assert!(version_in(&ctl, h, "rootfs.next").is_none(), "{h}");
    }
    // No create-phase hook ran again at any point.
    for hook in ["install", "init", "join-node"] {
        let n = of(&all, hook).len();
        assert_eq!(
            n,
            if hook == "init" {
                1
            } else if hook == "install" {
                4
            } else {
                3
            },
            "{hook}"
        );
    }
    // The hosts' plans moved on: a rollback of a rollback has nothing to turn back.
    let out = ctl.cli(&["rollback", "c"]);
    assert!(
        stderr(&out).contains("(nothing_to_roll_back)"),
        "{}",
        stderr(&out)
    );

    // The event log tells all of it, in order.
    let out = ctl.cli(&["get", "events", "c", "-o", "json", "--limit", "10000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |kind: &str, host: Option<&str>, msg: &str| {
        events
            .iter()
            .position(|e| {
                e["kind"] == kind
                    && host.is_none_or(|h| e["host"] == h)
                    && e["message"].as_str().unwrap().contains(msg)
            })
            .unwrap_or_else(|| panic!("no {kind} event `{msg}` in {events:#?}"))
    };
    let order = [
        find("phase", None, "created: Reconciling"),
        find("step", Some("n1"), "join-node succeeded"),
        find("phase", None, "Reconciling -> Running"),
        find("apply", None, "generation 2 applied by"),
        find("batch", None, "upgrade batch 1: m0"),
        find("batch", None, "upgrade batch 2: n1, n2"),
        find("batch", None, "upgrade batch 3: n3"),
        find("step", Some("n3"), "upgrade failed, exit code 7"),
        find(
            "phase",
            None,
            "Reconciling -> Failed: step upgrade failed on host n3",
        ),
        find("rollback", None, "rollback by"),
        find("batch", None, "rollback batch 1: n3"),
        find("batch", None, "rollback batch 3: m0"),
        find("step", Some("m0"), "rollback succeeded"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times in order");
}

#[test]
fn a_failed_upgrade_continues_with_retry() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    push_dir(&ctl, &kube(&src, "v1", None), "kube:v1");
    // v2 fails on n1 while a flag file exists; retry after it is gone continues.
    let flag = ctl.dir.path().join("broken");
    fs::write(&flag, "").unwrap();
    let v2 = kube(&src, "v2", None);
    let p = v2.join("scripts/upgrade.sh");
    let body = fs::read_to_string(&p).unwrap();
    fs::write(
        &p,
        body.replace(
            "sleep 1\n",
            &format!(
                "sleep 1\nif [ \"$BERTH_HOST\" = n1 ] && [ -e {} ]; then exit 9; fi\n",
                flag.display()
            ),
        ),
    )
    .unwrap();
    push_dir(&ctl, &v2, "kube:v2");
    let env = vec![format!("MARKS={}", marks.display())];
    let cf = |v: &str| ctl.clusterfile("c", &["m0"], &["n1"], &[&format!("kube:{v}")], &env);
    assert!(apply_file(&ctl, &cf("v1")).status.success());
    assert!(!apply_file(&ctl, &cf("v2")).status.success());
    assert_eq!(ctl.status("c")["phase"], "Failed");
    fs::remove_file(&flag).unwrap();
    // `get events --watch -o json` prints each event as it happens, one a line.
    let watch_out = ctl.dir.path().join("watch.jsonl");
    let mut watcher = ctl
        .cli_command(&[
            "get", "events", "c", "--watch", "-o", "json", "--limit", "1",
        ])
        .stdout(fs::File::create(&watch_out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It printed the newest event: it is watching.
    wait_for(
        "the watcher to start",
        std::time::Duration::from_secs(20),
        || {
            fs::read_to_string(&watch_out)
                .ok()
                .filter(|t| t.contains('\n'))
        },
    );
    let out = ctl.cli(&["retry", "c", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = wait_for(
        "the watcher to see Running",
        std::time::Duration::from_secs(20),
        || {
            let text = fs::read_to_string(&watch_out).unwrap_or_default();
            (text.contains("Failed -> Reconciling") && text.contains("Reconciling -> Running"))
                .then_some(text)
        },
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    for line in seen.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["cluster"], "c");
    }
    assert!(seen.contains("upgrade pending (attempt 2)"), "{seen}");
    let all = lines(&marks);
    // master0 upgraded once; n1 twice (the failed attempt, then the retry).
    assert_eq!(
        of(&all, "upgrade-end")
            .iter()
            .filter(|l| l.host == "m0")
            .count(),
        1
    );
    assert_eq!(
        of(&all, "upgrade-start")
            .iter()
            .filter(|l| l.host == "n1")
            .count(),
        2
    );
    assert_eq!(version_in(&ctl, "n1", "rootfs").as_deref(), Some("v2"));
}

#[test]
fn an_upgrade_that_cannot_be_made_in_place_changes_nothing() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    push_dir(&ctl, &kube(&src, "v1", None), "kube:v1");
    // v2 without an upgrade hook.
    let v2 = kube(&src, "v2", None);
    let y = fs::read_to_string(v2.join("bundle.yaml")).unwrap();
    fs::write(
        v2.join("bundle.yaml"),
        y.replace("  upgrade: scripts/upgrade.sh\n", ""),
    )
    .unwrap();
    push_dir(&ctl, &v2, "kube:v2");
    let env = vec![format!("MARKS={}", marks.display())];
    let cf = |v: &str| ctl.clusterfile("c", &["m0"], &[], &[&format!("kube:{v}")], &env);
    assert!(apply_file(&ctl, &cf("v1")).status.success());
    let out = ctl.cli(&["apply", "-f", cf("v2").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("declares no `upgrade` hook")
            && stderr(&out).contains("(upgrade_unsupported)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl.status("c")["generation"], 1, "nothing stored");
    // A bad --max-unavailable is refused by the CLI.
    let out = ctl.cli(&[
        "apply",
        "-f",
        cf("v1").to_str().unwrap(),
        "--max-unavailable",
        "0",
    ]);
    assert!(!out.status.success());
}

#[test]
fn dry_run_says_what_would_happen_and_stores_nothing() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1", "n2"]);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    push_dir(&ctl, &kube(&src, "v1", None), "kube:v1");
    push_dir(&ctl, &kube(&src, "v2", None), "kube:v2");
    let env = vec![format!("MARKS={}", marks.display())];
    let cf = |nodes: &[&str], v: &str| {
        ctl.clusterfile("c", &["m0"], nodes, &[&format!("kube:{v}")], &env)
    };
    let dry = |file: &Path, extra: &[&str]| {
        let mut args = vec!["diff", "-f", file.to_str().unwrap()];
        args.extend(extra);
        ctl.cli(&args)
    };

    // Create: exit 2, the phases in order; nothing stored.
    let out = dry(&cf(&["n1"], "v1"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "cluster c would be created\n\
         \x20 hosts to add:    m0, n1\n\
         \x20 1.  check       m0, n1\n\
         \x20 2.  distribute  m0, n1\n\
         \x20 3.  install     m0, n1\n\
         \x20 4.  init        m0\n\
         \x20 5.  join-node   n1\n"
    );
    let out = ctl.cli(&[
        "apply",
        "-f",
        cf(&["n1"], "v1").to_str().unwrap(),
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = |h: &str, k: &str| serde_json::json!({"host": h, "kind": k});
    assert_eq!(
        json,
        serde_json::json!({
            "cluster": "c",
            "create": true,
            "changes": true,
            "spec_changed": true,
            "add_hosts": ["m0", "n1"],
            "remove_hosts": [],
            "resumed": [],
            "waves": [
                [step("m0", "check"), step("n1", "check")],
                [step("m0", "distribute"), step("n1", "distribute")],
                [step("m0", "install"), step("n1", "install")],
                [step("m0", "init")],
                [step("n1", "join-node")],
            ],
        })
    );
    let out = ctl.cli(&["get", "clusters", "-o", "json"]);
    assert_eq!(stdout(&out).trim(), "[]", "a dry run stores nothing");
    assert!(lines(&marks).is_empty(), "and runs nothing");

    assert!(apply_file(&ctl, &cf(&["n1"], "v1")).status.success());
    // No change: exit 0.
    let out = dry(&cf(&["n1"], "v1"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "cluster c: no changes\n");
    let out = dry(&cf(&["n1"], "v1"), &["-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["changes"].clone(), json["waves"].clone()),
        (false.into(), serde_json::json!([]))
    );

    // Scale: the new node only; and scale down.
    let out = dry(&cf(&["n1", "n2"], "v1"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout(&out),
        "cluster c would change\n\
         \x20 hosts to add:    n2\n\
         \x20 1.  check       n2\n\
         \x20 2.  distribute  n2\n\
         \x20 3.  install     n2\n\
         \x20 4.  join-node   n2\n"
    );
    let out = dry(&cf(&[], "v1"), &[]);
    assert_eq!(
        stdout(&out),
        "cluster c would change\n\
         \x20 hosts to remove: n1\n\
         \x20 1.  leave       n1\n\
         \x20 2.  remove      m0\n"
    );

    // Upgrade: master0, then the nodes in batches.
    let out = dry(&cf(&["n1"], "v2"), &["--max-unavailable", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "cluster c would change\n\
         \x20 upgrade:         kube:v1 -> kube:v2 (nodes 2 at a time)\n\
         \x20 1.  upgrade     m0\n\
         \x20 2.  upgrade     n1\n"
    );
    let out = dry(
        &cf(&["n1"], "v2"),
        &["--max-unavailable", "2", "-o", "json"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cluster": "c",
            "create": false,
            "changes": true,
            "spec_changed": true,
            "add_hosts": [],
            "remove_hosts": [],
            "upgrade": {"from": ["kube:v1"], "to": ["kube:v2"], "max_unavailable": 2},
            "resumed": [],
            "waves": [[step("m0", "upgrade")], [step("n1", "upgrade")]],
        })
    );
    assert_eq!(ctl.status("c")["generation"], 1, "nothing stored");
    assert_eq!(
        lines(&marks).len(),
        2 + 1 + 1,
        "nothing ran since the apply"
    );
}

#[test]
fn exec_streams_each_hosts_output_and_says_who_failed() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1", "n2"]);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    push_dir(&ctl, &kube(&src, "v1", None), "kube:v1");
    let env = vec![format!("MARKS={}", marks.display())];
    let cf = ctl.clusterfile("c", &["m0"], &["n1", "n2"], &["kube:v1"], &env);
    assert!(apply_file(&ctl, &cf).status.success());
    let script = "echo hello from $BERTH_HOST in $(cat VERSION); echo second line; [ \"$BERTH_HOST\" != n2 ] || exit 4";

    let out = ctl.cli(&["exec", "c", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let so = stdout(&out);
    for h in ["m0", "n1", "n2"] {
        assert!(
            so.contains(&format!("{h} | hello from {h} in v1\n")),
            "{so}"
        );
        assert!(so.contains(&format!("{h} | second line\n")), "{so}");
    }
    let se = stderr(&out);
    assert!(se.contains("n2  failed      exit 4"), "{se}");
    assert!(se.contains("m0  succeeded   exit 0"), "{se}");
    assert!(
        se.contains("error: the command failed on 1 of 3 host(s): n2"),
        "{se}"
    );

    // -o json: per host its exit code and output; narrowed by role.
    let out = ctl.cli(&[
        "exec", "c", "--role", "node", "-o", "json", "--", "sh", "-c", script,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by: std::collections::BTreeMap<String, (serde_json::Value, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                (
                    r["exit_code"].clone(),
                    r["output"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(by.keys().cloned().collect::<Vec<_>>(), vec!["n1", "n2"]);
    assert_eq!(by["n1"].0, 0);
    assert_eq!(by["n2"].0, 4);
    assert!(by["n1"].1.contains("hello from n1 in v1"), "{:?}", by["n1"]);

    // By host, without naming the cluster; all succeed: exit 0.
    let out = ctl.cli(&["exec", "--hosts", "m0,n1", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A command that outlives its timeout fails on its host.
    let out = ctl.cli(&[
        "exec",
        "c",
        "--hosts",
        "n1",
        "--timeout",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("n1  failed"), "{}", stderr(&out));

    // Audited with the command; an event too; the cluster stays Running.
    let audit = stdout(&ctl.cli(&["get", "audit", "-o", "json"]));
    assert!(
        audit.contains("cluster.exec") && audit.contains("exit 4"),
        "{audit}"
    );
    let events = stdout(&ctl.cli(&["get", "events", "c"]));
    assert!(events.contains("exec by"), "{events}");
    assert_eq!(ctl.status("c")["phase"], "Running");
    // A failed exec is never run again by retry.
    let out = ctl.cli(&["retry", "c"]);
    assert!(
        stderr(&out).contains("retrying 0 step(s)"),
        "{}",
        stderr(&out)
    );

    // Bad requests change nothing; a viewer may not exec.
    let out = ctl.cli(&["exec", "--", "true"]);
    assert!(
        stderr(&out).contains("name a cluster or --hosts"),
        "{}",
        stderr(&out)
    );
    let out = ctl.cli(&["exec", "c", "--hosts", "nope", "--", "true"]);
    assert!(
        stderr(&out).contains("host `nope` is not a member of cluster `c`"),
        "{}",
        stderr(&out)
    );
    let viewer = stdout(&ctl.cli(&["api-token", "create", "--name", "v", "--role", "viewer"]));
    let out = ctl
        .cli_command(&["exec", "c", "--", "true"])
        .env("BERTH_TOKEN", viewer.trim())
        .output()
        .unwrap();
    assert!(stderr(&out).contains("(forbidden)"), "{}", stderr(&out));
}

/// Enrolls and runs an agent that reports `arch` (what a host of that CPU would).
fn agent_as(ctl: &Controller, name: &str, arch: &str) -> Proc {
    let (token, hash) = ctl.create_token(1, "1h");
    let out = ctl
        .join_command(name, &token, &hash, &ctl.agent_dir(name))
        .env("BERTH_AGENT_ARCH", arch)
        .output()
        .unwrap();
    assert!(out.status.success(), "join {name}: {}", stderr(&out));
    let mut cmd = agent_run_command(&ctl.agent_dir(name));
    cmd.env("BERTH_AGENT_ARCH", arch);
    Proc::spawn(
        &format!("agent {name}"),
        cmd,
        ctl.dir.path().join(format!("agent-{name}.log")),
    )
}

#[test]
fn a_tag_holds_a_digest_per_architecture_and_each_host_gets_its_own() {
    let ctl = Controller::start(&[]);
    let _m0 = ctl.agents(&["m0"]);
    let _a1 = agent_as(&ctl, "a1", "aarch64");
    let _r1 = agent_as(&ctl, "r1", "riscv64");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let marks = ctl.dir.path().join("marks.log");
    // The same bundle built twice: its `BUILT` file says for which CPU.
    let x86 = kube(&src, "v1", None);
    fs::write(x86.join("BUILT"), "x86_64").unwrap();
    let out = ctl.cli(&[
        "bundle",
        "push",
        x86.to_str().unwrap(),
        "--arch",
        "amd64",
        "--tag",
        "multi:v1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    fs::write(x86.join("BUILT"), "aarch64").unwrap();
    let out = ctl.cli(&[
        "bundle",
        "push",
        x86.to_str().unwrap(),
        "--arch",
        "arm64",
        "--tag",
        "multi:v1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl.cli(&["bundle", "inspect", "multi:v1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let arches: Vec<&String> = v["arches"].as_object().unwrap().keys().collect();
    assert_eq!(arches, ["aarch64", "x86_64"], "{v}");
    assert_ne!(v["arches"]["aarch64"], v["arches"]["x86_64"]);
    // Another bundle cannot join the tag as an architecture of it.
    let other = hook_bundle(&src, "other", &[("install", "true")], "");
    let out = ctl.cli(&[
        "bundle",
        "push",
        other.to_str().unwrap(),
        "--arch",
        "riscv64",
        "--tag",
        "multi:v1",
    ]);
    assert!(
        stderr(&out).contains("must be the same bundle built for riscv64")
            && stderr(&out).contains("(conflict)"),
        "{}",
        stderr(&out)
    );

    let cf = |nodes: &str| {
        let p = ctl.dir.path().join("mixed.yaml");
        fs::write(
            &p,
            format!(
                "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: mixed\nspec:\n  hosts:\n  - ips: [m0]\n    roles: [master, amd64]\n{nodes}  image: [multi:v1]\n  env: [MARKS={}]\n",
                marks.display()
            ),
        )
        .unwrap();
        p
    };
    // A role naming another architecture than the host's is refused.
    let out = ctl.cli(&[
        "apply",
        "-f",
        cf("  - ips: [a1]\n    roles: [node, amd64]\n")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        stderr(&out).contains("spec.hosts[1].roles: `amd64`, but host `a1` reports aarch64"),
        "{}",
        stderr(&out)
    );
    let out = apply_file(&ctl, &cf("  - ips: [a1]\n    roles: [node, arm64]\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let built =
        |h: &str| fs::read_to_string(ctl.agent_dir(h).join("clusters/mixed/rootfs/BUILT")).unwrap();
    assert_eq!(built("m0"), "x86_64");
    assert_eq!(built("a1"), "aarch64");

    // A host of an architecture the tag has no digest for fails its check, saying so.
    let out = apply_file(
        &ctl,
        &cf("  - ips: [a1]\n    roles: [node, arm64]\n  - ips: [r1]\n    roles: [node]\n"),
    );
    assert!(!out.status.success());
    let st = ctl.status("mixed");
    let check = step_of(&st, "r1", "check");
    assert_eq!(check["state"], "failed");
    let reason = check["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("multi:v1 has no digest for riscv64, the architecture of this host (its digest sha256:")
            && reason.contains("built for x86_64); push one with `berth bundle push DIR --arch riscv64 --tag multi:v1`"),
        "{reason}"
    );
}

#[test]
fn an_app_bundle_taken_out_runs_its_clean_on_master0() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let marks = ctl.dir.path().join("marks.log");
    let src = ctl.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    push_dir(&ctl, &kube(&src, "v1", None), "kube:v1");
    let web = hook_bundle(
        &src,
        "web",
        &[(
            "clean",
            "echo \"$(date +%s%N) $BERTH_HOST web-clean $(cat WEB)\" >> \"$MARKS\"",
        )],
        "cmd: [sh, -c, 'echo \"$(date +%s%N) $BERTH_HOST web-cmd x\" >> \"$MARKS\"']\n",
    );
    let y = fs::read_to_string(web.join("bundle.yaml")).unwrap();
    fs::write(
        web.join("bundle.yaml"),
        y.replace("type: rootfs", "type: app"),
    )
    .unwrap();
    fs::write(web.join("WEB"), "in-its-tree").unwrap();
    push_dir(&ctl, &web, "web:v1");
    let env = vec![format!("MARKS={}", marks.display())];
    let with = ctl.clusterfile("c", &["m0"], &["n1"], &["kube:v1", "web:v1"], &env);
    assert!(apply_file(&ctl, &with).status.success());
    assert_eq!(of(&lines(&marks), "web-cmd").len(), 1);
    let app_tree = ctl.agent_dir("m0").join("clusters/c/apps/web");
    assert!(app_tree.is_dir());

    let without = ctl.clusterfile("c", &["m0"], &["n1"], &["kube:v1"], &env);
    let out = ctl.cli(&["diff", "-f", without.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout(&out),
        "cluster c would change\n  1.  clean-apps  m0\n"
    );
    let out = apply_file(&ctl, &without);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = lines(&marks);
    let cleans = of(&all, "web-clean");
    assert_eq!(cleans.len(), 1, "once, on master0");
    assert_eq!(
        (cleans[0].host.as_str(), cleans[0].what.as_str()),
        ("m0", "in-its-tree")
    );
    assert!(!app_tree.exists(), "its tree is gone");
    // The rootfs's hooks did not run again.
    assert_eq!(of(&all, "install").len(), 2);
}
