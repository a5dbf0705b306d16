//! The driver: starts the workers, follows their events, samples the controller, applies
//! the cluster and prints the figures.

use crate::procstat::{self, Sample};
use crate::scrape::Scrape;
use crate::worker::agent_name;
use anyhow::{anyhow, bail, Context, Result};
use berth_shared::api::{CreateTokenRequest, CreateTokenResponse};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// The controller's URL (https://HOST:PORT)
    #[arg(long)]
    pub controller: String,
    /// sha256 of the controller's CA (as `berth token create` prints it)
    #[arg(long)]
    pub ca_hash: String,
    /// An admin API token
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Virtual agents to run
    #[arg(long)]
    pub agents: usize,
    /// Agents per worker process (each holds one socket per agent)
    #[arg(long, default_value_t = 5000)]
    pub per_worker: usize,
    /// Where the agents' data dirs go (tmpfs keeps the simulator's own fsyncs cheap)
    #[arg(long, default_value = "/dev/shm/berth-fleetsim")]
    pub work_dir: PathBuf,
    /// Loopback source addresses the agents are spread over (127.0.0.2, …)
    #[arg(long, default_value_t = 4)]
    pub source_addrs: u8,
    /// How long each agent asks the controller to hold its poll
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// PID of the controller, to sample its CPU and memory
    #[arg(long)]
    pub controller_pid: Option<u32>,
    /// How long to measure the idle fleet
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Apply one cluster over the first N agents (0: no apply)
    #[arg(long, default_value_t = 0)]
    pub cluster_hosts: usize,
    /// Bundle of that cluster (a pushed `name:tag`; best without hooks)
    #[arg(long)]
    pub bundle: Option<String>,
    /// Name of that cluster
    #[arg(long, default_value = "fleet")]
    pub cluster: String,
    /// Stop the apply once every host has its first plan (do not wait for Running)
    #[arg(long)]
    pub fanout_only: bool,
    /// Give up on a phase after this long
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also time the apply on the wire: a tcpdump on `lo` records the controller's port
    /// from the start, the agents log their TLS secrets, and tshark decrypts the capture
    /// afterwards; the first plans and the report round trips are then timed by the
    /// kernel, without waiting for the simulator's own CPU (root; tcpdump and tshark on
    /// PATH)
    #[arg(long)]
    pub wire: bool,
    /// Output format: text or json
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Stats {
    enrolled: u64,
    already: u64,
    enroll_ms: Vec<u64>,
    enroll_failed: BTreeMap<String, u64>,
    workers_enrolled: usize,
    workers_running: usize,
    connected: HashSet<usize>,
    /// Agent index → unix ms of its first plan with steps after the apply.
    first_plan: HashMap<usize, u64>,
    apply_at_ms: Option<u64>,
    cluster_hosts: usize,
    report_us: Vec<u64>,
    reports: u64,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn absorb(&mut self, line: &str) {
        let mut f = line.split(' ');
        match f.next() {
            Some("E") => {
                self.enrolled += 1;
                if let Some(ms) = f.next().and_then(|v| v.parse().ok()) {
                    self.enroll_ms.push(ms);
                }
            }
            Some("K") => self.already += 1,
            Some("X") => {
                *self
                    .enroll_failed
                    .entry(f.next().unwrap_or("?").to_string())
                    .or_default() += 1
            }
            Some("C") => {
                if let Some(i) = f.next().and_then(|v| v.parse().ok()) {
                    self.connected.insert(i);
                }
            }
            Some("P") => {
                let (Some(i), Some(ms), Some(steps)) = (
                    f.next().and_then(|v| v.parse::<usize>().ok()),
                    f.next().and_then(|v| v.parse::<u64>().ok()),
                    f.next().and_then(|v| v.parse::<usize>().ok()),
                ) else {
                    return;
                };
                if let Some(at) = self.apply_at_ms {
                    if steps > 0 && i < self.cluster_hosts && ms >= at {
                        self.first_plan.entry(i).or_insert(ms);
                    }
                }
            }
            Some("R") => {
                let _entries = f.next();
                let us: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let outcome = f.next().unwrap_or("?");
                self.reports += 1;
                if outcome == "ok" {
                    if self.apply_at_ms.is_some() {
                        self.report_us.push(us);
                    }
                } else {
                    *self.errors.entry(format!("report {outcome}")).or_default() += 1;
                }
            }
            Some("F") => {
                *self
                    .errors
                    .entry(format!("poll {}", f.next().unwrap_or("?")))
                    .or_default() += 1
            }
            Some("ENROLLED") => self.workers_enrolled += 1,
            Some("RUNNING") => self.workers_running += 1,
            _ => {}
        }
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Events {
    rx: mpsc::UnboundedReceiver<String>,
    stats: Stats,
}

impl Events {
    /// Absorbs events until `done` holds or `deadline` passes (then an error naming `what`).
    async fn until(
        &mut self,
        what: &str,
        deadline: Instant,
        done: impl Fn(&Stats) -> bool,
    ) -> Result<()> {
        while !done(&self.stats) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(line)) => self.stats.absorb(&line),
                Ok(None) => bail!("every worker exited while waiting for {what}"),
                Err(_) => bail!("timed out waiting for {what}"),
            }
        }
        Ok(())
    }

    /// Absorbs what is queued without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.stats.absorb(&line);
        }
    }
}

