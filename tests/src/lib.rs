//! Test harness: a real controller and real agents as processes in temp dirs, with their
//! logs captured to files and printed when a test fails.

use anyhow::{bail, Context, Result};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub mod netns;
pub mod oci;
pub mod rogue;

/// The directory holding the built `berth` and `berth-agent` (built once per test run).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "berth-controller",
            "-p",
            "berth-agent",
        ]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building berth binaries failed");
        dir
    })
}

pub fn berth_bin() -> PathBuf {
    bin_dir().join("berth")
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("berth-agent")
}

/// The `berth-agent run` command the tests use (short poll and backoff) for `data_dir`.
pub fn agent_run_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "run",
        "--poll-wait",
        "2s",
        "--backoff-max",
        "2s",
        "--data-dir",
    ])
    .arg(data_dir);
    cmd
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process whose stdout+stderr go to a log file, killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log"))
            .stderr(f)
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }

    /// SIGTERM, then waits up to `timeout` for exit; returns whether it exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> Option<bool> {
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A database of its own in the PostgreSQL server whose Unix socket directory
/// `BERTH_TEST_PG` names (e.g. `/var/run/postgresql`), dropped with the last controller
/// that uses it. Unix sockets reach the server from inside network namespaces too.
pub struct TestDb {
    pub name: String,
    socket_dir: String,
}

impl TestDb {
    /// A new, empty database when `BERTH_TEST_PG` is set.
    pub fn create() -> Option<Arc<TestDb>> {
        let socket_dir = std::env::var("BERTH_TEST_PG")
            .ok()
            .filter(|v| !v.is_empty() && v != "0")?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("berth_t{}_{n}", std::process::id());
        let out = Command::new("createdb")
            .args(["-h", &socket_dir, &name])
            .output()
            .expect("run createdb (BERTH_TEST_PG is set: PostgreSQL's client tools are needed)");
        assert!(out.status.success(), "createdb {name}: {}", stderr(&out));
        Some(Arc::new(TestDb { name, socket_dir }))
    }

    /// The URL `berth serve --database-url` takes.
    pub fn url(&self) -> String {
        format!("postgres:///{}?host={}", self.name, self.socket_dir)
    }

    /// Runs one SQL statement on the database (psql), answering its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", &self.socket_dir, "-d", &self.name, "-tA", "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("dropdb")
            .args(["-h", &self.socket_dir, "--force", "--if-exists", &self.name])
            .output();
    }
}

/// A bucket of its own in the S3-compatible server `BERTH_TEST_S3` names (its URL, e.g.
/// moto's `http://127.0.0.1:5390`), for a controller started with `--blob-store`. The
/// server is one the tests may use without signatures (moto): the harness reads and
/// writes objects with plain `curl`.
pub struct TestBucket {
    pub name: String,
    pub endpoint: String,
}

impl TestBucket {
    /// A new, empty bucket when `BERTH_TEST_S3` is set.
    pub fn create() -> Option<Arc<TestBucket>> {
        let endpoint = std::env::var("BERTH_TEST_S3")
            .ok()
            .filter(|v| !v.is_empty() && v != "0")?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = TestBucket {
            name: format!("berth-t{}-{n}", std::process::id()),
            endpoint: endpoint.trim_end_matches('/').to_string(),
        };
        let out = b.curl(&["-X", "PUT", &b.url("")]);
        assert!(
            out.status.success(),
            "create bucket {}: {}",
            b.name,
            stderr(&out)
        );
        Some(Arc::new(b))
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.name)
    }

    fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-fsS", "--max-time", "30"])
            .args(args)
            .output()
            .expect("run curl (BERTH_TEST_S3 is set)")
    }

    /// The `--blob-store` value.
    pub fn blob_store(&self) -> String {
        format!("s3://{}?endpoint={}", self.name, self.endpoint)
    }

    /// Keys in the bucket.
    pub fn keys(&self) -> Vec<String> {
        let out = self.curl(&[&format!("{}?list-type=2", self.url(""))]);
        assert!(out.status.success(), "list {}: {}", self.name, stderr(&out));
        stdout(&out)
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self.curl(&[&self.url(key)]);
        assert!(out.status.success(), "get {key}: {}", stderr(&out));
        out.stdout
    }

    /// The object's `ETag` header (a multipart upload's ends in `-<parts>"`).
    pub fn etag(&self, key: &str) -> String {
        let out = self.curl(&["-I", &self.url(key)]);
        assert!(out.status.success(), "head {key}: {}", stderr(&out));
        stdout(&out)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("object");
        fs::write(&f, bytes).expect("write object");
        // No `Expect: 100-continue`: moto's server never answers it.
        let out = self.curl(&[
            "-H",
            "Expect:",
            "-T",
            &f.display().to_string(),
            &self.url(key),
        ]);
        assert!(out.status.success(), "put {key}: {}", stderr(&out));
    }
}

