//! Test fleets made of network namespaces: every host gets its own namespace, address,
//! hostname (UTS namespace) and agent process; the controller gets its own namespace.
//! A bridge in a dedicated "switch" namespace connects them, so nothing touches this
//! machine's own namespace (which also gets an `unreachable` route for the test subnet as a
//! guard). Everything is deleted on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process may create namespaces (root with iproute2).
pub fn available() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::metadata("/proc/self")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

pub struct Fleet {
    prefix: String,
    pub subnet: String,
    namespaces: Vec<String>,
    next: u32,
}

impl Fleet {
    /// A new flat network `10.<a>.<b>.0/24` with a bridge in its own namespace.
    pub fn new() -> Fleet {
        let pid = std::process::id();
        let nonce = pid % 50_000
            + (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_micros())
                .unwrap_or(0)
                % 7);
        let prefix = format!("bt{:x}", nonce);
        let subnet = format!("10.{}.{}", 100 + (nonce / 256) % 100, nonce % 256);
        let mut f = Fleet {
            prefix,
            subnet,
            namespaces: Vec::new(),
            next: 2,
        };
        let sw = f.ns("sw");
        let _ = Command::new("ip")
            .args(["route", "add", "unreachable", &format!("{}.0/24", f.subnet)])
            .status();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        f
    }

    fn ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns.clone());
        ns
    }

    /// Adds a host namespace wired to the bridge; returns (namespace, address).
    pub fn host(&mut self, name: &str) -> (String, String) {
        let ns = self.ns(name);
        let n = self.next;
        self.next += 1;
        let a = format!("{}{n}a", self.prefix);
        let b = format!("{}{n}b", self.prefix);
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let sw = format!("{}-sw", self.prefix);
        ip(&["link", "set", &a, "netns", &ns]);
        ip(&["link", "set", &b, "netns", &sw]);
        ip(&["-n", &sw, "link", "set", &b, "master", "br0", "up"]);
        ip(&["-n", &ns, "link", "set", &a, "name", "eth0"]);
        let addr = format!("{}.{n}", self.subnet);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        (ns, addr)
    }

    /// `berth-agent ARGS` inside `ns` with its own hostname.
    pub fn agent_command(
        ns: &str,
        hostname: &str,
        agent: &Path,
        args: &[&str],
        data_dir: &PathBuf,
    ) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            ns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
            hostname,
        ])
        .arg(agent)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir);
        c
    }

    /// Runs a command inside a namespace and returns its output.
    pub fn exec(ns: &str, program: &Path, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes left in the namespace (etcd) die with it only if killed: kill them.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args([
                "route",
                "del",
                "unreachable",
                &format!("{}.0/24", self.subnet),
            ])
            .status();
    }
}
