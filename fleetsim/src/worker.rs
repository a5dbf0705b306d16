//! One worker process: enrolls its share of virtual agents, then runs each of them with
//! the agent's own loop (`berth_agent::run::run`: long-poll, plan verification, the
//! executor, the report spool). It tells the driver what happens as one line per event
//! on stdout. Workers exist because one process may hold at most `RLIMIT_NOFILE` sockets.

use anyhow::{Context, Result};
use berth_agent::identity::Identity;
use berth_agent::join::{join, JoinConfig};
use berth_agent::probe::{Observer, Probe};
use berth_agent::run::{run, RunConfig};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub controller: String,
    #[arg(long)]
    pub ca_hash: String,
    /// Join token with enough uses for the agents not enrolled yet.
    #[arg(long, env = "BERTH_FLEETSIM_JOIN_TOKEN")]
    pub join_token: String,
    /// First agent index (inclusive).
    #[arg(long)]
    pub from: usize,
    /// Last agent index (exclusive).
    #[arg(long)]
    pub to: usize,
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Agents spread over 127.0.0.2 … 127.0.0.(1+N) as source addresses.
    #[arg(long, default_value_t = 4)]
    pub source_addrs: u8,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// Concurrent enrollments.
    #[arg(long, default_value_t = 16)]
    pub enroll_concurrency: usize,
    /// Append the agents' TLS secrets to this file (NSS key log format), so a capture of
    /// their traffic can be decrypted to time each request on the wire.
    #[arg(long)]
    pub key_log: Option<PathBuf>,
}

/// Writes TLS secrets as `LABEL CLIENT_RANDOM SECRET` lines, the format `tshark` reads
/// (`-o tls.keylog_file:`). Only the simulator has one; `berth-agent` never logs secrets.
#[derive(Debug)]
struct KeyLogFile(Mutex<std::fs::File>);

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let line = format!(
            "{label} {} {}\n",
            hex::encode(client_random),
            hex::encode(secret)
        );
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "cannot write the TLS key log");
        }
    }
}

/// The host name of virtual agent `i`.
pub fn agent_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Event lines: `E ms` enrolled, `K` already enrolled, `X kind` enrollment failed, `C`
/// connected, `P index unix_ms steps` plan accepted, `R entries micros outcome` report
/// batch sent, `F kind` poll failed, `ENROLLED`, `RUNNING`.
struct Out(Mutex<std::io::Stdout>);

impl Out {
    fn line(&self, s: &str) {
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    }
}

struct AgentProbe {
    index: usize,
    out: Arc<Out>,
}

impl Observer for AgentProbe {
    fn connected(&self) {
        self.out.line(&format!("C {}", self.index));
    }
    fn plan_accepted(&self, _generation: u64, steps: usize) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.out.line(&format!("P {} {ms} {steps}", self.index));
    }
    fn poll_failed(&self, kind: &str) {
        self.out.line(&format!("F {kind}"));
    }
    fn reports_sent(&self, entries: usize, took: Duration, outcome: &str) {
        self.out
            .line(&format!("R {entries} {} {outcome}", took.as_micros()));
    }
}

fn source_addr(i: usize, n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % n.max(1) as usize) as u8))
}

pub async fn worker(a: WorkerArgs) -> Result<()> {
    berth_files::raise_open_files_limit().context("cannot raise the open-files limit")?;
    let out = Arc::new(Out(Mutex::new(std::io::stdout())));
    std::fs::create_dir_all(&a.work_dir)?;
    let token: berth_shared::BootstrapToken = a
        .join_token
        .parse()
        .map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    let ca_hash: berth_shared::Digest = a
        .ca_hash
        .parse()
        .map_err(|e| anyhow::anyhow!("--ca-hash: {e}"))?;

    let sem = Arc::new(tokio::sync::Semaphore::new(a.enroll_concurrency.max(1)));
    let mut joins = Vec::new();
    for i in a.from..a.to {
        let dir = a.work_dir.join(agent_name(i));
        if Identity::exists(&dir) {
            out.line("K");
            continue;
        }
        let cfg = JoinConfig {
            controller: a.controller.clone(),
            token: token.clone(),
            ca_hash,
            name: agent_name(i).parse()?,
            data_dir: dir,
            reenroll: false,
        };
        let (sem, out) = (sem.clone(), out.clone());
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let started = Instant::now();
            // A refused connection during a storm is retried, like an operator would.
            for attempt in 0..5 {
                match join(&cfg).await {
                    Ok(_) => {
                        out.line(&format!("E {}", started.elapsed().as_millis()));
                        return;
                    }
                    Err(e) if attempt == 4 => {
                        let kind = format!("{e:#}");
                        tracing::error!(error = %kind, "enrollment failed");
                        out.line(&format!(
                            "X {}",
                            kind.split_whitespace()
                                .take(4)
                                .collect::<Vec<_>>()
                                .join("_")
                        ));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500 << attempt)).await,
                }
            }
        }));
    }
    for j in joins {
        j.await?;
    }
    out.line("ENROLLED");

    let key_log: Option<Arc<dyn rustls::KeyLog>> = match &a.key_log {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?;
            Some(Arc::new(KeyLogFile(Mutex::new(f))))
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    for i in a.from..a.to {
        let cfg = RunConfig {
            data_dir: a.work_dir.join(agent_name(i)),
            poll_wait: a.poll_wait,
            backoff_max: Duration::from_secs(30),
            limits: berth_bundle::Limits::default(),
            connect: berth_agent::tls::Connect {
                local_address: Some(source_addr(i, a.source_addrs)),
                key_log: key_log.clone(),
            },
            metrics_listen: None,
            probe: Probe::new(Arc::new(AgentProbe {
                index: i,
                out: out.clone(),
            })),
        };
        let s = shutdown.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = run(cfg, s).await {
                tracing::error!(error = format!("{e:#}"), "virtual agent stopped");
            }
        }));
    }
    out.line("RUNNING");
    // The driver closes our stdin when it is done (or dies).
    tokio::task::spawn_blocking(|| {
        let mut buf = String::new();
        while std::io::stdin()
            .read_line(&mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            buf.clear();
        }
    })
    .await?;
    shutdown.cancel();
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    Ok(())
}