async fn admin_client(a: &DriverArgs) -> Result<reqwest::Client> {
    let probe = reqwest::Client::builder()
        .use_preconfigured_tls(berth_agent::tls::unverified_for_ca_fetch()?)
        .build()?;
    let ca_pem = probe
        .get(format!("{}/v1/enroll/ca", a.controller))
        .send()
        .await
        .context("cannot reach the controller")?
        .text()
        .await?;
    let der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("the controller sent no CA"))??;
    let want: berth_shared::Digest = a.ca_hash.parse().map_err(|e| anyhow!("--ca-hash: {e}"))?;
    if berth_shared::Digest::of(der.as_ref()) != want {
        bail!("the controller's CA does not match --ca-hash");
    }
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", a.token).parse()?,
    );
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(berth_agent::tls::pinned(&ca_pem)?)
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// The controller's metrics now (empty when it cannot be read: the run goes on).
async fn scrape(c: &reqwest::Client, a: &DriverArgs) -> Scrape {
    match c.get(format!("{}/metrics", a.controller)).send().await {
        Ok(r) if r.status().is_success() => Scrape::parse(&r.text().await.unwrap_or_default()),
        Ok(r) => {
            tracing::warn!(status = %r.status(), "cannot read the controller's metrics");
            Scrape::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the controller's metrics");
            Scrape::default()
        }
    }
}

async fn join_token(c: &reqwest::Client, a: &DriverArgs, uses: usize) -> Result<String> {
    let r = c
        .post(format!("{}/v1/tokens", a.controller))
        .json(&CreateTokenRequest {
            ttl_secs: 3600,
            uses: uses.clamp(1, 10_000) as u32,
            description: Some("berth-fleetsim".into()),
            reenroll: None,
        })
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "cannot create a join token: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json::<CreateTokenResponse>().await?.token)
}

