//! `berth apply|run|status|logs|retry|reset` and `berth get clusters`.

use crate::client::{Client, Target};
use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use berth_shared::api::{
    codes, ApplyResponse, ClusterStatus, ClusterSummary, ClusterView, CreateTokenRequest,
    CreateTokenResponse, HostsEdit, LogChunk, LogQuery, ResetRequest, ResetResponse, RetryResponse,
    StatusQuery, StepView,
};
use berth_shared::routes::{self, NoQuery};
use berth_shared::state::{ClusterPhase, StepKind, StepState};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `berth apply` flags that travel with the Clusterfile.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyFlags {
    pub max_unavailable: Option<u32>,
    pub dry_run: bool,
}

impl ApplyFlags {
    fn query(&self) -> berth_shared::api::ApplyQuery {
        berth_shared::api::ApplyQuery {
            max_unavailable: self.max_unavailable,
            dry_run: self.dry_run,
        }
    }
}

/// Prints a dry run's plan; exits 2 (without an error) when it has changes.
fn print_plan(plan: &berth_shared::api::PlanPreview, out: Format) -> Result<()> {
    match out {
        Format::Json => println!("{}", serde_json::to_string_pretty(plan)?),
        Format::Yaml => print!("{}", serde_norway::to_string(plan)?),
        Format::Table => print!("{}", plan_text(plan)),
    }
    if plan.changes {
        return Err(crate::output::ExitStatus(2).into());
    }
    Ok(())
}

/// A dry run's plan for people: what changes, then the waves in order.
pub fn plan_text(p: &berth_shared::api::PlanPreview) -> String {
    let mut t = String::new();
    let head = if p.create {
        format!("cluster {} would be created", p.cluster)
    } else if p.changes {
        format!("cluster {} would change", p.cluster)
    } else {
        format!("cluster {}: no changes", p.cluster)
    };
    t.push_str(&head);
    t.push('\n');
    if !p.add_hosts.is_empty() {
        t.push_str(&format!("  hosts to add:    {}\n", p.add_hosts.join(", ")));
    }
    if !p.remove_hosts.is_empty() {
        t.push_str(&format!(
            "  hosts to remove: {}\n",
            p.remove_hosts.join(", ")
        ));
    }
    if let Some(u) = &p.upgrade {
        t.push_str(&format!(
            "  upgrade:         {} -> {} (nodes {} at a time)\n",
            u.from.join(", "),
            u.to.join(", "),
            u.max_unavailable
        ));
    }
    if !p.resumed.is_empty() {
        let r: Vec<String> = p
            .resumed
            .iter()
            .map(|s| format!("{} on {}", s.kind, s.host))
            .collect();
        t.push_str(&format!("  resumed:         {}\n", r.join(", ")));
    }
    if p.spec_changed && p.waves.is_empty() {
        t.push_str("  the stored Clusterfile changes; no step runs\n");
    }
    for (i, wave) in p.waves.iter().enumerate() {
        let mut kinds: Vec<berth_shared::state::StepKind> = wave.iter().map(|s| s.kind).collect();
        kinds.sort();
        kinds.dedup();
        for (j, k) in kinds.iter().enumerate() {
            let hosts: Vec<&str> = wave
                .iter()
                .filter(|s| s.kind == *k)
                .map(|s| s.host.as_str())
                .collect();
            let n = if j == 0 {
                format!("{}.", i + 1)
            } else {
                String::new()
            };
            t.push_str(&format!("  {n:<4}{:<12}{}\n", k.as_str(), hosts.join(", ")));
        }
    }
    t
}

pub async fn apply(
    target: &Target,
    file: &Path,
    inputs: &crate::clusterfile_template::Inputs,
    flags: ApplyFlags,
    wait: bool,
    out: Format,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut text = crate::clusterfile_template::render(file, &text, inputs)?;
    let client = Client::connect(target)?;
    // No hosts, or only 127.0.0.1/localhost: this machine, as sealos reads it — the local
    // agent `berth run --single` sets up.
    if berth_shared::clusterfile::means_this_machine(&text) {
        let name = ensure_local_agent(target, &client).await.context(
            "a Clusterfile without hosts (or with only 127.0.0.1/localhost) means this machine; run `berth apply` on the controller's machine, or list the hosts",
        )?;
        text = this_machine(&text, &name)?;
    }
    apply_text(&client, &text, flags, wait, out).await
}

