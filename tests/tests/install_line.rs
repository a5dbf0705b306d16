//! The one-line install, attacked (issue 22, findings 1, 6, 7 and the second-controller
//! part of 8): the line trusts the controller's CA and nothing else and runs only the
//! script it pins; the bootstrap token never shows in a process list; a stale pid file
//! names no process for the installer or the uninstaller; no spelling of `/` passes the
//! path guards; a host enrolled with another controller is refused before anything changes.
//!
//! Hosts are this machine with temp install and data dirs. The "system trust store" of
//! the attacks is a temp store bind-mounted over `/etc/ssl/certs` in a mount namespace of
//! the line's own (`unshare`), and named by `SSL_CERT_FILE`, `SSL_CERT_DIR` and
//! `CURL_CA_BUNDLE` as well, so no real store is touched.
#![allow(clippy::unwrap_used)]

use berth_tests::rogue::{RogueServer, TestCa};
use berth_tests::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn install_line(ctl: &Controller, args: &[&str]) -> String {
    line_and_token(ctl, args).0
}

/// The install line and the token it carries.
fn line_and_token(ctl: &Controller, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create", "--install", "-o", "json"];
    all.extend_from_slice(args);
    let out = ctl.cli(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["install_command"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

/// Stops the background agent an install into `root` started (its pid file names it), when
/// the test ends — also when it fails.
struct StopsAgent(PathBuf);
impl Drop for StopsAgent {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("data/agent.pid")) {
            let pid = pid.trim();
            let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|e| e.to_string_lossy().contains("berth-agent"));
            if ours {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
    }
}

/// What a host needs for an install into `root`: its dirs, no systemd.
fn host_env(c: &mut Command, root: &Path, name: &str) {
    c.env("BERTH_INSTALL_DIR", root.join("bin"))
        .env("BERTH_AGENT_DATA_DIR", root.join("data"))
        .env("BERTH_NAME", name)
        .env("BERTH_SKIP_SYSTEMD", "1")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_JOIN_TOKEN");
}

/// Pastes `line` into `c` (a shell) on its stdin, as an operator pastes it into a
/// terminal: the line itself is in no process's command line.
fn paste(mut c: Command, line: &str) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A directory of links to everything in /usr/bin but curl: a host with GNU wget only.
fn path_without_curl(dir: &Path) -> String {
    let bin = dir.join("no-curl-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for e in std::fs::read_dir("/usr/bin").unwrap() {
        let e = e.unwrap();
        if e.file_name() != "curl" {
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()));
        }
    }
    assert!(
        bin.join("wget").exists(),
        "GNU wget is needed for this test (.ci/run installs it)"
    );
    format!("{}:/usr/sbin:/sbin", bin.display())
}

/// A trust store holding `ca_pem` as the system's: the Debian bundle file and an OpenSSL
/// hashed directory entry (curl's built-in CA path is read that way).
fn system_store(dir: &Path, ca_pem: &str) -> PathBuf {
    let store = dir.join("system-store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("ca-certificates.crt"), ca_pem).unwrap();
    std::fs::write(store.join("rogue.pem"), ca_pem).unwrap();
    let out = Command::new("openssl")
        .arg("rehash")
        .arg(&store)
        .output()
        .expect("openssl (.ci/run installs it) hashes the store");
    assert!(out.status.success(), "{}", stderr(&out));
    store
}

/// `sh` in a mount namespace of its own whose `/etc/ssl/certs` is `store`, with the
/// OpenSSL and curl variables naming it too.
fn shell_trusting(store: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--map-root-user", "--mount", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/ssl/certs && exec sh")
        .arg(store)
        .env("SSL_CERT_FILE", store.join("ca-certificates.crt"))
        .env("SSL_CERT_DIR", store)
        .env("CURL_CA_BUNDLE", store.join("ca-certificates.crt"));
    c
}