fn clusterfile(name: &str, bundle: &str, hosts: usize) -> String {
    let mut t = format!(
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  image: [\"{bundle}\"]\n  hosts:\n  - ips: [{}]\n    roles: [master]\n",
        agent_name(0)
    );
    if hosts > 1 {
        let nodes: Vec<String> = (1..hosts).map(agent_name).collect();
        t.push_str(&format!(
            "  - ips: [{}]\n    roles: [node]\n",
            nodes.join(", ")
        ));
    }
    t
}

pub async fn drive(a: DriverArgs) -> Result<()> {
    if a.agents == 0 || a.per_worker == 0 {
        bail!("--agents and --per-worker must be at least 1");
    }
    if a.cluster_hosts > a.agents {
        bail!("--cluster-hosts cannot exceed --agents");
    }
    if a.cluster_hosts > 0 && a.bundle.is_none() {
        bail!("--cluster-hosts needs --bundle NAME:TAG (push a bundle without hooks first)");
    }
    berth_files::raise_open_files_limit()?;
    let admin = admin_client(&a).await?;
    let sample_ctl = || a.controller_pid.and_then(procstat::sample);

    // The capture starts before the first agent connects: decrypting a connection needs
    // its handshake, and reading its HTTP/2 headers needs every header block before.
    let mut capture = match a.wire {
        true => {
            let port = reqwest::Url::parse(&a.controller)?
                .port_or_known_default()
                .context("--controller has no port")?;
            Some(crate::wire::Capture::start(port, &a.work_dir).await?)
        }
        false => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    let mut pids = Vec::new();
    let started = Instant::now();
    let mut from = 0;
    while from < a.agents {
        let to = (from + a.per_worker).min(a.agents);
        let token = join_token(&admin, &a, to - from).await?;
        let mut worker = tokio::process::Command::new(std::env::current_exe()?);
        worker.arg("worker");
        if let Some(c) = &capture {
            worker.arg("--key-log").arg(c.key_log());
        }
        let mut child = worker
            .args(["--controller", &a.controller, "--ca-hash", &a.ca_hash])
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .arg("--work-dir")
            .arg(&a.work_dir)
            .args(["--source-addrs", &a.source_addrs.to_string()])
            .args(["--poll-wait", &format!("{}s", a.poll_wait.as_secs())])
            .env("BERTH_FLEETSIM_JOIN_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker")?;
        pids.push(child.id().unwrap_or(0));
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        children.push(child);
        from = to;
    }
    drop(tx);
    let workers = children.len();
    let mut ev = Events {
        rx,
        stats: Stats::default(),
    };
    let n = a.agents as u64;

    // 1. Enrollment.
    ev.until("enrollment", started + a.timeout, |s| {
        s.workers_enrolled == workers
    })
    .await?;
    let enroll_secs = started.elapsed().as_secs_f64();
    let failed: u64 = ev.stats.enroll_failed.values().sum();
    if failed > 0 {
        bail!(
            "{failed} of {n} enrollments failed: {:?}",
            ev.stats.enroll_failed
        );
    }
    eprintln!(
        "enrolled {} agents ({} already) in {enroll_secs:.1}s",
        ev.stats.enrolled, ev.stats.already
    );

    // 2. Every agent connected.
    let connect_from = Instant::now();
    ev.until("every agent's first poll", connect_from + a.timeout, |s| {
        s.connected.len() as u64 == n
    })
    .await?;
    let connect_secs = connect_from.elapsed().as_secs_f64();
    eprintln!("all {n} agents polling after {connect_secs:.1}s; measuring idle");

    // 3. Idle.
    let settle = Instant::now() + Duration::from_secs(5);
    ev.until("settling", settle + Duration::from_secs(1), |_| {
        Instant::now() >= settle
    })
    .await
    .ok();
    let errors_before_idle: u64 = ev.stats.errors.values().sum();
    let (c0, s0) = (sample_ctl(), procstat::sample_all(&pids));
    let idle_end = Instant::now() + a.idle;
    ev.until("idle", idle_end + Duration::from_secs(1), |_| {
        Instant::now() >= idle_end
    })
    .await
    .ok();
    let (c1, s1) = (sample_ctl(), procstat::sample_all(&pids));
    let idle_errors = ev.stats.errors.values().sum::<u64>() - errors_before_idle;
    let cpu = |a: &Option<Sample>, b: &Option<Sample>| match (a, b) {
        (Some(a), Some(b)) => Some(procstat::cpu_percent(a, b)),
        _ => None,
    };
    let mib = |s: &Option<Sample>| s.map(|s| s.rss_bytes as f64 / (1 << 20) as f64);
    let idle = json!({
        "seconds": a.idle.as_secs_f64(),
        "controller_cpu_percent": cpu(&c0, &c1),
        "controller_rss_mib": mib(&c1),
        "simulator_cpu_percent": cpu(&s0, &s1),
        "simulator_rss_mib": mib(&s1),
        "errors": idle_errors,
    });

    eprintln!("idle: {idle}");

    // 4. One apply.
    let mut apply = serde_json::Value::Null;
    let mut recorded = None;
    if a.cluster_hosts > 0 {
        let bundle = a.bundle.as_deref().unwrap_or_default();
        let text = clusterfile(&a.cluster, bundle, a.cluster_hosts);
        ev.drain();
        ev.stats.cluster_hosts = a.cluster_hosts;
        ev.stats.report_us.clear();
        let (c0, s0) = (sample_ctl(), procstat::sample_all(&pids));
        let m0 = scrape(&admin, &a).await;
        let errors_before = ev.stats.errors.clone();
        let t0 = Instant::now();
        let apply_at_us = unix_us();
        ev.stats.apply_at_ms = Some(apply_at_us / 1000);
        let r = admin
            .post(format!("{}/v1/clusters", a.controller))
            .body(text)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "apply refused: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let apply_call_ms = t0.elapsed().as_millis() as u64;
        let mut peak_rss = c0.map(|s| s.rss_bytes).unwrap_or(0);
        let mut fanout_ms: Option<u64> = None;
        let mut phase = String::new();
        let mut status_every = tokio::time::interval(Duration::from_millis(500));
        let deadline = t0 + a.timeout;
        // The cluster's phase, followed like `berth apply --wait` does: a status request
        // held by the controller until the status changes.
        let (phase_tx, mut phase_rx) = tokio::sync::watch::channel((String::new(), None));
        // Not with --fanout-only: reading a large cluster's status while its plans go out
        // would add to what is measured.
        let follower = (!a.fanout_only).then(|| {
            let (admin, url) = (
                admin.clone(),
                format!(
                    "{}/v1/clusters/{}?wait=20&summary=true",
                    a.controller, a.cluster
                ),
            );
            tokio::spawn(async move {
                let mut etag: Option<String> = None;
                loop {
                    let mut req = admin.get(&url);
                    if let Some(t) = &etag {
                        req = req.header("If-None-Match", t);
                    }
                    let Ok(r) = req.send().await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    if r.status() == reqwest::StatusCode::NOT_MODIFIED {
                        continue;
                    }
                    if !r.status().is_success() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    etag = r
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let Ok(v) = r.json::<serde_json::Value>().await else {
                        continue;
                    };
                    let phase = v["phase"].as_str().unwrap_or("?").to_string();
                    let message = v["message"].as_str().map(str::to_string);
                    if phase_tx.send((phase, message)).is_err() {
                        return;
                    }
                }
            })
        });
        let running_ms = loop {
            tokio::select! {
                line = ev.rx.recv() => match line {
                    Some(l) => ev.stats.absorb(&l),
                    None => bail!("every worker exited during the apply"),
                },
                _ = status_every.tick() => {
                    if let Some(s) = sample_ctl() {
                        peak_rss = peak_rss.max(s.rss_bytes);
                    }
                    if a.fanout_only {
                        if Instant::now() > deadline {
                            bail!("not every host got its first plan within {:?}", a.timeout);
                        }
                        continue;
                    }
                    if Instant::now() > deadline {
                        bail!("the cluster did not reach Running within {:?} (phase {phase})", a.timeout);
                    }
                }
                r = phase_rx.changed(), if !a.fanout_only => {
                    if r.is_err() {
                        bail!("lost the cluster's status");
                    }
                    let (p, message) = phase_rx.borrow_and_update().clone();
                    phase = p;
                    if phase == "Running" {
                        break t0.elapsed().as_millis() as u64;
                    }
                    if phase == "Failed" {
                        bail!("the cluster failed: {}", message.unwrap_or_default());
                    }
                }
            }
            if fanout_ms.is_none() && ev.stats.first_plan.len() == a.cluster_hosts {
                let at = ev.stats.apply_at_ms.unwrap_or(0);
                fanout_ms = ev.stats.first_plan.values().max().map(|m| m - at);
                if a.fanout_only {
                    break 0;
                }
            }
        };
        if let Some(f) = follower {
            f.abort();
        }
        ev.drain();
        let (c1, s1) = (sample_ctl(), procstat::sample_all(&pids));
        let m = m0.delta(&scrape(&admin, &a).await);
        // After the samples; it is decrypted once the workers are gone.
        if let Some(c) = capture.take() {
            recorded = Some((c.finish().await, apply_at_us));
        }
        let ms = |name: &str, q: f64| m.quantile_bound(name, q).map(|s| s * 1000.0);
        let reports = m.get("berth_agent_report_duration_seconds_count");
        let inside = json!({
            "reports": reports as u64,
            "report_p50_ms_at_most": ms("berth_agent_report_duration_seconds", 0.5),
            "report_p99_ms_at_most": ms("berth_agent_report_duration_seconds", 0.99),
            "reports_within_100ms_percent": if reports > 0.0 {
                100.0 * m.get("berth_agent_report_duration_seconds_bucket{le=\"0.1\"}") / reports
            } else { 0.0 },
            "plan_deliveries": m.get("berth_plan_delivery_seconds_count") as u64,
            "plan_delivery_p50_ms_at_most": ms("berth_plan_delivery_seconds", 0.5),
            "plan_delivery_all_ms_at_most": ms("berth_plan_delivery_seconds", 1.0),
            "connections_accepted": m.get("berth_connections_accepted_total") as u64,
            "tls_handshake_failures": (m.get("berth_tls_handshake_failures_total{kind=\"error\"}")
                + m.get("berth_tls_handshake_failures_total{kind=\"timeout\"}")) as u64,
        });
        let at = ev.stats.apply_at_ms.unwrap_or(0);
        let mut firsts: Vec<u64> = ev.stats.first_plan.values().map(|m| m - at).collect();
        firsts.sort_unstable();
        let mut lat = ev.stats.report_us.clone();
        lat.sort_unstable();
        apply = json!({
            "hosts": a.cluster_hosts,
            "apply_call_ms": apply_call_ms,
            "first_plans_received": firsts.len(),
            "first_plan_p50_ms": pct(&firsts, 0.5),
            "first_plan_all_ms": fanout_ms.or(firsts.last().copied()),
            "running_ms": (!a.fanout_only).then_some(running_ms),
            "report_batches": lat.len(),
            "report_p50_ms": pct(&lat, 0.5) as f64 / 1000.0,
            "report_p99_ms": pct(&lat, 0.99) as f64 / 1000.0,
            "report_max_ms": lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            "controller_cpu_percent": cpu(&c0, &c1),
            "controller_peak_rss_mib": a.controller_pid.map(|_| peak_rss as f64 / (1 << 20) as f64),
            "simulator_cpu_percent": cpu(&s0, &s1),
            "controller_side": inside,
            "wire": serde_json::Value::Null,
            "errors": ev.stats.errors.iter().filter_map(|(k, n)| {
                let d = n - errors_before.get(k).copied().unwrap_or(0);
                (d > 0).then(|| (k.clone(), d))
            }).collect::<BTreeMap<_, _>>(),
        });
    }
    let mut result = json!({
        "agents": n,
        "workers": workers,
        "enroll": {
            "new": ev.stats.enrolled,
            "seconds": enroll_secs,
            "per_second": if ev.stats.enrolled > 0 { ev.stats.enrolled as f64 / enroll_secs } else { 0.0 },
        },
        "connect_seconds": connect_secs,
        "idle": idle,
        "apply": apply,
        "errors": ev.stats.errors,
    });
    // Stop the workers: they exit when stdin closes.
    for c in &mut children {
        drop(c.stdin.take());
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(15), c.wait()).await;
    }
    if let Some((r, since)) = recorded {
        eprintln!("decrypting the capture with tshark");
        let seen = r.decode(since).await?;
        let ms = |v: &[u64], q: f64| pct(v, q) as f64 / 1000.0;
        let (plans, reports) = (&seen.first_plan_us, &seen.report_us);
        result["apply"]["wire"] = json!({
            "connections": plans.len(),
            "first_plan_p50_ms": ms(plans, 0.5),
            "first_plan_p99_ms": ms(plans, 0.99),
            "first_plan_p999_ms": ms(plans, 0.999),
            "first_plan_all_ms": ms(plans, 1.0),
            "report_batches": reports.len(),
            "report_p50_ms": ms(reports, 0.5),
            "report_p99_ms": ms(reports, 0.99),
            "report_p999_ms": ms(reports, 0.999),
            "report_max_ms": ms(reports, 1.0),
            "reports_unanswered": seen.reports_unanswered,
            "dropped_packets": seen.dropped,
        });
    }
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_text(&result);
    }
    Ok(())
}