/// `text` with its loopback hosts (if any) replaced by the local agent `name`, a master.
fn this_machine(text: &str, name: &str) -> Result<String> {
    let loopback: Vec<String> = ["127.0.0.1", "localhost", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    berth_shared::clusterfile::edit_hosts(text, &[name.to_string()], &[], &loopback)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn apply_text(
    client: &Client,
    text: &str,
    flags: ApplyFlags,
    wait: bool,
    out: Format,
) -> Result<()> {
    if wait {
        progress_choice()?;
    }
    let r: ApplyResponse = client
        .upload::<routes::ClusterApply>(&[], &flags.query(), text.to_string().into())
        .await?;
    if let Some(plan) = &r.plan {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        return print_plan(plan, out);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("applied cluster {}", r.name);
    if wait {
        watch(client, &r.name, true, out).await
    } else {
        Ok(())
    }
}

/// Follows a cluster until it is Running or Failed (with `until_done`), printing each step
/// change as a line; then prints the status. Exit status: Ok only when Running.
pub async fn watch(client: &Client, name: &str, until_done: bool, out: Format) -> Result<()> {
    let start = Instant::now();
    if follows_summary(client, name, progress_choice()?).await? {
        return watch_summary(client, name, until_done, out, start).await;
    }
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut last_phase: Option<ClusterPhase> = None;
    let mut last_change = Instant::now();
    let mut changes = StatusChanges::<ClusterView>::new(name, false);
    let mut last: Option<ClusterView> = None;
    loop {
        // Nothing changed for a while: the last status again (for the quiet-minute line).
        let v = match changes.next(client).await? {
            Some(v) => v,
            None => match last.take() {
                Some(v) => v,
                None => continue,
            },
        };
        for s in &v.steps {
            let key = format!("{}#{}", s.state, s.attempt);
            if seen.get(&s.id) != Some(&key) && s.state != StepState::Pending {
                last_change = Instant::now();
                eprintln!(
                    "[{:>6.1}s] {:<14} {:<12} {}{}",
                    start.elapsed().as_secs_f64(),
                    s.host,
                    s.kind,
                    s.state,
                    s.exit_code
                        .filter(|c| *c != 0)
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default()
                );
                seen.insert(s.id, key);
            }
        }
        if Some(v.phase) != last_phase {
            eprintln!(
                "[{:>6.1}s] cluster {} is {}",
                start.elapsed().as_secs_f64(),
                v.name,
                v.phase
            );
            last_phase = Some(v.phase);
        }
        // A quiet minute: say what is still awaited (a host that stopped answering shows
        // here until its step is declared lost).
        if last_change.elapsed() >= Duration::from_secs(60) {
            let line = waiting_for(&v);
            if !line.is_empty() {
                eprintln!(
                    "[{:>6.1}s] still waiting for {line}",
                    start.elapsed().as_secs_f64()
                );
            }
            last_change = Instant::now();
        }
        let done = matches!(
            v.phase,
            ClusterPhase::Running | ClusterPhase::Failed | ClusterPhase::ResetFailed
        );
        if done && until_done {
            return finish(v, out);
        }
        last = Some(v);
    }
}

/// How long the controller holds one status request waiting for a change.
const STATUS_WAIT_SECS: u64 = 20;

/// A cluster's status as it changes: each call returns it as soon as it differs from the
/// last one returned (the controller holds the request until then, see
/// `GET /v1/clusters/{name}?wait=`), or `None` when nothing changed for a while. `T` is
/// `ClusterView`, or `ClusterSummary` with `summary`.
struct StatusChanges<T> {
    name: String,
    query: StatusQuery,
    etag: Option<String>,
    _answer: std::marker::PhantomData<T>,
}

impl<T: TryFrom<ClusterStatus, Error = &'static str>> StatusChanges<T> {
    fn new(name: &str, summary: bool) -> Self {
        StatusChanges {
            name: name.to_string(),
            query: StatusQuery {
                wait: STATUS_WAIT_SECS,
                summary,
                ..StatusQuery::default()
            },
            etag: None,
            _answer: std::marker::PhantomData,
        }
    }

    async fn next(&mut self, client: &Client) -> Result<Option<T>> {
        let hold = Duration::from_secs(STATUS_WAIT_SECS);
        match client
            .fetch_changed::<routes::ClusterStatus>(
                &[&self.name],
                &self.query,
                self.etag.as_deref(),
                hold,
            )
            .await?
        {
            None => Ok(None),
            Some((v, tag)) => {
                // A controller (or proxy) that does not hold the request answers at once,
                // without an ETag or with the one sent: ask again in half a second.
                if tag.is_none() || tag == self.etag {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                self.etag = tag;
                Ok(Some(T::try_from(v).map_err(anyhow::Error::msg)?))
            }
        }
    }
}

/// Steps beyond which a watch prints the cluster's progress (step counts by state) instead
/// of a line per step, and follows the summary instead of every step's status.
const LARGE_CLUSTER_STEPS: usize = 200;

/// `BERTH_PROGRESS`: `summary` (step counts) or `steps` (a line per step); `None` when
/// unset (step counts above [`LARGE_CLUSTER_STEPS`] steps). Commands that change a cluster
/// and then watch it read it first, so a bad value changes nothing.
fn progress_choice() -> Result<Option<bool>> {
    match std::env::var("BERTH_PROGRESS").as_deref() {
        Ok("summary") => Ok(Some(true)),
        Ok("steps") => Ok(Some(false)),
        Ok("") | Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(other) => bail!("BERTH_PROGRESS={other}: use `summary` or `steps`"),
        Err(e) => bail!("BERTH_PROGRESS: {e}"),
    }
}

/// Whether a watch of `name` follows its summary: as `choice` (`BERTH_PROGRESS`) says, else
/// when it has more than [`LARGE_CLUSTER_STEPS`] steps, decided from the step counts without
/// reading every step once.
async fn follows_summary(client: &Client, name: &str, choice: Option<bool>) -> Result<bool> {
    if let Some(s) = choice {
        return Ok(s);
    }
    let s = summary_of(client, name).await?;
    Ok(s.steps.values().sum::<u64>() > LARGE_CLUSTER_STEPS as u64)
}

/// A cluster's status with every step.
pub(crate) async fn status_of(
    client: &Client,
    name: &str,
    show_outputs: bool,
) -> Result<ClusterView> {
    let q = StatusQuery {
        show_outputs,
        ..StatusQuery::default()
    };
    let s = client.fetch::<routes::ClusterStatus>(&[name], &q).await?;
    ClusterView::try_from(s).map_err(anyhow::Error::msg)
}

/// A cluster's summary: members and step counts.
async fn summary_of(client: &Client, name: &str) -> Result<ClusterSummary> {
    let q = StatusQuery {
        summary: true,
        ..StatusQuery::default()
    };
    let s = client.fetch::<routes::ClusterStatus>(&[name], &q).await?;
    ClusterSummary::try_from(s).map_err(anyhow::Error::msg)
}

/// Every cluster.
async fn clusters(client: &Client) -> Result<Vec<ClusterSummary>> {
    client.fetch::<routes::ClusterList>(&[], &NoQuery {}).await
}

/// Prints the final status; Ok only when the cluster is Running.
fn finish(v: ClusterView, out: Format) -> Result<()> {
    print_status(&v, out)?;
    if v.phase != ClusterPhase::Running {
        bail!(
            "cluster {} failed: {}\n{}",
            v.name,
            v.message.clone().unwrap_or_default(),
            next_steps(&v)
        );
    }
    Ok(())
}

/// What to do about a failed cluster: read the failed step's log, fix, retry (or roll an
/// upgrade back).
fn next_steps(v: &ClusterView) -> String {
    let failed = v
        .steps
        .iter()
        .find(|s| matches!(s.state, StepState::Failed | StepState::Interrupted));
    let logs = match failed {
        Some(s) => format!("berth logs {} --host {} --step {}", v.name, s.host, s.kind),
        None => format!("berth status {}", v.name),
    };
    format!(
        "next: see why with `{logs}`, fix the cause (the host, the bundle or the Clusterfile), then `berth retry {} --wait` to resume from the failed step (an upgrade can instead be undone with `berth rollback {}`)",
        v.name, v.name
    )
}

/// `watch` for a large cluster: a progress line whenever the step counts change; the full
/// status once at the end.
async fn watch_summary(
    client: &Client,
    name: &str,
    until_done: bool,
    out: Format,
    start: Instant,
) -> Result<()> {
    let mut changes = StatusChanges::<ClusterSummary>::new(name, true);
    let mut last: Option<ClusterSummary> = None;
    let mut last_change = Instant::now();
    loop {
        let v = match changes.next(client).await? {
            Some(v) => v,
            None => match last.clone() {
                Some(v) => v,
                None => continue,
            },
        };
        let moved = last
            .as_ref()
            .is_none_or(|l| l.steps != v.steps || l.phase != v.phase);
        let done = matches!(
            v.phase,
            ClusterPhase::Running | ClusterPhase::Failed | ClusterPhase::ResetFailed
        );
        if moved || last_change.elapsed() >= Duration::from_secs(60) {
            eprintln!(
                "[{:>6.1}s] cluster {} is {}: {}",
                start.elapsed().as_secs_f64(),
                v.name,
                v.phase,
                step_counts(&v.steps)
            );
            last_change = Instant::now();
        }
        if done && until_done {
            return finish(status_of(client, name, false).await?, out);
        }
        last = Some(v);
    }
}

/// The steps a cluster waits for, e.g. `clean on n1 (released), install on n2 (running)`;
/// past ten, their count.
fn waiting_for(v: &ClusterView) -> String {
    const SHOWN: usize = 10;
    let waiting: Vec<String> = v
        .steps
        .iter()
        .filter(|s| s.state.is_active() || s.state == StepState::Pending)
        .map(|s| format!("{} on {} ({})", s.kind, s.host, s.state))
        .collect();
    let mut line = waiting[..waiting.len().min(SHOWN)].join(", ");
    if waiting.len() > SHOWN {
        line.push_str(&format!(" and {} more", waiting.len() - SHOWN));
    }
    line
}

pub fn print_status(v: &ClusterView, out: Format) -> Result<()> {
    if out != Format::Table {
        return output::print(out, v, &[], Vec::new);
    }
    println!(
        "cluster {}: {} (generation {})",
        v.name, v.phase, v.generation
    );
    if let Some(m) = &v.message {
        println!("  {m}");
    }
    output::print(
        Format::Table,
        v,
        &["HOST", "STEP", "STATE", "ATTEMPT", "EXIT", "ELAPSED"],
        || {
            v.steps
                .iter()
                .map(|s| {
                    vec![
                        s.host.clone(),
                        s.kind.to_string(),
                        s.state.to_string(),
                        s.attempt.to_string(),
                        s.exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.elapsed_secs
                            .map(|e| format!("{e}s"))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect()
        },
    )?;
    if !v.outputs.is_empty() {
        let shown: Vec<String> = v
            .outputs
            .iter()
            .map(|(k, val)| match val {
                Some(x) => format!("{k}={x}"),
                None => k.clone(),
            })
            .collect();
        println!("outputs: {}", shown.join(" "));
    }
    if matches!(v.phase, ClusterPhase::Failed | ClusterPhase::ResetFailed) {
        if let Some(s) = v
            .steps
            .iter()
            .find(|s| matches!(s.state, StepState::Failed | StepState::Interrupted))
        {
            println!("--- log tail of {} on {} ---", s.kind, s.host);
            println!("{}", s.log_tail.as_deref().unwrap_or("").trim_end());
        }
    }
    Ok(())
}

pub async fn status(
    target: &Target,
    name: Option<String>,
    watch_it: bool,
    show_outputs: bool,
    out: Format,
) -> Result<()> {
    let client = Client::connect(target)?;
    let name = match name {
        Some(n) => n,
        None => {
            let all = clusters(&client).await?;
            match all.len() {
                0 => bail!(
                    "no clusters; create one with `berth apply -f Clusterfile` or `berth run`"
                ),
                1 => all[0].name.clone(),
                _ => return list(target, out, false).await,
            }
        }
    };
    if watch_it {
        return watch(&client, &name, true, out).await;
    }
    let v = status_of(&client, &name, show_outputs).await?;
    print_status(&v, out)
}

/// Host names for a table cell: all of a small cluster, the first few and the count of a
/// large one (`-o json` has them all).
fn host_list(hosts: &[String]) -> String {
    const SHOWN: usize = 5;
    let names = hosts[..hosts.len().min(SHOWN)].join(",");
    match hosts.len() {
        n if n <= SHOWN => names,
        n => format!("{names},… ({n} hosts)"),
    }
}

/// Step counts for a table cell, e.g. `3 succeeded, 1 running`.
fn step_counts(steps: &BTreeMap<StepState, u64>) -> String {
    if steps.is_empty() {
        return "-".into();
    }
    steps
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `berth get clusters [--watch]`.
pub async fn list(target: &Target, out: Format, watch: bool) -> Result<()> {
    let client = Client::connect(target)?;
    const HEADER: &[&str] = &["NAME", "PHASE", "HOSTS", "STEPS", "GENERATION"];
    let rows = |all: &Vec<ClusterSummary>| {
        all.iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.phase.to_string(),
                    host_list(&c.hosts),
                    step_counts(&c.steps),
                    c.generation.to_string(),
                ]
            })
            .collect()
    };
    if watch {
        let key = |all: &Vec<ClusterSummary>| serde_json::to_string(all).unwrap_or_default();
        return output::watch(out, HEADER, || clusters(&client), rows, key).await;
    }
    let all = clusters(&client).await?;
    output::print(out, &all, HEADER, || rows(&all))
}

pub async fn logs(
    target: &Target,
    name: &str,
    host: &str,
    step: Option<&str>,
    follow: bool,
) -> Result<()> {
    let client = Client::connect(target)?;
    let v = status_of(&client, name, false).await?;
    if !v.hosts.iter().any(|h| h.name == host) && !v.steps.iter().any(|s| s.host == host) {
        let names: Vec<&str> = v.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!(
            "no host `{host}` in cluster `{name}` (its hosts: {})",
            names.join(", ")
        );
    }
    if step.is_none() && !follow {
        // Every started step of the host, in the order they ran.
        let steps: Vec<&StepView> = v
            .steps
            .iter()
            .filter(|s| s.host == host && s.state != StepState::Pending)
            .collect();
        if steps.is_empty() {
            eprintln!("no step has started on {host} yet");
        }
        for s in steps {
            let how = match s.exit_code {
                Some(c) => format!("{}, exit {c}", s.state),
                None => s.state.to_string(),
            };
            println!("==> {} on {host} (attempt {}, {how})", s.kind, s.attempt);
            let (mut from, mut last) = (0u64, '\n');
            loop {
                let q = LogQuery {
                    host: host.to_string(),
                    id: Some(s.id),
                    from,
                    ..LogQuery::default()
                };
                let c = client.fetch::<routes::ClusterLogs>(&[name], &q).await?;
                print!("{}", c.data);
                last = c.data.chars().last().unwrap_or(last);
                from = c.next;
                if !c.more {
                    break;
                }
            }
            if last != '\n' {
                println!();
            }
        }
        return Ok(());
    }
    let mut from = 0u64;
    loop {
        let q = LogQuery {
            host: host.to_string(),
            step: step.map(str::to_string),
            from,
            ..LogQuery::default()
        };
        let c: LogChunk = match client.fetch::<routes::ClusterLogs>(&[name], &q).await {
            Ok(c) => c,
            // With -f, wait for the step to start.
            Err(e) if follow && crate::client::api_code(&e) == Some(codes::NOT_FOUND) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !c.data.is_empty() {
            use std::io::Write;
            print!("{}", c.data);
            let _ = std::io::stdout().flush();
        }
        from = c.next;
        if c.more {
            continue;
        }
        let finished = !c.state.is_active() && c.state != StepState::Pending;
        if !follow || (finished && c.data.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn retry(target: &Target, name: &str, wait: bool, out: Format) -> Result<()> {
    if wait {
        progress_choice()?;
    }
    let client = Client::connect(target)?;
    let r: RetryResponse = client
        .fetch::<routes::ClusterRetry>(&[name], &NoQuery {})
        .await?;
    eprintln!("retrying {} step(s) of {name}", r.retried_steps);
    if wait {
        watch(&client, name, true, out).await
    } else {
        Ok(())
    }
}

pub async fn rollback(target: &Target, name: &str, wait: bool, out: Format) -> Result<()> {
    if wait {
        progress_choice()?;
    }
    let client = Client::connect(target)?;
    let r = client
        .fetch::<routes::ClusterRollback>(&[name], &NoQuery {})
        .await?;
    eprintln!(
        "rolling back {name}: `rollback` runs on {} host(s), in the reverse of the upgrade's order",
        r.hosts
    );
    if wait {
        watch(&client, name, true, out).await
    } else {
        Ok(())
    }
}

pub async fn reset(target: &Target, name: &str, force: bool, wait: bool) -> Result<()> {
    let client = Client::connect(target)?;
    // Decided before the reset is sent, so a bad BERTH_PROGRESS changes nothing.
    let summary = wait && follows_summary(&client, name, progress_choice()?).await?;
    // Where the event log stands: hosts a forced reset skips later are told from it.
    let mark = match wait {
        true => crate::events_cmd::fetch(&client, Some(name), 0, 1, true)
            .await?
            .last()
            .map_or(0, |e| e.id),
        false => 0,
    };
    let r: ResetResponse = client
        .send::<routes::ClusterReset>(&[name], &NoQuery {}, &ResetRequest { force })
        .await?;
    eprintln!("resetting cluster {name}: clean hooks run on every host");
    for h in &r.skipped {
        eprintln!("warning: clean skipped on host {h} (it does not answer, or its clean failed); clean it by hand");
    }
    if !wait {
        return Ok(());
    }
    let start = Instant::now();
    let mut last = String::new();
    // A large cluster: its step counts; else the steps the reset waits for.
    let mut counts = StatusChanges::<ClusterSummary>::new(name, true);
    let mut steps = StatusChanges::<ClusterView>::new(name, false);
    let mut skipped: std::collections::BTreeSet<String> = r.skipped.iter().cloned().collect();
    loop {
        let next = match summary {
            true => counts.next(&client).await.map(|v| {
                v.map(|v| {
                    let line = format!("cluster {name} is {}: {}", v.phase, step_counts(&v.steps));
                    (v.phase, Some(line))
                })
            }),
            false => steps.next(&client).await.map(|v| {
                v.map(|v| {
                    // A forced reset skips hosts that stop answering on the way: say so.
                    for s in &v.steps {
                        let reason = s.reason.as_deref().unwrap_or("");
                        if s.kind == StepKind::Clean
                            && s.state == StepState::Cancelled
                            && reason.starts_with("skipped")
                            && skipped.insert(s.host.clone())
                        {
                            eprintln!(
                                "warning: clean skipped on host {}: {reason}; clean it by hand",
                                s.host
                            );
                        }
                    }
                    let w = waiting_for(&v);
                    (v.phase, (!w.is_empty()).then(|| format!("waiting for {w}")))
                })
            }),
        };
        match next {
            Ok(Some((ClusterPhase::ResetFailed, _))) => {
                let v = status_of(&client, name, false).await?;
                print_status(&v, Format::Table)?;
                bail!(
                    "{}",
                    v.message
                        .unwrap_or_else(|| format!("reset of {name} failed"))
                );
            }
            Ok(None) | Ok(Some((_, None))) => {}
            // Say what the reset waits for, once per change.
            Ok(Some((_, Some(line)))) => {
                if line != last {
                    eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                    last = line;
                }
            }
            Err(e) if crate::client::api_code(&e) == Some(codes::NOT_FOUND) => {
                for e in crate::events_cmd::fetch(&client, Some(name), mark, 1000, false).await? {
                    if let (true, Some(h)) = (e.kind == "skip", &e.host) {
                        if skipped.insert(h.clone()) {
                            eprintln!(
                                "warning: clean skipped on host {h}: {}; clean it by hand",
                                e.message
                            );
                        }
                    }
                }
                println!("cluster {name} reset and removed");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// `berth run`: the sealos-style shortcut.
pub struct RunArgs {
    pub bundles: Vec<String>,
    pub masters: Vec<String>,
    pub nodes: Vec<String>,
    pub cluster: String,
    pub env: Vec<String>,
    pub single: bool,
    pub out: Format,
}

pub async fn run(target: &Target, a: RunArgs) -> Result<()> {
    let client = Client::connect(target)?;
    let mut images = Vec::new();
    for b in &a.bundles {
        let p = PathBuf::from(b);
        if p.exists() {
            let r = crate::bundle_cmd::push_local(&client, &p).await?;
            images.push(r);
        } else {
            images.push(b.clone());
        }
    }
    let mut masters = a.masters.clone();
    if a.single {
        masters = vec![ensure_local_agent(target, &client).await?];
    }
    if masters.is_empty() {
        bail!("no hosts: pass --masters H,... (and --nodes H,...), or --single to install on this machine");
    }
    for e in &a.env {
        if !e.contains('=') {
            bail!("-e `{e}` is not KEY=VALUE");
        }
    }
    let text = run_clusterfile(&a.cluster, &masters, &a.nodes, &images, &a.env)?;
    apply_text(&client, &text, ApplyFlags::default(), true, a.out).await
}

/// The Clusterfile `berth run` applies (sealos `apps.sealos.io/v1beta1` `Cluster`), as
/// typed values serialised by the YAML library, so any value of `-e`, host or image
/// (quotes, `: `, `#`, newlines, leading spaces, unicode) arrives as given.
#[derive(serde::Serialize)]
struct RunCluster<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: RunMetadata<'a>,
    spec: RunSpec<'a>,
}

#[derive(serde::Serialize)]
struct RunMetadata<'a> {
    name: &'a str,
}

#[derive(serde::Serialize)]
struct RunSpec<'a> {
    hosts: Vec<RunHosts<'a>>,
    image: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
}

#[derive(serde::Serialize)]
struct RunHosts<'a> {
    ips: &'a [String],
    roles: [&'static str; 1],
}

fn run_clusterfile(
    cluster: &str,
    masters: &[String],
    nodes: &[String],
    images: &[String],
    env: &[String],
) -> Result<String> {
    let mut hosts = vec![RunHosts {
        ips: masters,
        roles: ["master"],
    }];
    if !nodes.is_empty() {
        hosts.push(RunHosts {
            ips: nodes,
            roles: ["node"],
        });
    }
    let doc = RunCluster {
        api_version: "apps.sealos.io/v1beta1",
        kind: "Cluster",
        metadata: RunMetadata { name: cluster },
        spec: RunSpec {
            hosts,
            image: images,
            env,
        },
    };
    serde_norway::to_string(&doc).context("cannot write the Clusterfile for `berth run`")
}

/// Enrolls and starts a local agent under `<data-dir>/local-agent` when there is none
/// running; returns its host name.
async fn ensure_local_agent(target: &Target, client: &Client) -> Result<String> {
    let dir = target.data_dir.join("local-agent");
    let agent_bin = std::env::current_exe()?
        .parent()
        .map(|p| p.join("berth-agent"))
        .context("cannot locate berth-agent")?;
    if !agent_bin.exists() {
        bail!(
            "--single needs berth-agent next to berth ({} is missing)",
            agent_bin.display()
        );
    }
    let name = "local".to_string();
    if !dir.join("identity/agent.json").exists() {
        let t: CreateTokenResponse = client
            .send::<routes::TokenCreate>(
                &[],
                &NoQuery {},
                &CreateTokenRequest {
                    reenroll: None,
                    ttl_secs: 600,
                    uses: 1,
                    description: Some("berth run --single".into()),
                },
            )
            .await?;
        let info_file = target.data_dir.join(crate::local::INFO_FILE);
        let info: crate::local::ControllerInfo =
            serde_json::from_slice(&std::fs::read(&info_file).with_context(|| {
                format!(
                    "no controller's data dir here ({} is missing)",
                    info_file.display()
                )
            })?)?;
        let out = std::process::Command::new(&agent_bin)
            .args([
                "join",
                "--controller",
                &info.local_url,
                "--token",
                &t.token,
                "--ca-hash",
                &t.ca_hash.to_string(),
                "--name",
                &name,
                "--data-dir",
            ])
            .arg(&dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "enrolling the local agent failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        eprintln!(
            "enrolled a local agent as host `{name}` (data in {})",
            dir.display()
        );
    }
    let pid_file = dir.join("agent.pid");
    let running = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if !running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let child = std::process::Command::new(&agent_bin)
            .args(["run", "--poll-wait", "10s", "--data-dir"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the local agent")?;
        std::fs::write(&pid_file, child.id().to_string())?;
        eprintln!(
            "started the local agent (pid {}, log {})",
            child.id(),
            dir.join("agent.log").display()
        );
    }
    let _ = std::io::stderr().is_terminal();
    Ok(name)
}

/// `berth add` / `berth delete`.
pub async fn edit_hosts(
    target: &Target,
    cluster: &str,
    masters: Vec<String>,
    nodes: Vec<String>,
    delete: bool,
    wait: bool,
    out: Format,
) -> Result<()> {
    if masters.is_empty() && nodes.is_empty() {
        bail!("name hosts with --masters H,... and/or --nodes H,...");
    }
    let client = Client::connect(target)?;
    let body = if delete {
        HostsEdit {
            remove: masters.iter().chain(nodes.iter()).cloned().collect(),
            ..HostsEdit::default()
        }
    } else {
        HostsEdit {
            add_masters: masters.to_vec(),
            add_nodes: nodes.to_vec(),
            remove: Vec::new(),
        }
    };
    if wait {
        progress_choice()?;
    }
    let r: ApplyResponse = client
        .send::<routes::ClusterHosts>(&[cluster], &NoQuery {}, &body)
        .await?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("applied cluster {}", r.name);
    if wait {
        watch(&client, &r.name, true, out).await
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::run_clusterfile;
    use berth_shared::clusterfile::Clusterfile;
    use std::collections::BTreeMap;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `berth run -e 'K=va"lue'` used to build the YAML with `format!`, which produced an
    /// invalid (or different) Clusterfile for values with quotes, `: `, `#` or newlines.
    #[test]
    fn run_env_values_with_yaml_syntax_round_trip_through_the_clusterfile() {
        let hostile = [
            ("QUOTE", "va\"lue: #x"),
            ("SINGLE", "it's 'quoted'"),
            ("COLON", "a: b"),
            ("HASH", "#not a comment"),
            ("NEWLINES", "line1\nline2\n\n"),
            ("CRLF", "a\r\nb"),
            ("LEADING", "   leading and trailing   "),
            ("DASH", "- item"),
            ("FLOW", "[a, b], {c: d}"),
            ("ANCHOR", "&a *a !tag |"),
            ("UNICODE", "héllo wörld ✓ 日本"),
            ("BOOLISH", "yes"),
            ("NULLISH", "~"),
            ("NUMBER", "010"),
            ("EMPTY", ""),
            ("EQUALS", "a=b=c"),
            ("BACKSLASH", "C:\\path\\x \\n"),
            ("TAB", "\tx\t"),
        ];
        let env: Vec<String> = hostile.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let text = run_clusterfile(
            "c1",
            &strings(&["m0", "10.0.0.1:22"]),
            &strings(&["n1"]),
            &strings(&["hello:v1", "hello-app:v1"]),
            &env,
        )
        .unwrap();
        let cf = Clusterfile::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let want: BTreeMap<String, String> = hostile
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(cf.env, want, "{text}");
        assert_eq!(cf.name, "c1");
        assert_eq!(cf.images, strings(&["hello:v1", "hello-app:v1"]));
        assert_eq!(cf.hosts.len(), 2);
        assert_eq!(cf.hosts[0].ips, strings(&["m0", "10.0.0.1"]));
        assert_eq!(cf.hosts[0].roles, strings(&["master"]));
        assert_eq!(cf.hosts[1].ips, strings(&["n1"]));
        assert_eq!(cf.hosts[1].roles, strings(&["node"]));
        assert!(cf.warnings.is_empty(), "{:?}", cf.warnings);
    }

    /// For ordinary input the document is the one `format!` used to write.
    #[test]
    fn run_clusterfile_for_plain_input_is_the_document_it_always_was() {
        let old = "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: hello\nspec:\n  hosts:\n  - ips: [\"m0\", \"m1\"]\n    roles: [master]\n  - ips: [\"n1\"]\n    roles: [node]\n  image: [\"hello:v1\", \"hello-app:v1\"]\n  env: [\"GREETING=bonjour\"]\n";
        let new = run_clusterfile(
            "hello",
            &strings(&["m0", "m1"]),
            &strings(&["n1"]),
            &strings(&["hello:v1", "hello-app:v1"]),
            &strings(&["GREETING=bonjour"]),
        )
        .unwrap();
        let parse = |t: &str| serde_norway::from_str::<serde_norway::Value>(t).unwrap();
        assert_eq!(parse(&new), parse(old), "{new}");
        // Without nodes and env there is no second group and no `env` key.
        let new =
            run_clusterfile("one", &strings(&["m0"]), &[], &strings(&["hello:v1"]), &[]).unwrap();
        let old = "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: one\nspec:\n  hosts:\n  - ips: [\"m0\"]\n    roles: [master]\n  image: [\"hello:v1\"]\n";
        assert_eq!(parse(&new), parse(old), "{new}");
    }
}