/// A home whose `.curlrc` turns certificate checks off, and a wgetrc that does the same.
fn careless_config(c: &mut Command, dir: &Path) {
    let home = dir.join("careless-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".curlrc"), "insecure\n").unwrap();
    std::fs::write(home.join(".wgetrc"), "check_certificate = off\n").unwrap();
    c.env("HOME", &home).env("WGETRC", home.join(".wgetrc"));
}

/// A script that leaves proof that it ran.
fn hostile_script(proof: &Path) -> HashMap<String, Vec<u8>> {
    HashMap::from([(
        "/v1/install/agent.sh".to_string(),
        format!("#!/bin/sh\necho ran > {}\n", proof.display()).into_bytes(),
    )])
}

/// The line's controller is gone and a server with a certificate from a CA in the
/// host's system store answers at its address: with curl, and with GNU wget alone (and a
/// `.curlrc`/wgetrc that turn certificate checks off), nothing is asked for over a
/// trusted connection and nothing runs.
#[test]
fn the_install_line_trusts_only_the_controllers_ca_not_the_system_store() {
    let mut ctl = Controller::start(&[]);
    let line = install_line(&ctl, &[]);
    let port = ctl.port;
    ctl.stop();
    let dir = ctl.dir.path().to_path_buf();
    let rogue_ca = TestCa::new("a CA the host trusts");
    let store = system_store(&dir, &rogue_ca.pem);
    let (cert, key) = rogue_ca.server_cert("127.0.0.1");
    let proof = dir.join("rogue-script-ran");
    let rogue = RogueServer::start(port, &cert, &key, hostile_script(&proof));

    // The store really is trusted by the host's clients (else this test proves nothing).
    let mut c = shell_trusting(&store);
    c.env("U", format!("https://127.0.0.1:{port}/v1/install/agent.sh"));
    let out = paste(
        c,
        "curl -fsS \"$U\" >/dev/null && wget -q -O /dev/null \"$U\"",
    );
    assert!(
        out.status.success(),
        "the rogue store is trusted by plain curl and wget: {}",
        stderr(&out)
    );
    let before = rogue.requests().len();
    assert_eq!(before, 2);

    let wget_only = path_without_curl(&dir);
    for (client, path) in [("curl", None), ("wget", Some(wget_only.as_str()))] {
        let root = dir.join(format!("host-{client}"));
        let mut c = shell_trusting(&store);
        host_env(&mut c, &root, "h1");
        // A curlrc or wgetrc that turns checks off changes nothing either.
        careless_config(&mut c, &dir);
        if let Some(p) = path {
            c.env("PATH", p);
        }
        let out = paste(c, &line);
        let err = stderr(&out);
        assert!(!out.status.success(), "{client}: {err}");
        assert!(
            err.contains("cannot download https://127.0.0.1:")
                && err.contains("trusting only the controller CA this line carries"),
            "{client}: {err}"
        );
        assert!(!proof.exists(), "{client}: the rogue script ran");
        assert!(!root.exists(), "{client}: something was installed");
    }
    assert_eq!(
        rogue.requests().len(),
        before,
        "no request reached the rogue server over a trusted connection"
    );
}

/// A server the TLS check accepts (its certificate is from the controller's own CA, as
/// an older or restored controller's would be) but whose script is another: the line
/// refuses it before it runs, naming the pin.
#[test]
fn the_install_line_runs_only_the_script_it_pins() {
    let mut ctl = Controller::start(&[]);
    let line = install_line(&ctl, &[]);
    let port = ctl.port;
    let ca = TestCa::from_pem(
        &ctl.ca_pem(),
        &std::fs::read_to_string(ctl.data_dir.join("pki/ca.key")).unwrap(),
    );
    ctl.stop();
    let dir = ctl.dir.path().to_path_buf();
    let (cert, key) = ca.server_cert("127.0.0.1");
    let proof = dir.join("other-script-ran");
    let rogue = RogueServer::start(port, &cert, &key, hostile_script(&proof));

    let root = dir.join("host");
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "h1");
    let out = paste(c, &line);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not the one this line pins (sha256 ")
            && err.contains("nothing was run. Print a new line with: berth token create --install"),
        "{err}"
    );
    assert_eq!(rogue.requests(), vec!["/v1/install/agent.sh".to_string()]);
    assert!(!proof.exists(), "the unpinned script ran");
    assert!(!root.exists());
}