fn print_text(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() != 0.0 => format!("{x:.1}"),
            _ => n.to_string(),
        },
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    };
    println!(
        "agents                    {}  ({} worker processes)",
        r["agents"], r["workers"]
    );
    println!(
        "enroll                    {} new in {} s = {} /s",
        f(&r["enroll"]["new"]),
        f(&r["enroll"]["seconds"]),
        f(&r["enroll"]["per_second"])
    );
    println!("all polling after         {} s", f(&r["connect_seconds"]));
    let i = &r["idle"];
    println!(
        "idle ({} s)               controller {} % CPU, {} MiB RSS; simulator {} % CPU, {} MiB; errors {}",
        f(&i["seconds"]),
        f(&i["controller_cpu_percent"]),
        f(&i["controller_rss_mib"]),
        f(&i["simulator_cpu_percent"]),
        f(&i["simulator_rss_mib"]),
        f(&i["errors"])
    );
    let p = &r["apply"];
    if !p.is_null() {
        println!(
            "apply of {} hosts        call {} ms; first plans: {} received, p50 {} ms, all {} ms; Running after {} ms",
            f(&p["hosts"]),
            f(&p["apply_call_ms"]),
            f(&p["first_plans_received"]),
            f(&p["first_plan_p50_ms"]),
            f(&p["first_plan_all_ms"]),
            f(&p["running_ms"])
        );
        println!(
            "reports                   {} batches, p50 {} ms, p99 {} ms, max {} ms",
            f(&p["report_batches"]),
            f(&p["report_p50_ms"]),
            f(&p["report_p99_ms"]),
            f(&p["report_max_ms"])
        );
        let c = &p["controller_side"];
        println!(
            "inside the controller     reports: {} requests, p50 <= {} ms, p99 <= {} ms, {} % within 100 ms",
            f(&c["reports"]),
            f(&c["report_p50_ms_at_most"]),
            f(&c["report_p99_ms_at_most"]),
            f(&c["reports_within_100ms_percent"])
        );
        println!(
            "                          held polls woken with a plan: {}, answered p50 <= {} ms, all <= {} ms after the release",
            f(&c["plan_deliveries"]),
            f(&c["plan_delivery_p50_ms_at_most"]),
            f(&c["plan_delivery_all_ms_at_most"])
        );
        println!(
            "                          new connections {}, failed TLS handshakes {}",
            f(&c["connections_accepted"]),
            f(&c["tls_handshake_failures"])
        );
        let w = &p["wire"];
        if !w.is_null() {
            println!(
                "on the wire (tcpdump)     first plans on {} connections, p50 {} ms, p99 {} ms, p99.9 {} ms, all {} ms after the apply started; {} packets dropped",
                f(&w["connections"]),
                f(&w["first_plan_p50_ms"]),
                f(&w["first_plan_p99_ms"]),
                f(&w["first_plan_p999_ms"]),
                f(&w["first_plan_all_ms"]),
                f(&w["dropped_packets"])
            );
            println!(
                "                          reports: {} batches, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms from request to answer; {} unanswered",
                f(&w["report_batches"]),
                f(&w["report_p50_ms"]),
                f(&w["report_p99_ms"]),
                f(&w["report_p999_ms"]),
                f(&w["report_max_ms"]),
                f(&w["reports_unanswered"])
            );
        }
        println!(
            "during the apply          controller {} % CPU, peak {} MiB RSS; simulator {} % CPU; errors {}",
            f(&p["controller_cpu_percent"]),
            f(&p["controller_peak_rss_mib"]),
            f(&p["simulator_cpu_percent"]),
            p["errors"]
        );
    }
    println!("errors by kind            {}", r["errors"]);
}
