//! The `berth` command line: `serve` runs the controller; everything else is a thin
//! client of its API.

use crate::client::Target;
use crate::config::{self, ServeConfig, DEFAULT_PORT};
use crate::output::{Format, TextOrJson};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Install and run clusters on fleets of Linux hosts, without SSH"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The global flags. Their environment variables are read by [`Global::resolved`], not by
/// clap: clap lists an argument taken from the environment in an error's usage line, as if
/// it were required.
#[derive(Args, Debug)]
pub struct Global {
    /// Controller data dir; client commands read the URL, CA and admin token from it when
    /// --server/--token/--ca are not given [env: BERTH_DATA_DIR] [default: /var/lib/berth as
    /// root, else ~/.local/share/berth]
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Controller URL for client commands, e.g. https://10.0.0.1:7443 [env: BERTH_SERVER]
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// API bearer token for client commands [env: BERTH_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that the controller's certificate must chain to [env: BERTH_CA]
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

impl Global {
    /// Each flag, else its environment variable (unset or empty: none).
    fn resolved(&self) -> Global {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Global {
            data_dir: self
                .data_dir
                .clone()
                .or_else(|| env("BERTH_DATA_DIR").map(PathBuf::from)),
            server: self
                .server
                .clone()
                .or_else(|| env("BERTH_SERVER").map(|v| v.to_string_lossy().into_owned())),
            token: self
                .token
                .clone()
                .or_else(|| env("BERTH_TOKEN").map(|v| v.to_string_lossy().into_owned())),
            ca: self
                .ca
                .clone()
                .or_else(|| env("BERTH_CA").map(PathBuf::from)),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller: HTTPS API, PKI and store (SQLite, or PostgreSQL)
    Serve(Box<ServeArgs>),
    /// Bootstrap tokens that let agents enroll
    #[command(subcommand)]
    Token(TokenCmd),
    /// Bearer tokens for people and scripts using the API
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCmd),
    /// List resources
    #[command(subcommand)]
    Get(GetCmd),
    /// Manage enrolled hosts
    #[command(subcommand)]
    Host(crate::access_cmd::HostCmd),
    /// Build, push and manage bundles
    #[command(subcommand)]
    Bundle(crate::bundle_cmd::BundleCmd),
    /// Container images the controller's registry serves (`/v2/`)
    #[command(subcommand)]
    Image(crate::image_cmd::ImageCmd),
    /// Write a consistent backup of the running controller (database, PKI, blobs) to FILE
    Backup {
        /// The backup file (mode 0600; replaced only once complete and checked)
        #[arg(short = 'o', long = "output-file", required = true)]
        out: PathBuf,
    },
    /// Recreate a controller from a backup in a new data dir (--data-dir, required); its
    /// agents keep working against it
    Restore { file: PathBuf },
    /// berth-agent executables served to hosts that install themselves
    #[command(subcommand, name = "agent-binary")]
    AgentBinary(crate::agent_binary_cmd::AgentBinaryCmd),
    /// Store a Clusterfile as the cluster's desired state and reconcile to it
    Apply {
        #[command(flatten)]
        input: ClusterfileInput,
        /// Follow the apply until the cluster is Running (exit 0) or Failed (exit 1)
        #[arg(long)]
        wait: bool,
        /// Print what the apply would do, per phase and host in the order it would
        /// happen, and store nothing; exits 2 when there are changes, 0 when none
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// What `berth apply -f FILE` would do, stored nothing (= `apply --dry-run`); exits 2
    /// when there are changes, 0 when none
    Diff {
        #[command(flatten)]
        input: ClusterfileInput,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Install bundles on hosts without writing a Clusterfile (sealos run); waits until done
    Run {
        /// Pushed bundles (name:tag) or local bundle directories/files (pushed first)
        #[arg(required = true)]
        bundles: Vec<String>,
        /// Master hosts (agent names or addresses), comma-separated; the first runs init
        #[arg(long, value_delimiter = ',')]
        masters: Vec<String>,
        /// Node hosts, comma-separated
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// The cluster the bundles run as
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Extra env for every hook, KEY=VALUE (repeatable)
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Install on this machine: enrolls and starts a local agent when there is none
        #[arg(long)]
        single: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Add hosts to a cluster (edits its stored Clusterfile and applies it)
    Add(HostEditArgs),
    /// Remove hosts from a cluster: `leave` on them, `remove` on master0
    Delete(HostEditArgs),
    /// A cluster's phase, steps and output keys
    Status {
        /// The cluster [default: every cluster, as `berth get clusters`]
        cluster: Option<String>,
        /// Follow until Running or Failed
        #[arg(long)]
        watch: bool,
        /// Show output values (admin token; they often hold secrets)
        #[arg(long)]
        show_outputs: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The step logs of one host: every step in order, or one (--step), or follow the latest (-f)
    Logs {
        /// The cluster
        cluster: String,
        /// The host whose step logs to print (agent name)
        #[arg(long)]
        host: String,
        /// Only this step kind (check, distribute, install, init, join-master, join-node,
        /// clean-apps, apps, leave, remove, upgrade, rollback, exec, clean), its latest run
        /// [default: every step of the host, in order]
        #[arg(long)]
        step: Option<String>,
        /// Keep printing while the step runs
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Re-run failed and interrupted steps (nothing that succeeded runs again)
    Retry {
        /// The cluster
        cluster: String,
        #[arg(long)]
        wait: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The versions of this client and of the controller it talks to
    Version {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = crate::output::TextOrJson::Text)]
        output: crate::output::TextOrJson,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `berth completion bash > /etc/bash_completion.d/berth`
    Completion { shell: clap_complete::Shell },
    /// Write the man pages (berth.1 and one per command) into DIR
    Man { dir: PathBuf },
    /// Print the OpenAPI 3.1 document of the controller's API (what `GET /v1/openapi.json`
    /// serves; no controller needed)
    Openapi,
    /// Run a command on hosts through their agents (no SSH; hosts behind NAT too): each
    /// host's output streamed with its name in front, a per-host summary, exit 1 when any
    /// host failed
    Exec {
        /// Every host of this cluster (narrowed by --hosts and --role)
        cluster: Option<String>,
        /// These hosts (names, comma-separated); without CLUSTER each must be a member of a
        /// cluster
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Only masters or only nodes
        #[arg(long, value_parser = ["master", "node"])]
        role: Option<String>,
        /// How long the command may run on a host
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// -o json: per host its state, exit code and output (nothing streamed)
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
        /// The program and its arguments (after `--`), run without a shell: use
        /// `-- sh -c '…'` for one
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Turn back the cluster's last upgrade: `rollback` runs on every host that started
    /// it, in reverse order, and the hosts return to the rootfs they had
    Rollback {
        /// The cluster
        cluster: String,
        /// Follow until the cluster is Running (exit 0) or Failed (exit 1)
        #[arg(long)]
        wait: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Run clean hooks everywhere, remove the cluster's files from every host and the cluster
    Reset {
        /// The cluster
        cluster: String,
        /// Wait until the cluster is gone; fails when a clean fails
        #[arg(long)]
        wait: bool,
        /// Finish even when hosts do not answer (their clean is skipped, named in a
        /// warning); also gives up cleans that failed
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Log format (filter with RUST_LOG)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address to listen on
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// URL agents use to reach this controller [default: https://<listen address, or first non-loopback IPv4>:<port>]
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Also serve `GET /metrics` without authentication, over plain HTTP, on this address
    /// (e.g. 127.0.0.1:9464 for a Prometheus beside the controller); `/metrics` on the API
    /// port keeps needing a viewer token
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep the controller's state in this PostgreSQL database instead of
    /// `<data-dir>/berth.db` (e.g. `postgres://berth@db.example/berth?sslmode=verify-full`);
    /// prefer the environment variable, which `ps` does not show, for a URL with a password
    #[arg(
        long,
        env = "BERTH_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Keep bundle blobs in an S3-compatible bucket instead of `<data-dir>/blobs`:
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION` (endpoint for MinIO, Ceph…);
    /// credentials from the `AWS_*` environment or `--blob-store-credentials`
    #[arg(long, value_name = "URL")]
    pub blob_store: Option<String>,
    /// A 0600 file of `access_key_id = …` and `secret_access_key = …` lines for
    /// `--blob-store` (optionally `session_token = …`)
    #[arg(long, value_name = "FILE", requires = "blob_store")]
    pub blob_store_credentials: Option<PathBuf>,
    /// Extra name or IP for the server certificate (repeatable; with several controllers,
    /// the load balancer's name and each controller's own)
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// This controller's name in `berth get controllers` [default: the machine's hostname]
    #[arg(long, value_name = "NAME")]
    pub controller_name: Option<String>,
    /// With several controllers on one PostgreSQL database: a controller holds each of its
    /// clusters for this long unless it renews it (it does every fifth of it), so the
    /// others take over the clusters of one that died within about this time (at least 1s)
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// A host is NotReady when its last heartbeat is older than this
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub host_grace: Duration,
    /// Longest time an agent's long-poll is held open (keep it under `--host-grace`, and
    /// under the idle timeout of any proxy or NAT between agents and controller, often 60s)
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub poll_hold: Duration,
    /// Concurrent long-polls before agents are told to back off (503 + Retry-After);
    /// each connected agent holds one
    #[arg(long, default_value_t = 50_000)]
    pub max_polls: usize,
    /// Time in-flight requests get to finish on SIGINT/SIGTERM
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Added to a step's hook timeouts to make its deadline; a released or running step
    /// with no result by then becomes `interrupted` (reason `lost`) and its cluster Failed
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub step_grace: Duration,
    /// A host not seen for this long loses its released and running steps (`lost`)
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub host_lost_after: Duration,
    /// Log bytes kept per step attempt (K, M, G); the rest is dropped and marked
    /// `[… truncated N bytes]`
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub log_cap: u64,
    /// Largest bundle upload accepted, in bytes (suffixes K, M, G, T)
    #[arg(long, default_value = "20G", value_parser = parse_size)]
    pub max_bundle_size: u64,
    /// Make the registry (`/v2/`, the images bundles carry) need an agent's client
    /// certificate or an API token; by default reads are open, as a registry inside an
    /// air-gapped cluster is
    #[arg(long)]
    pub registry_auth: bool,
    /// A pushed bundle may unpack to at most this many bytes in all (K, M, G, T)
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    pub max_unpacked_size: u64,
    /// A pushed bundle may hold at most this many entries
    #[arg(long, default_value_t = berth_bundle::unpack::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// No single file in a pushed bundle may be larger (K, M, G, T; at most 8G-1)
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Lifetime of agent certificates; agents renew theirs at two thirds of it (at least 30s)
    #[arg(long, default_value = "90d", value_parser = parse_cert_ttl)]
    pub agent_cert_ttl: Duration,
    /// Lifetime of the controller's server certificate; renewed at two thirds of it, also
    /// across restarts (at least 30s)
    #[arg(long, default_value = "365d", value_parser = parse_cert_ttl)]
    pub server_cert_ttl: Duration,
    /// The berth-agent executable served to hosts of this machine's architecture that
    /// install themselves [default: berth-agent next to this berth, else ../lib/berth/berth-agent]
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
}

/// A certificate lifetime: a duration of at least 30 seconds, at most 10 years.
fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))?;
    if d < crate::pki::MIN_CERT_TTL {
        return Err(format!("`{s}` is shorter than the minimum of 30s"));
    }
    if d > Duration::from_secs(10 * 365 * 86400) {
        return Err(format!(
            "`{s}` is longer than the CA's own 10 years; certificates never outlive their CA"
        ));
    }
    Ok(d)
}

/// `512M`, `20G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "`{s}`: unknown size suffix `{c}`; use K, M, G or T"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size; use e.g. 512M or 20G"))
}

#[derive(Args, Debug)]
pub struct HostEditArgs {
    /// Master hosts, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    /// Node hosts, comma-separated
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The cluster
    #[arg(long, default_value = "default")]
    pub cluster: String,
    /// Follow until Running or Failed
    #[arg(long)]
    pub wait: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Subcommand, Debug)]
pub enum ApiTokenCmd {
    /// Create a token with a role (admin token needed); prints it once
    Create {
        /// Who or what uses it
        #[arg(long)]
        name: String,
        /// admin, operator (mutations) or viewer (read only)
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a bootstrap token and print the `berth-agent join` line for it
    Create {
        /// Lifetime of the token
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many agents may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Free text stored with the token
        #[arg(long)]
        description: Option<String>,
        /// Print the line for a host that has only `sh` and `curl`/`wget`: it verifies this
        /// controller's CA, installs berth-agent (sha256 checked), enrolls and starts it
        #[arg(long)]
        install: bool,
        /// Bind the token to the enrolled host NAME, which may re-enroll with it
        /// (`berth-agent join --reenroll`: new key, same name and cluster membership)
        #[arg(long, value_name = "NAME")]
        reenroll: Option<String>,
        /// `text` prints the join (or install) command only; `json` prints token, expiry and
        /// both commands
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
}

/// A Clusterfile and what renders and applies it (`apply`, `diff`).
#[derive(clap::Args, Debug)]
pub struct ClusterfileInput {
    /// The Clusterfile (sealos apps.sealos.io/v1beta1 Cluster + Config documents); one
    /// with `{{ }}` is a Go template, rendered here first as `sealos apply` does
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// A values file for a templated Clusterfile (`.Values`); repeatable, later files
    /// win
    #[arg(long = "values")]
    pub values: Vec<PathBuf>,
    /// key.path=value for `.Values` (helm's --set: comma-separated, true/false/integers
    /// typed); repeatable, applied after --values
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// NAME=VALUE answered by `env "NAME"` in a templated Clusterfile (before this
    /// process's environment; BERTH_* names are never read from it); repeatable
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Nodes an upgrade takes at once (masters always go one at a time); over the
    /// Clusterfile's spec.maxUnavailable; default 1
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_unavailable: Option<u32>,
}

impl ClusterfileInput {
    fn split(
        self,
    ) -> (
        PathBuf,
        crate::clusterfile_template::Inputs,
        crate::cluster_cmd::ApplyFlags,
    ) {
        (
            self.file,
            crate::clusterfile_template::Inputs {
                values: self.values,
                set: self.set,
                env: self.env,
            },
            crate::cluster_cmd::ApplyFlags {
                max_unavailable: self.max_unavailable,
                dry_run: false,
            },
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum GetCmd {
    /// Clusters with phase and hosts
    Clusters {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Keep watching: print the list again each time it changes (JSON: one line per
        /// change), until interrupted
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// The controllers serving this database (several share one PostgreSQL): live or
    /// gone, and the clusters each one ticks; `*` marks the one that answered
    Controllers {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Stored bundles (same as `berth bundle list`)
    Bundles {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Enrolled hosts with their state and facts
    Hosts {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Keep watching: print the list again each time it changes (JSON: one line per
        /// change), until interrupted
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// The event log, oldest first: phase changes, step transitions, applies, upgrade
    /// batches, rollbacks, resets, skipped hosts, execs
    Events {
        /// Only this cluster's events (also of a cluster that is gone)
        cluster: Option<String>,
        /// Keep printing new events as they happen (Ctrl-C stops)
        #[arg(short = 'w', long)]
        watch: bool,
        /// The newest N events (1 to 10000)
        #[arg(long, default_value_t = 200)]
        limit: u32,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The audit log, newest first: every change and every read of secrets (admin token)
    Audit {
        /// How many entries (1 to 10000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Runs the CLI and maps the outcome to an exit code, printing errors as one line.
pub fn main(cli: Cli) -> ExitCode {
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<crate::output::ExitStatus>() => ExitCode::from(
            e.downcast_ref::<crate::output::ExitStatus>()
                .map_or(1, |s| s.0),
        ),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let global = cli.global.resolved();
    let data_dir = global
        .data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir);
    let target = Target {
        server: global.server.clone(),
        token: global.token.clone(),
        ca: global.ca.clone(),
        data_dir: data_dir.clone(),
    };
    match cli.command {
        Command::Serve(a) => {
            let format = a.log_format;
            serve(*a, data_dir, format).await
        }
        Command::Token(TokenCmd::Create {
            ttl,
            uses,
            description,
            install,
            reenroll,
            output,
        }) => {
            let req = crate::access_cmd::TokenFlags {
                ttl,
                uses,
                description,
                install,
                reenroll,
            };
            crate::access_cmd::token_create(&target, req, output).await
        }
        Command::Bundle(cmd) => crate::bundle_cmd::run(cmd, &target).await,
        Command::Image(cmd) => crate::image_cmd::run(cmd, &target).await,
        Command::AgentBinary(cmd) => crate::agent_binary_cmd::run(cmd, &target).await,
        Command::Backup { out } => crate::backup_cmd::backup(&target, &out).await,
        Command::Restore { file } => {
            crate::backup_cmd::restore(&file, global.data_dir.as_deref()).await
        }
        Command::ApiToken(ApiTokenCmd::Create { name, role, output }) => {
            crate::access_cmd::api_token_create(&target, name, role, output).await
        }
        Command::Apply {
            input,
            wait,
            dry_run,
            output,
        } => {
            let (file, inputs, mut flags) = input.split();
            flags.dry_run = dry_run;
            crate::cluster_cmd::apply(&target, &file, &inputs, flags, wait, output).await
        }
        Command::Diff { input, output } => {
            let (file, inputs, mut flags) = input.split();
            flags.dry_run = true;
            crate::cluster_cmd::apply(&target, &file, &inputs, flags, false, output).await
        }
        Command::Run {
            bundles,
            masters,
            nodes,
            cluster,
            env,
            single,
            output,
        } => {
            crate::cluster_cmd::run(
                &target,
                crate::cluster_cmd::RunArgs {
                    bundles,
                    masters,
                    nodes,
                    cluster,
                    env,
                    single,
                    out: output,
                },
            )
            .await
        }
        Command::Status {
            cluster,
            watch,
            show_outputs,
            output,
        } => crate::cluster_cmd::status(&target, cluster, watch, show_outputs, output).await,
        Command::Logs {
            cluster,
            host,
            step,
            follow,
        } => crate::cluster_cmd::logs(&target, &cluster, &host, step.as_deref(), follow).await,
        Command::Add(a) => {
            crate::cluster_cmd::edit_hosts(
                &target, &a.cluster, a.masters, a.nodes, false, a.wait, a.output,
            )
            .await
        }
        Command::Delete(a) => {
            crate::cluster_cmd::edit_hosts(
                &target, &a.cluster, a.masters, a.nodes, true, a.wait, a.output,
            )
            .await
        }
        Command::Retry {
            cluster,
            wait,
            output,
        } => crate::cluster_cmd::retry(&target, &cluster, wait, output).await,
        Command::Version { output } => crate::version_cmd::version(&target, output).await,
        Command::Completion { shell } => {
            crate::version_cmd::completion(shell, <Cli as clap::CommandFactory>::command())
        }
        Command::Man { dir } => {
            crate::version_cmd::man_pages(&dir, <Cli as clap::CommandFactory>::command())
        }
        Command::Openapi => {
            crate::version_cmd::write_stdout(crate::api::openapi::json().as_bytes())
        }
        Command::Exec {
            cluster,
            hosts,
            role,
            timeout,
            output,
            command,
        } => {
            let flags = crate::exec_cmd::ExecFlags {
                cluster,
                hosts,
                role,
                timeout,
                command,
            };
            crate::exec_cmd::exec(&target, flags, output).await
        }
        Command::Rollback {
            cluster,
            wait,
            output,
        } => crate::cluster_cmd::rollback(&target, &cluster, wait, output).await,
        Command::Reset {
            cluster,
            wait,
            force,
        } => crate::cluster_cmd::reset(&target, &cluster, force, wait).await,
        Command::Get(GetCmd::Clusters { output, watch }) => {
            crate::cluster_cmd::list(&target, output, watch).await
        }
        Command::Get(GetCmd::Controllers { output }) => {
            crate::access_cmd::controllers(&target, output).await
        }
        Command::Get(GetCmd::Bundles { output }) => {
            crate::bundle_cmd::run(crate::bundle_cmd::BundleCmd::List { output }, &target).await
        }
        Command::Get(GetCmd::Events {
            cluster,
            watch,
            limit,
            output,
        }) => crate::events_cmd::events(&target, cluster.as_deref(), watch, limit, output).await,
        Command::Get(GetCmd::Audit { limit, output }) => {
            crate::access_cmd::audit(&target, limit, output).await
        }
        Command::Get(GetCmd::Hosts { output, watch }) => {
            crate::access_cmd::hosts(&target, output, watch).await
        }
        Command::Host(cmd) => crate::access_cmd::host(&target, cmd).await,
    }
}

async fn serve(a: ServeArgs, data_dir: PathBuf, log_format: LogFormat) -> Result<()> {
    init_logging(log_format);
    let advertise_url = a
        .advertise_url
        .as_deref()
        .map(config::validate_advertise_url)
        .transpose()?;
    if a.max_polls == 0 {
        anyhow::bail!("--max-polls must be at least 1");
    }
    if a.lease_ttl < Duration::from_secs(1) {
        anyhow::bail!("--lease-ttl must be at least 1s");
    }
    let cfg = ServeConfig {
        database: crate::store::Location::new(&data_dir, a.database_url.as_deref())?,
        blob_store: a
            .blob_store
            .as_deref()
            .map(crate::s3::S3Location::parse)
            .transpose()?,
        blob_store_credentials: a.blob_store_credentials,
        data_dir,
        listen: a.listen,
        metrics_listen: a.metrics_listen,
        advertise_url,
        extra_sans: a.sans,
        host_grace: a.host_grace,
        poll_hold: a.poll_hold,
        max_polls: a.max_polls,
        shutdown_grace: a.shutdown_grace,
        max_bundle_size: a.max_bundle_size,
        registry_auth: a.registry_auth,
        engine: crate::engine::EngineConfig {
            step_grace: a.step_grace,
            host_lost_after: a.host_lost_after,
            log_cap: a.log_cap,
            lease_ttl: a.lease_ttl,
        },
        controller_name: a.controller_name,
        unpack_limits: berth_bundle::Limits {
            max_total_bytes: a.max_unpacked_size,
            max_entries: a.max_entries,
            max_file_bytes: a.max_file_size.min((8 << 30) - 1),
        },
        lifetimes: crate::pki::Lifetimes {
            agent: a.agent_cert_ttl,
            server: a.server_cert_ttl,
        },
        agent_binary: a.agent_binary,
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        crate::signals::wait_for_stop().await;
        tracing::info!("signal received: shutting down");
        signals.cancel();
    });
    crate::server::run(cfg, shutdown)
        .await
        .context("controller failed")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal, and never with NO_COLOR (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