/// Every process's command line and environment is read while the line installs (with
/// GNU wget, the client without curl): the token's secret is in none of them. The
/// install works and the host enrolls.
#[test]
fn the_bootstrap_token_never_shows_in_a_process_list() {
    let ctl = Controller::start(&[]);
    let (line, token) = line_and_token(&ctl, &["--uses", "1"]);
    let secret = token.split_once('.').unwrap().1.to_string();
    assert_eq!(secret.len(), 16, "{token}");
    assert!(line.contains(&secret));
    let dir = ctl.dir.path().to_path_buf();
    let root = dir.join("host");
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "quiet");
    c.env("BERTH_SKIP_START", "1")
        .env("PATH", path_without_curl(&dir));

    let done = Arc::new(AtomicBool::new(false));
    let (d, s) = (done.clone(), secret.clone());
    let me = std::process::id().to_string();
    let watcher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut scans = 0u64;
        while !d.load(Ordering::SeqCst) {
            scans += 1;
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let pid = e.file_name().to_string_lossy().to_string();
                if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                    continue;
                }
                for what in ["cmdline", "environ"] {
                    if let Ok(b) = std::fs::read(e.path().join(what)) {
                        if b.windows(s.len()).any(|w| w == s.as_bytes()) {
                            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                            seen.push(format!(
                                "{what} of pid {pid} ({})",
                                String::from_utf8_lossy(&cmd).replace('\0', " ")
                            ));
                        }
                    }
                }
            }
        }
        (seen, scans)
    });
    let out = paste(c, &line);
    done.store(true, Ordering::SeqCst);
    let (seen, scans) = watcher.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(scans > 3, "the process list was read {scans} times");
    assert!(seen.is_empty(), "the token's secret was visible: {seen:#?}");
    let hosts: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    assert_eq!(hosts[0]["name"], "quiet", "{hosts}");
    // Nothing of the token is left on disk.
    let leftovers = Command::new("grep")
        .args(["-rl", &secret])
        .arg(&root)
        .output()
        .unwrap();
    assert!(stdout(&leftovers).is_empty(), "{}", stdout(&leftovers));
}

