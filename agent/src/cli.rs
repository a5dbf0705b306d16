//! The `berth-agent` command line.

use crate::join::{self, JoinConfig};
use crate::run::{self, RunConfig};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "berth-agent",
    version,
    about = "berth host agent: pulls its work from the controller"
)]
pub struct Cli {
    /// Log format (filter with RUST_LOG)
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enroll this host with a controller (the line `berth token create` prints)
    Join(JoinArgs),
    /// Run the agent loop with the stored identity
    Run(RunArgs),
    /// Fetch a bundle blob by digest into the cache (resumable, verified) and optionally
    /// unpack it; what the agent does for each bundle of a plan, run by hand
    Fetch(FetchArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// sha256:<hex> of the bundle blob
    #[arg(long)]
    pub digest: String,
    /// Unpack the verified blob into this directory (replaced atomically)
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// Download attempts, each resuming from the bytes already on disk
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Controller URL, e.g. https://10.0.0.1:7443
    #[arg(long)]
    pub controller: String,
    /// Bootstrap token ID.SECRET (a command line is visible to every local user: prefer
    /// --token-file or the BERTH_JOIN_TOKEN environment variable)
    #[arg(
        long,
        env = "BERTH_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,
    /// Read the bootstrap token from this file (mode 0600 or stricter; the install line
    /// passes it this way, so it never shows in a process list); wins over --token and
    /// BERTH_JOIN_TOKEN
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// sha256 of the controller's CA certificate; the join stops if it differs
    #[arg(long)]
    pub ca_hash: String,
    /// This host's name in berth [default: the hostname; with --reenroll, the stored name]
    #[arg(long)]
    pub name: Option<String>,
    /// Give the already enrolled host a new key and certificate (its certificate expired
    /// while the agent was stopped, or its data dir was lost), keeping its name and cluster
    /// membership; needs a token from `berth token create --reenroll NAME`
    #[arg(long)]
    pub reenroll: bool,
    #[command(flatten)]
    pub common: Common,
    /// After joining, run the agent loop (for a systemd unit)
    #[arg(long)]
    pub run: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Serve this agent's metrics (last successful poll, spooled reports, the step
    /// running) at `GET /metrics` over plain HTTP without authentication on ADDR, e.g.
    /// 127.0.0.1:9465 for a Prometheus node agent on the host
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct Common {
    /// Where the identity and (later) bundles and journals live; a relative path is taken
    /// from the current directory at start (hooks run elsewhere, so it is made absolute)
    #[arg(
        long,
        env = "BERTH_AGENT_DATA_DIR",
        default_value = "/var/lib/berth-agent",
        value_parser = absolute_dir
    )]
    pub data_dir: PathBuf,
    /// How long the controller may hold each long-poll (it caps this at its `--poll-hold`)
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// Longest wait between retries when the controller is unreachable
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// A bundle may unpack to at most this many bytes in all
    #[arg(long, default_value_t = berth_bundle::unpack::DEFAULT_MAX_TOTAL_BYTES)]
    pub max_unpacked_bytes: u64,
    /// A bundle may hold at most this many entries
    #[arg(long, default_value_t = berth_bundle::unpack::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// No single file in a bundle may be larger (at most 8 GiB - 1)
    #[arg(long, default_value_t = berth_bundle::unpack::DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
}

/// Parses a directory argument into an absolute path (joined with the current directory;
/// it need not exist yet, e.g. before `join` creates it). Every path the agent derives
/// from its data dir (bundles, cluster dirs, `BERTH_ROOTFS`) is then absolute, whatever
/// the cwd of a hook.
fn absolute_dir(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    std::path::absolute(s).map_err(|e| format!("cannot make `{s}` absolute: {e}"))
}

impl Common {
    pub fn limits(&self) -> berth_bundle::Limits {
        berth_bundle::Limits {
            max_total_bytes: self.max_unpacked_bytes,
            max_entries: self.max_entries,
            max_file_bytes: self.max_file_bytes.min((8 << 30) - 1),
        }
    }
}

pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Join(a) => {
            let token = match (&a.token_file, &a.token) {
                (Some(f), _) => join::read_token_file(f)?,
                (None, Some(t)) => t.clone(),
                (None, None) => anyhow::bail!("pass --token-file or --token"),
            };
            let cfg: JoinConfig = join::validate(
                &a.controller,
                &token,
                &a.ca_hash,
                a.name.as_deref(),
                a.common.data_dir.clone(),
                a.reenroll,
            )?;
            let id = join::join(&cfg).await?;
            eprintln!(
                "{} {} as host `{}`; identity stored in {}",
                if cfg.reenroll {
                    "re-enrolled with"
                } else {
                    "joined"
                },
                id.meta.controller,
                id.meta.name,
                crate::identity::dir(&cfg.data_dir).display()
            );
            if a.run {
                run_loop(a.common, None).await
            } else {
                Ok(())
            }
        }
        Command::Run(a) => run_loop(a.common, a.metrics_listen).await,
        Command::Fetch(a) => fetch(a).await,
    }
}

async fn run_loop(c: Common, metrics_listen: Option<std::net::SocketAddr>) -> Result<()> {
    let limits = c.limits();
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            s.cancel();
        }
    });
    run::run(
        RunConfig {
            data_dir: c.data_dir,
            poll_wait: c.poll_wait,
            backoff_max: c.backoff_max,
            limits,
            connect: Default::default(),
            probe: Default::default(),
            metrics_listen,
        },
        shutdown,
    )
    .await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal, and never with NO_COLOR (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

async fn fetch(a: FetchArgs) -> Result<()> {
    let digest: berth_shared::Digest = a
        .digest
        .parse()
        .map_err(|e| anyhow::anyhow!("--digest: {e}"))?;
    let session = crate::session::Session::open(a.common.data_dir.clone())?;
    let id = session.identity();
    let fetcher = crate::fetch::Fetcher {
        session,
        controller: id.meta.controller.clone(),
        cache: a.common.data_dir.join("cache"),
        attempts: a.attempts.max(1),
        plans: Default::default(),
    };
    let started = std::time::Instant::now();
    let limits = a.common.limits();
    match a.into {
        None => {
            let blob = fetcher.fetch(&digest).await?;
            println!("{}", blob.display());
        }
        Some(dest) => {
            // One pass: unpacked while it streams in, promoted once the digest matched.
            let (staging, mut unpacked) = fetcher
                .stage(std::slice::from_ref(&digest), &dest, limits, |_| Ok(()))
                .await?;
            let u = unpacked.pop().context("nothing was unpacked")?;
            tokio::task::spawn_blocking(move || staging.promote()).await??;
            println!(
                "{} {} {}: {} entries, {} bytes into {} (total {:.2?})",
                digest,
                u.manifest.name,
                u.manifest.version,
                u.entries,
                u.bytes,
                dest.display(),
                started.elapsed()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data_dir(args: &[&str]) -> PathBuf {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Join(a) => a.common.data_dir,
            Command::Run(a) => a.common.data_dir,
            Command::Fetch(a) => a.common.data_dir,
        }
    }

    /// A relative `--data-dir` used to stay relative, and hooks (run with another cwd) then
    /// could not find their scripts or `BERTH_ROOTFS`.
    #[test]
    fn a_relative_data_dir_is_made_absolute_at_parse_time() {
        let cwd = std::env::current_dir().unwrap();
        let join = [
            "berth-agent",
            "join",
            "--controller",
            "https://127.0.0.1:7443",
            "--token",
            "t",
            "--ca-hash",
            "h",
            "--data-dir",
            "not-yet/agentdata",
        ];
        assert_eq!(data_dir(&join), cwd.join("not-yet/agentdata"));
        assert_eq!(
            data_dir(&["berth-agent", "run", "--data-dir", "agentdata"]),
            cwd.join("agentdata")
        );
        assert_eq!(
            data_dir(&["berth-agent", "fetch", "--digest", "d", "--data-dir", "./a"]),
            cwd.join("a")
        );
        assert_eq!(
            data_dir(&["berth-agent", "run", "--data-dir", "/abs/dir"]),
            PathBuf::from("/abs/dir")
        );
        assert!(Cli::try_parse_from(["berth-agent", "run", "--data-dir", ""]).is_err());
    }
}
