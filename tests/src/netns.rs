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

/// For tests selected by BERTH_E2E=1 (`cfg(berth_e2e)`, or `--ignored`): fail loudly when
/// this process cannot run them rather than pass without running.
pub fn require() {
    assert!(
        available(),
        "the network-namespace end-to-end tests (selected by BERTH_E2E=1) need root and \
         iproute2 (ip netns); run them as root, or unset BERTH_E2E to have them ignored"
    );
}

pub struct Fleet {
    prefix: String,
    pub subnet: String,
    /// The private subnet behind the NAT router, once `nat_router` made one.
    pub private: Option<String>,
    namespaces: Vec<String>,
    next: u32,
    /// veth pairs made by `wire`.
    next_private: u32,
}

impl Fleet {
    /// A new flat network `10.<a>.<b>.0/24` with a bridge in its own namespace.
    pub fn new() -> Fleet {
        // Unique per process (pid) and per fleet within it (counter), so parallel tests and
        // parallel runs never share a name or subnet.
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 10;
        let nonce = (std::process::id() % 5000) * 10 + k;
        let prefix = format!("bt{:x}", nonce);
        let subnet = format!("10.{}.{}", 100 + (nonce / 256) % 100, nonce % 256);
        let mut f = Fleet {
            prefix,
            subnet,
            private: None,
            namespaces: Vec::new(),
            next: 2,
            next_private: 0,
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

    /// A veth pair between namespace `ns` (as `ifname`) and bridge `br` in namespace `brns`.
    fn wire(&mut self, ns: &str, ifname: &str, brns: &str, br: &str) {
        self.next_private += 1;
        let n = self.next_private;
        let a = format!("{}w{n}a", self.prefix);
        let b = format!("{}w{n}b", self.prefix);
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", ns]);
        ip(&["link", "set", &b, "netns", brns]);
        ip(&["-n", brns, "link", "set", &b, "master", br, "up"]);
        ip(&["-n", ns, "link", "set", &a, "name", ifname]);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    /// A router namespace on the flat network that masquerades a private subnet behind it
    /// (hosts added with `nat_host`). Returns the router's flat address.
    pub fn nat_router(&mut self) -> String {
        let nonce = self.subnet.rsplit('.').next().unwrap_or("1").to_string();
        let private = format!("192.168.{nonce}");
        let _ = Command::new("ip")
            .args(["route", "add", "unreachable", &format!("{private}.0/24")])
            .status();
        let (rt, addr) = self.host("rt");
        let psw = self.ns("psw");
        ip(&["-n", &psw, "link", "add", "br1", "type", "bridge"]);
        ip(&["-n", &psw, "link", "set", "br1", "up"]);
        self.wire(&rt, "eth1", &psw, "br1");
        ip(&[
            "-n",
            &rt,
            "addr",
            "add",
            &format!("{private}.1/24"),
            "dev",
            "eth1",
        ]);
        let run = |args: &[&str]| {
            let out = Command::new("ip")
                .args(["netns", "exec", &rt])
                .args(args)
                .output()
                .expect("netns exec");
            assert!(
                out.status.success(),
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &format!("{private}.0/24"),
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ]);
        self.private = Some(private);
        addr
    }

    /// A host behind the NAT router: it can reach the flat network, nothing there can reach it.
    pub fn nat_host(&mut self, name: &str) -> (String, String) {
        let private = self.private.clone().expect("call nat_router first");
        let ns = self.ns(name);
        self.next += 1;
        let psw = format!("{}-psw", self.prefix);
        self.wire(&ns, "eth0", &psw, "br1");
        let addr = format!("{private}.{}", 10 + self.next);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{private}.1"),
        ]);
        (ns, addr)
    }

    /// Cuts a host off: every packet in or out of its eth0 is dropped (a partition).
    pub fn cut(ns: &str) {
        for args in [["-A", "INPUT", "-i"], ["-A", "OUTPUT", "-o"]] {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "iptables", args[0], args[1], args[2], "eth0", "-j",
                    "DROP",
                ])
                .output()
                .expect("iptables");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Resets every TCP connection the host makes (connections break at once).
    pub fn reset_tcp(ns: &str) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "iptables",
                "-A",
                "OUTPUT",
                "-o",
                "eth0",
                "-p",
                "tcp",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ])
            .output()
            .expect("iptables");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Undoes `cut` and `reset_tcp`.
    pub fn heal(ns: &str) {
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-F"])
            .status();
    }

    /// Limits the namespace's outgoing rate on eth0 (to make downloads from it take time).
    pub fn throttle(ns: &str, rate: &str) {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                rate, "burst", "64kb", "latency", "400ms",
            ])
            .output()
            .expect("tc");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether a TCP connection from `ns` to `addr:port` succeeds within 3 s.
    pub fn can_connect(ns: &str, addr: &str, port: u16) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "timeout",
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{addr}/{port}"),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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