/// A pid file naming a process whose command line merely mentions `berth-agent`: the
/// installer neither takes it for the agent nor kills it, and starts the real agent; the
/// uninstaller leaves it running too.
#[test]
fn a_stale_pid_file_names_no_process_for_the_installer_or_the_uninstaller() {
    let ctl = Controller::start(&[]);
    let line = install_line(&ctl, &["--uses", "1"]);
    let root = ctl.dir.path().join("host");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let _stop = StopsAgent(root.clone());
    let mut impostor = Command::new("sh")
        .args(["-c", "sleep 120; :", "/usr/local/bin/berth-agent"])
        .spawn()
        .unwrap();
    wait_for("the impostor runs", Duration::from_secs(10), || {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", impostor.id())).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("berth-agent")
            .then_some(())
    });
    std::fs::write(root.join("data/agent.pid"), format!("{}\n", impostor.id())).unwrap();

    let mut c = Command::new("sh");
    host_env(&mut c, &root, "pidcheck");
    let out = paste(c, &line);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("already runs"), "{err}");
    let pid = std::fs::read_to_string(root.join("data/agent.pid"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(pid, impostor.id().to_string());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, root.join("bin/berth-agent"));
    assert!(
        impostor.try_wait().unwrap().is_none(),
        "the installer killed the impostor"
    );

    // The uninstaller with the pid file pointing at the impostor again.
    let agent_pid = pid;
    std::fs::write(root.join("data/agent.pid"), format!("{}\n", impostor.id())).unwrap();
    let out = Command::new(root.join("bin/berth-agent-uninstall.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        impostor.try_wait().unwrap().is_none(),
        "the uninstaller killed the impostor"
    );
    let _ = impostor.kill();
    let _ = impostor.wait();
    let _ = Command::new("kill").arg(&agent_pid).status();
}

/// `/` spelled any other way is refused as an install or data dir, before anything is
/// downloaded; the message says what a path must be.
#[test]
fn the_install_paths_refuse_every_spelling_of_root() {
    let ctl = Controller::start(&[]);
    let line = install_line(&ctl, &[]);
    let root = ctl.dir.path().join("host");
    for (var, bad) in [
        ("BERTH_AGENT_DATA_DIR", "/"),
        ("BERTH_AGENT_DATA_DIR", "//"),
        ("BERTH_AGENT_DATA_DIR", "/."),
        ("BERTH_AGENT_DATA_DIR", "/.."),
        ("BERTH_AGENT_DATA_DIR", "/usr/.."),
        ("BERTH_AGENT_DATA_DIR", "/var/lib/../../"),
        ("BERTH_INSTALL_DIR", "/usr/./bin/.."),
        ("BERTH_INSTALL_DIR", "/tmp//x"),
    ] {
        let mut c = Command::new("sh");
        host_env(&mut c, &root, "h1");
        c.env(var, bad);
        let out = paste(c, &line);
        let err = stderr(&out);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(
            err.contains(&format!(
                "`{bad}` must be a normal absolute path other than / (no `.` or `..` parts, no `//`, no trailing /)"
            )),
            "{bad}: {err}"
        );
        assert!(!root.exists(), "{bad}");
    }
}

/// The line of a second controller on a host enrolled with the first: non-zero exit, the
/// message names the controller the host belongs to and how to move it, and nothing
/// changed (same identity, same binary, same running agent).
#[test]
fn the_line_of_another_controller_is_refused_on_an_enrolled_host() {
    let first = Controller::start(&[]);
    let second = Controller::start(&[]);
    let root = first.dir.path().join("host");
    let _stop = StopsAgent(root.clone());
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "mover");
    let out = paste(c, &install_line(&first, &["--uses", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = std::fs::read_to_string(root.join("data/agent.pid"))
        .unwrap()
        .trim()
        .to_string();
    let identity = std::fs::read(root.join("data/identity/agent.crt")).unwrap();
    let uninstall = std::fs::read(root.join("bin/berth-agent-uninstall.sh")).unwrap();

    let mut c = Command::new("sh");
    host_env(&mut c, &root, "mover");
    let out = paste(c, &install_line(&second, &["--uses", "1"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "this host is enrolled as `mover` with another controller ({}, identity in",
            first.url()
        )) && err.contains(&format!(
            "this line is for {}. Nothing was changed",
            second.url()
        )) && err.contains("berth-agent-uninstall.sh here")
            && err.contains("`berth host delete mover` on the old controller"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("data/identity/agent.crt")).unwrap(),
        identity
    );
    assert_eq!(
        std::fs::read(root.join("bin/berth-agent-uninstall.sh")).unwrap(),
        uninstall
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let hosts: Value =
        serde_json::from_slice(&second.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    assert_eq!(hosts, serde_json::json!([]));
    // The first line again is still harmless.
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "mover");
    let out = paste(c, &install_line(&first, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("already runs (pid {pid})")));
    let _ = Command::new("kill").arg(&pid).status();
    wait_for("agent stopped", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

/// An install dir reached through a symlink (`/bin` on a merged-/usr system): the running
/// agent's `/proc/PID/exe` names the resolved path, and the line run again still knows it.
#[test]
fn a_symlinked_install_dir_still_knows_its_agent() {
    let ctl = Controller::start(&[]);
    let root = ctl.dir.path().join("host");
    let _stop = StopsAgent(root.clone());
    std::fs::create_dir_all(root.join("real-bin")).unwrap();
    std::os::unix::fs::symlink(root.join("real-bin"), root.join("bin")).unwrap();
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "linked");
    let out = paste(c, &install_line(&ctl, &["--uses", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = std::fs::read_to_string(root.join("data/agent.pid"))
        .unwrap()
        .trim()
        .to_string();
    let mut c = Command::new("sh");
    host_env(&mut c, &root, "linked");
    let out = paste(c, &install_line(&ctl, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("already runs (pid {pid})")),
        "{}",
        stderr(&out)
    );
    let out = Command::new(root.join("bin/berth-agent-uninstall.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        "the agent stopped by the uninstaller",
        Duration::from_secs(10),
        || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
    );
}