/// A controller in a temp dir on a free loopback port.
pub struct Controller {
    pub dir: Arc<tempfile::TempDir>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub extra_args: Vec<String>,
    pub proc: Option<Proc>,
    /// Network namespace the controller (and its CLI) run in; None = this namespace.
    pub netns: Option<String>,
    /// Address it listens on and advertises.
    pub ip: String,
    /// Open-files limit (soft and hard) the controller runs under; None = inherited.
    pub nofile: Option<u64>,
    /// Its PostgreSQL database (`BERTH_TEST_PG`); None = `berth.db` in the data dir.
    pub database: Option<Arc<TestDb>>,
    /// Its bucket for bundle blobs (`BERTH_TEST_S3`); None = `<data-dir>/blobs`.
    pub bucket: Option<Arc<TestBucket>>,
    /// Environment variables `serve` gets besides the harness's.
    pub env: Vec<(String, String)>,
}

impl Controller {
    /// Starts a controller with short poll/grace times suited to tests, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Controller {
        Controller::start_local(extra, None)
    }

    /// Starts a controller under an open-files limit of `nofile` (soft and hard).
    pub fn start_with_nofile(nofile: u64, extra: &[&str]) -> Controller {
        Controller::start_local(extra, Some(nofile))
    }

    fn start_local(extra: &[&str], nofile: Option<u64>) -> Controller {
        let mut c = Controller::prepare(extra, TestDb::create());
        c.nofile = nofile;
        c.spawn().expect("controller starts");
        c
    }

    /// A controller on a free loopback port, on `database` (several may share one), not
    /// started yet.
    pub fn prepare(extra: &[&str], database: Option<Arc<TestDb>>) -> Controller {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let data_dir = dir.path().join("controller");
        Controller {
            dir,
            data_dir,
            port: free_port(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            netns: None,
            ip: "127.0.0.1".into(),
            nofile: None,
            database,
            bucket: TestBucket::create(),
            env: Vec::new(),
        }
    }

    /// Starts a controller inside network namespace `netns`, listening on `ip`.
    pub fn start_in(netns: &str, ip: &str, extra: &[&str]) -> Controller {
        let mut c = Controller::prepare_in(netns, ip, extra, TestDb::create());
        c.spawn().expect("controller starts");
        c
    }

    /// A controller inside network namespace `netns`, listening on `ip`, on `database`
    /// (several may share one), not started yet: the caller may put files in its data dir
    /// (a shared `pki/`) and set `env` before `spawn`.
    pub fn prepare_in(
        netns: &str,
        ip: &str,
        extra: &[&str],
        database: Option<Arc<TestDb>>,
    ) -> Controller {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let data_dir = dir.path().join("controller");
        Controller {
            dir,
            data_dir,
            port: 7443,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            netns: Some(netns.to_string()),
            ip: ip.to_string(),
            nofile: None,
            database,
            // The S3 server listens on this namespace's loopback, out of the controller's.
            bucket: None,
            env: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// A command for `program`, run inside the controller's namespace when it has one.
    pub fn in_ns(&self, program: &Path) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match self.nofile {
            None => self.in_ns(&berth_bin()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(berth_bin());
                c
            }
        };
        cmd.arg("--data-dir").arg(&self.data_dir).args([
            "serve",
            "--listen",
            &format!("{}:{}", self.ip, self.port),
            "--advertise-url",
            &self.url(),
        ]);
        if !self.extra_args.iter().any(|a| a == "--poll-hold") {
            cmd.args(["--poll-hold", "2s"]);
        }
        if let Some(db) = &self.database {
            cmd.env("BERTH_DATABASE_URL", db.url());
        }
        if let Some(b) = &self.bucket {
            cmd.args(["--blob-store", &b.blob_store()])
                .env("AWS_ACCESS_KEY_ID", "berth-test")
                .env("AWS_SECRET_ACCESS_KEY", "berth-test");
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the process and waits until it answers over HTTPS.
    pub fn spawn(&mut self) -> Result<()> {
        let log = self.dir.path().join("controller.log");
        let mut p = Proc::spawn("controller", self.command(), log);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                let text = p.log_text();
                self.proc = Some(p);
                bail!("controller exited ({st}) during start:\n{text}");
            }
            if self.data_dir.join("pki/ca.crt").exists()
                && self.cli(&["get", "hosts"]).status.success()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("controller did not answer within 30 s:\n{}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
        Ok(())
    }

    /// Runs the controller binary once to completion with the given args (no `serve`
    /// defaults), e.g. to see a start refused.
    pub fn run_serve_once(&self, timeout: Duration) -> (Option<i32>, String) {
        let log = self.dir.path().join("controller-once.log");
        let _ = fs::remove_file(&log);
        let mut p = Proc::spawn("controller-once", self.command(), log);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = p.child.try_wait() {
                return (st.code(), p.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (None, p.log_text())
    }

    pub fn stop(&mut self) -> Option<bool> {
        let mut p = self.proc.take()?;
        p.terminate(Duration::from_secs(20))
    }

    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.data_dir.join("pki/ca.crt")).expect("ca.crt")
    }

    pub fn admin_token(&self) -> String {
        fs::read_to_string(self.data_dir.join("pki/admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// An HTTPS client trusting the controller's CA, without a client certificate.
    pub fn api_client(&self) -> Result<reqwest::blocking::Client> {
        client(&self.ca_pem(), None)
    }

    /// Runs `berth --data-dir <controller data> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run berth")
    }

    /// The command `cli` runs, for a caller that adds to it (an environment variable).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = self.in_ns(&berth_bin());
        c.arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CA");
        c
    }

    /// `berth token create --uses N --ttl TTL -o json` → (token, join ca-hash).
    pub fn create_token(&self, uses: u32, ttl: &str) -> (String, String) {
        let out = self.cli(&[
            "token",
            "create",
            "--uses",
            &uses.to_string(),
            "--ttl",
            ttl,
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token json");
        (
            v["token"].as_str().expect("token").to_string(),
            v["ca_hash"].as_str().expect("ca_hash").to_string(),
        )
    }

    /// A fresh agent data dir under this controller's temp dir.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("agents").join(name)
    }

    /// The `berth-agent join` command for `name` with data dir `data_dir`.
    pub fn join_command(&self, name: &str, token: &str, ca_hash: &str, data_dir: &Path) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.args([
            "join",
            "--controller",
            &self.url(),
            "--token",
            token,
            "--ca-hash",
            ca_hash,
            "--name",
            name,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info");
        cmd
    }

    /// `berth-agent join` for `name` into its own data dir.
    pub fn join(&self, name: &str, token: &str, ca_hash: &str) -> Output {
        self.join_command(name, token, ca_hash, &self.agent_dir(name))
            .output()
            .expect("run berth-agent join")
    }

    /// Starts `berth-agent run` for an enrolled agent.
    pub fn run_agent(&self, name: &str) -> Proc {
        let log = self.dir.path().join(format!("agent-{name}.log"));
        Proc::spawn(
            &format!("agent {name}"),
            agent_run_command(&self.agent_dir(name)),
            log,
        )
    }

    /// An HTTPS client presenting the enrolled agent's certificate.
    pub fn agent_client(&self, name: &str) -> reqwest::blocking::Client {
        let id = self.agent_dir(name).join("identity");
        let cert = fs::read_to_string(id.join("agent.crt")).expect("agent.crt");
        let key = fs::read_to_string(id.join("agent.key")).expect("agent.key");
        client(&self.ca_pem(), Some((&cert, &key))).expect("agent client")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(entries) = fs::read_dir(self.dir.path()) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "log") && !p.ends_with("controller.log") {
                        eprintln!(
                            "----- {} -----\n{}",
                            p.display(),
                            fs::read_to_string(&p).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
}

/// A blocking HTTPS client that trusts `ca_pem` and optionally presents a client cert.
pub fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<reqwest::blocking::Client> {
    client_with_alpn(ca_pem, identity, Vec::new())
}

/// The same client speaking HTTP/2 only (ALPN `h2`), as the agent does.
pub fn client_h2(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<reqwest::blocking::Client> {
    client_with_alpn(ca_pem, identity, vec![b"h2".to_vec()])
}

fn client_with_alpn(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    alpn: Vec<Vec<u8>>,
) -> Result<reqwest::blocking::Client> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).context("key")?;
            b.with_client_auth_cert(chain, key)?
        }
    };
    let mut cfg = cfg;
    cfg.alpn_protocols = alpn;
    Ok(reqwest::blocking::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP proxy on loopback that forwards to `127.0.0.1:target` and can cut one connection
/// after a given number of server→client bytes (a dropped connection mid-body, for real:
/// the TLS stream is cut, not simulated).
pub struct CutProxy {
    pub port: u16,
    arm: Arc<std::sync::atomic::AtomicU64>,
    cuts: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    pub fn start(target: u16) -> CutProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let arm = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, c, s) = (arm.clone(), cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let limit = a.swap(0, Ordering::SeqCst);
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let cuts = c.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16 * 1024];
                    let mut sent = 0u64;
                    loop {
                        let n = match (&server).read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let n = if limit > 0 {
                            n.min((limit - sent) as usize)
                        } else {
                            n
                        };
                        if (&client).write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        if limit > 0 && sent >= limit {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            let _ = server.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CutProxy {
            port,
            arm,
            cuts,
            stop,
        }
    }

    /// The next connection is cut after `bytes` bytes from the server.
    pub fn cut_next_after(&self, bytes: u64) {
        self.arm.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Writes a small bundle directory: a manifest with an install hook, a script, `size`
/// bytes of pseudo-random data (incompressible) and a symlink.
pub fn write_bundle(dir: &Path, name: &str, version: &str, size: usize) {
    fs::create_dir_all(dir.join("scripts")).expect("mkdir");
    fs::create_dir_all(dir.join("bin")).expect("mkdir");
    fs::write(
        dir.join("bundle.yaml"),
        format!("apiVersion: berth.dev/v1\nkind: Bundle\nname: {name}\nversion: {version}\ntype: rootfs\nhooks:\n  install: scripts/install.sh\n"),
    )
    .expect("manifest");
    fs::write(
        dir.join("scripts/install.sh"),
        "#!/bin/sh\necho installed\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        dir.join("scripts/install.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (size as u64);
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(dir.join("bin/payload"), data).expect("payload");
    let _ = std::os::unix::fs::symlink("payload", dir.join("bin/payload-link"));
}

/// The repository root (for `examples/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

impl Controller {
    /// Enrolls and starts one agent per name.
    pub fn agents(&self, names: &[&str]) -> Vec<Proc> {
        let (token, hash) = self.create_token(names.len() as u32, "1h");
        names
            .iter()
            .map(|n| {
                let out = self.join(n, &token, &hash);
                assert!(out.status.success(), "join {n}: {}", stderr(&out));
                self.run_agent(n)
            })
            .collect()
    }

    /// Pushes `examples/hello` and `examples/hello-app`.
    pub fn push_examples(&self) {
        for b in ["hello", "hello-app"] {
            let dir = repo_root().join("examples").join(b);
            let out = self.cli(&[
                "bundle",
                "push",
                dir.to_str().expect("utf8"),
                "--tag",
                &format!("{b}:v1"),
            ]);
            assert!(out.status.success(), "push {b}: {}", stderr(&out));
        }
    }

    /// Writes a Clusterfile and returns its path.
    pub fn clusterfile(
        &self,
        name: &str,
        masters: &[&str],
        nodes: &[&str],
        images: &[&str],
        env: &[String],
    ) -> PathBuf {
        let q = |v: &[&str]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut t = format!(
            "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  hosts:\n  - ips: [{}]\n    roles: [master, amd64]\n",
            q(masters)
        );
        if !nodes.is_empty() {
            t.push_str(&format!(
                "  - ips: [{}]\n    roles: [node, amd64]\n",
                q(nodes)
            ));
        }
        t.push_str(&format!("  image: [{}]\n", q(images)));
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        if !env.is_empty() {
            t.push_str(&format!("  env: [{}]\n", q(&env)));
        }
        t.push_str("status: {}\n---\napiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking: {podSubnet: 10.244.0.0/16}\n");
        let p = self
            .dir
            .path()
            .join(format!("{name}-{}.yaml", masters.len() + nodes.len()));
        fs::write(&p, t).expect("write Clusterfile");
        p
    }

    /// Stops the controller, restores `backup` into a new data dir (`berth restore`, which
    /// must succeed) and starts the controller on it.
    pub fn restart_restored_from(&mut self, backup: &Path) {
        self.stop();
        let restored = self.dir.path().join("restored");
        let out = Command::new(berth_bin())
            .arg("--data-dir")
            .arg(&restored)
            .arg("restore")
            .arg(backup)
            .output()
            .expect("run berth restore");
        assert!(out.status.success(), "restore: {}", stderr(&out));
        self.data_dir = restored;
        self.spawn().expect("start the restored controller");
    }

    /// The hex digests of the bundle blobs stored (in the data dir, or the bucket).
    pub fn blob_hexes(&self) -> Vec<String> {
        if let Some(b) = &self.bucket {
            return b
                .keys()
                .into_iter()
                .filter_map(|k| k.strip_prefix("sha256/").map(str::to_string))
                .collect();
        }
        let mut out = Vec::new();
        for d in fs::read_dir(self.data_dir.join("blobs/sha256")).expect("blobs dir") {
            for f in fs::read_dir(d.expect("entry").path()).expect("blob subdir") {
                out.push(f.expect("entry").file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    /// The stored bytes of bundle blob `digest`.
    pub fn blob_bytes(&self, digest: &str) -> Vec<u8> {
        let hex = digest.trim_start_matches("sha256:");
        match &self.bucket {
            Some(b) => b.get(&format!("sha256/{hex}")),
            None => fs::read(self.data_dir.join("blobs/sha256").join(&hex[..2]).join(hex))
                .expect("read blob"),
        }
    }

    /// Overwrites the stored bytes of bundle blob `digest` (as a disk or bucket fault).
    pub fn tamper_blob(&self, digest: &str, bytes: &[u8]) {
        let hex = digest.trim_start_matches("sha256:");
        match &self.bucket {
            Some(b) => b.put(&format!("sha256/{hex}"), bytes),
            None => fs::write(
                self.data_dir.join("blobs/sha256").join(&hex[..2]).join(hex),
                bytes,
            )
            .expect("write blob"),
        }
    }

    /// `berth status NAME -o json`.
    pub fn status(&self, name: &str) -> serde_json::Value {
        let out = self.cli(&["status", name, "-o", "json", "--show-outputs"]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

/// Lines of a host's marks file (what the hello hooks recorded).
pub fn marks(dir: &Path, host: &str) -> Vec<String> {
    fs::read_to_string(dir.join(format!("{host}.log")))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// The newest step of `kind` on `host` in a status document.
pub fn step_of<'a>(st: &'a serde_json::Value, host: &str, kind: &str) -> &'a serde_json::Value {
    st["steps"]
        .as_array()
        .expect("a status document")
        .iter()
        .rev()
        .find(|s| s["host"] == host && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} on {host}: {st}"))
}

/// A bundle with the given hooks (name → shell script body) and extra bundle.yaml lines.
pub fn hook_bundle(dir: &Path, name: &str, hooks: &[(&str, &str)], extra: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("scripts")).expect("test input");
    let mut y = format!(
        "apiVersion: berth.dev/v1\nkind: Bundle\nname: {name}\nversion: v1\ntype: rootfs\nhooks:\n"
    );
    for (h, body) in hooks {
        y.push_str(&format!("  {h}: scripts/{h}.sh\n"));
        std::fs::write(
            d.join(format!("scripts/{h}.sh")),
            format!("#!/bin/sh\nset -eu\n{body}\n"),
        )
        .expect("test input");
    }
    y.push_str(extra);
    std::fs::write(d.join("bundle.yaml"), y).expect("test input");
    d
}

/// `berth bundle push DIR --tag TAG`, which must succeed.
pub fn push_dir(ctl: &Controller, dir: &Path, tag: &str) {
    let out = ctl.cli(&[
        "bundle",
        "push",
        dir.to_str().expect("test input"),
        "--tag",
        tag,
    ]);
    assert!(out.status.success(), "push: {}", stderr(&out));
}

/// `berth apply -f CF --wait`.
pub fn apply_file(ctl: &Controller, cf: &Path) -> Output {
    ctl.cli(&["apply", "-f", cf.to_str().expect("test input"), "--wait"])
}

/// POSTs a report batch as an enrolled host; returns (status, body).
pub fn agent_report(
    ctl: &Controller,
    host: &str,
    entries: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = ctl
        .agent_client(host)
        .post(format!("{}/v1/agent/reports", ctl.url()))
        .json(&serde_json::json!({ "entries": entries }))
        .send()
        .expect("test input");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

/// Moves `hook`'s script of a bundle made by [`hook_bundle`] to `rel` (rootfs bundles merge
/// into one tree, so two of them in a cluster need hook scripts at paths of their own).
pub fn move_hook(bundle: &Path, hook: &str, rel: &str) {
    let from = format!("scripts/{hook}.sh");
    std::fs::rename(bundle.join(&from), bundle.join(rel)).expect("move the hook script");
    let y = std::fs::read_to_string(bundle.join("bundle.yaml")).expect("bundle.yaml");
    std::fs::write(bundle.join("bundle.yaml"), y.replace(&from, rel)).expect("bundle.yaml");
}
