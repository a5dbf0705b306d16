//! Runs the steps of verified plans: fetch/unpack/merge bundles, Configs, templates, hooks
//! with timeouts in their own process group, live log chunks, outputs, and a local journal
//! so a completed step never runs twice and an interrupted one is handled explicitly.

use crate::fetch::{unpack_all, Fetcher};
use crate::spool::Spool;
use anyhow::{anyhow, Context, Result};
use berth_bundle::config::{apply as apply_config, render_templates, Strategy};
use berth_bundle::Limits;
use berth_shared::api::{ReportEntry, StepReport};
use berth_shared::plan::{PlanBundle, PlanPayload, PlanStep};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Executor {
    pub data_dir: PathBuf,
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub spool: Arc<Spool>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Outcome {
    state: &'static str,
    exit_code: Option<i32>,
    reason: Option<String>,
    outputs: BTreeMap<String, String>,
}

impl Outcome {
    fn ok() -> Outcome {
        Outcome {
            state: "succeeded",
            exit_code: Some(0),
            reason: None,
            outputs: BTreeMap::new(),
        }
    }
    fn failed(reason: impl Into<String>, code: Option<i32>) -> Outcome {
        Outcome {
            state: "failed",
            exit_code: code,
            reason: Some(reason.into()),
            outputs: BTreeMap::new(),
        }
    }
}

/// The hook a step kind runs (distribute runs none).
fn hook_of(kind: &str) -> Option<&str> {
    match kind {
        "check" | "install" | "init" | "join-master" | "join-node" | "leave" | "remove"
        | "clean" => Some(kind),
        _ => None,
    }
}

impl Executor {
    fn journal(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    fn mark(&self, step: &PlanStep, what: &str, content: &str) -> Result<()> {
        let dir = self.journal();
        std::fs::create_dir_all(&dir)?;
        let p = dir.join(format!("{}-{}.{what}", step.id, step.attempt));
        let mut f = std::fs::File::create(&p)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn has(&self, step: &PlanStep, what: &str) -> bool {
        self.journal()
            .join(format!("{}-{}.{what}", step.id, step.attempt))
            .exists()
    }

    fn cluster_dir(&self, plan: &PlanPayload) -> PathBuf {
        self.data_dir.join("clusters").join(&plan.cluster)
    }

    /// Runs every step of the plan that the journal does not show as finished.
    pub async fn run_plan(&self, plan: &PlanPayload) -> Result<()> {
        for step in &plan.steps {
            if self.has(step, "end") {
                continue;
            }
            if self.has(step, "start") {
                let rerunnable = match hook_of(&step.kind) {
                    None => true, // distribute/apps unpack into staging and rename: safe to redo
                    Some(h) => step
                        .bundles
                        .iter()
                        .filter(|b| b.manifest.hooks.contains_key(h))
                        .all(|b| b.manifest.rerunnable.iter().any(|r| r == h)),
                };
                let reason = if rerunnable {
                    "the agent stopped while this step ran; re-running it (declared re-runnable)"
                } else {
                    "the agent stopped while this step ran; it is not declared re-runnable, so it waits for `berth retry` after a check of the host"
                };
                tracing::warn!(step = step.id, kind = %step.kind, rerunnable, "interrupted step found");
                // A hook runs in its own process group and outlives a killed agent: stop it
                // before anything else happens to this step.
                let pg = self
                    .journal()
                    .join(format!("{}-{}.pgid", step.id, step.attempt));
                if let Some(pgid) = std::fs::read_to_string(&pg)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    if nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        tracing::warn!(pgid, "killed the hook the previous agent left running");
                    }
                }
                self.report(
                    step,
                    "interrupted",
                    None,
                    Some(reason.into()),
                    None,
                    None,
                    None,
                    BTreeMap::new(),
                )?;
                if !rerunnable {
                    self.mark(step, "end", "interrupted")?;
                    continue;
                }
            }
            self.run_step(plan, step).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        step: &PlanStep,
        state: &str,
        exit_code: Option<i32>,
        reason: Option<String>,
        started_at: Option<i64>,
        ended_at: Option<i64>,
        log_tail: Option<String>,
        outputs: BTreeMap<String, String>,
    ) -> Result<()> {
        self.spool.push(&ReportEntry::Step(StepReport {
            step_id: step.id,
            attempt: step.attempt,
            state: state.into(),
            exit_code,
            reason,
            started_at,
            ended_at,
            log_tail,
            outputs,
        }))
    }

    async fn run_step(&self, plan: &PlanPayload, step: &PlanStep) -> Result<()> {
        let cdir = self.cluster_dir(plan);
        let logs = cdir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}-{}-{}.log", step.id, step.attempt, step.kind));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)?;
        self.mark(step, "start", "")?;
        let started = now();
        self.report(
            step,
            "running",
            None,
            None,
            Some(started),
            None,
            None,
            BTreeMap::new(),
        )?;
        tracing::info!(cluster = %plan.cluster, step = step.id, kind = %step.kind, "step started");

        // Ship the log while the step runs.
        let stop = tokio_util::sync::CancellationToken::new();
        let shipper = tokio::spawn(ship_log(
            self.spool.clone(),
            log_path.clone(),
            step.id,
            step.attempt,
            stop.clone(),
        ));
        let outcome = match self.execute(plan, step, &cdir, &log).await {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(&log, "berth-agent: {e:#}");
                Outcome::failed(format!("{e:#}"), None)
            }
        };
        stop.cancel();
        let _ = shipper.await;
        let tail = tail_of(&log_path, 2048);
        self.mark(step, "end", outcome.state)?;
        self.report(
            step,
            outcome.state,
            outcome.exit_code,
            outcome.reason.clone(),
            Some(started),
            Some(now()),
            Some(tail),
            outcome.outputs,
        )?;
        tracing::info!(cluster = %plan.cluster, step = step.id, kind = %step.kind, state = outcome.state, "step finished");
        if step.kind == "leave" || step.kind == "clean" {
            // The log is shipped and the report spooled: nothing of the cluster stays here.
            std::fs::remove_dir_all(&cdir)
                .with_context(|| format!("cannot remove {}", cdir.display()))?;
        }
        Ok(())
    }

    async fn execute(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
    ) -> Result<Outcome> {
        std::fs::create_dir_all(cdir)?;
        let cf = cdir.join("Clusterfile");
        std::fs::write(&cf, &plan.clusterfile)?;
        let rootfs = cdir.join("rootfs");
        match step.kind.as_str() {
            "check" => {
                if std::env::consts::OS != "linux" {
                    return Ok(Outcome::failed("berth hosts must run Linux", None));
                }
                let check_dir = cdir.join(".check");
                self.materialize(step, &check_dir, log, false).await?;
                let out = self
                    .run_hooks(plan, step, &check_dir, "check", log, false)
                    .await;
                let _ = std::fs::remove_dir_all(&check_dir);
                out
            }
            "distribute" => {
                self.materialize(step, &rootfs, log, true).await?;
                Ok(Outcome::ok())
            }
            "leave" | "clean" => {
                let best = self
                    .run_hooks(plan, step, &rootfs, &step.kind, log, true)
                    .await?;
                writeln!(&*log, "berth-agent: removing {}", cdir.display())?;
                // Everything but the step log now; the log goes once it has been shipped.
                for e in std::fs::read_dir(cdir)? {
                    let p = e?.path();
                    if p.file_name().is_some_and(|n| n == "logs") {
                        continue;
                    }
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(best)
            }
            "apps" => self.run_apps(plan, step, cdir, log).await,
            kind => {
                self.ensure_rootfs(step, &rootfs, log).await?;
                self.run_hooks(plan, step, &rootfs, kind, log, false).await
            }
        }
    }

    /// Fetches the step's bundles and overlays them into `dest` (atomically), applying
    /// Configs and templates when `configure`.
    async fn materialize(
        &self,
        step: &PlanStep,
        dest: &Path,
        log: &std::fs::File,
        configure: bool,
    ) -> Result<()> {
        let mut blobs = Vec::new();
        for b in &step.bundles {
            writeln!(
                &*log,
                "berth-agent: fetching {} ({})",
                b.reference, b.digest
            )?;
            blobs.push(self.fetcher.fetch(&b.digest).await?);
        }
        let limits = self.limits;
        let dest = dest.to_path_buf();
        let configs = step.configs.clone();
        let refs: Vec<String> = step.bundles.iter().map(|b| b.reference.clone()).collect();
        let env = self.env_for(step, None, Path::new(""), Path::new(""), Path::new(""));
        let digests: Vec<String> = step.bundles.iter().map(|b| b.digest.to_string()).collect();
        let log = log.try_clone()?;
        tokio::task::spawn_blocking(move || -> Result<()> {
            unpack_all(&blobs, &dest, &limits, |staging| {
                if configure {
                    for c in &configs {
                        if c.matches.as_ref().is_some_and(|m| !refs.contains(m)) {
                            continue;
                        }
                        let strategy = Strategy::parse(&c.strategy)
                            .ok_or_else(|| anyhow!("unknown Config strategy `{}`", c.strategy))?;
                        apply_config(staging, &c.path, strategy, &c.data)?;
                        writeln!(
                            &log,
                            "berth-agent: applied Config {} ({})",
                            c.path, c.strategy
                        )?;
                    }
                    for f in render_templates(staging, &env)? {
                        writeln!(&log, "berth-agent: rendered {f}")?;
                    }
                }
                std::fs::write(staging.join(".berth-digests"), digests.join("\n"))?;
                Ok(())
            })?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// Re-distributes when the rootfs is missing or was built from other bundles (e.g. a
    /// corrected bundle was pushed and the cluster re-applied).
    async fn ensure_rootfs(
        &self,
        step: &PlanStep,
        rootfs: &Path,
        log: &std::fs::File,
    ) -> Result<()> {
        let want: Vec<String> = step.bundles.iter().map(|b| b.digest.to_string()).collect();
        let have = std::fs::read_to_string(rootfs.join(".berth-digests")).unwrap_or_default();
        if have != want.join("\n") {
            writeln!(
                &*log,
                "berth-agent: rootfs is missing or stale; distributing the bundles again"
            )?;
            self.materialize(step, rootfs, log, true).await?;
        }
        Ok(())
    }

    fn env_for(
        &self,
        step: &PlanStep,
        bundle: Option<&PlanBundle>,
        rootfs: &Path,
        outputs: &Path,
        clusterfile: &Path,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // Bundle env is the lowest precedence.
        for b in &step.bundles {
            if bundle.is_none_or(|x| x.digest == b.digest) {
                env.extend(b.manifest.env.clone());
            }
        }
        env.extend(step.env.clone());
        env.insert("BERTH_ROOTFS".into(), rootfs.display().to_string());
        env.insert("BERTH_OUTPUTS".into(), outputs.display().to_string());
        env.insert(
            "BERTH_CLUSTERFILE".into(),
            clusterfile.display().to_string(),
        );
        env
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_hooks(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        dir: &Path,
        hook: &str,
        log: &std::fs::File,
        best_effort: bool,
    ) -> Result<Outcome> {
        let cdir = self.cluster_dir(plan);
        let mut bundles: Vec<&PlanBundle> = step.bundles.iter().collect();
        if hook == "clean" {
            bundles.reverse();
        }
        let mut outcome = Outcome::ok();
        for b in bundles {
            let Some(script) = b.manifest.hooks.get(hook) else {
                continue;
            };
            let outputs = cdir.join(format!("outputs-{}-{}", step.id, step.attempt));
            let _ = std::fs::remove_file(&outputs);
            std::fs::File::create(&outputs)?;
            let env = self.env_for(step, Some(b), dir, &outputs, &cdir.join("Clusterfile"));
            writeln!(
                &*log,
                "berth-agent: running {hook} of {} ({script})",
                b.reference
            )?;
            let timeout = b.manifest.timeout(hook);
            let pg = self
                .journal()
                .join(format!("{}-{}.pgid", step.id, step.attempt));
            let res = run_command(
                dir,
                &dir.join(script.as_str()),
                &[],
                &env,
                log,
                timeout,
                &pg,
            )
            .await?;
            match res {
                Ok(()) => {
                    let text = std::fs::read_to_string(&outputs).unwrap_or_default();
                    outcome.outputs.extend(parse_outputs(&text));
                }
                Err(o) => {
                    if best_effort {
                        writeln!(
                            &*log,
                            "berth-agent: {hook} failed ({}); continuing (best effort)",
                            o.reason.clone().unwrap_or_default()
                        )?;
                        outcome = o;
                        continue;
                    }
                    return Ok(o);
                }
            }
        }
        Ok(outcome)
    }

    async fn run_apps(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
    ) -> Result<Outcome> {
        let mut outcome = Outcome::ok();
        for b in &step.bundles {
            let name = b.manifest.name.replace('/', "_");
            let dir = cdir.join("apps").join(&name);
            let one = PlanStep {
                bundles: vec![b.clone()],
                ..step.clone()
            };
            self.materialize(&one, &dir, log, true).await?;
            let Some((cmd, args)) = b.manifest.cmd.split_first() else {
                continue;
            };
            let outputs = cdir.join(format!("outputs-{}-{}", step.id, step.attempt));
            std::fs::File::create(&outputs)?;
            let env = self.env_for(
                step,
                Some(b),
                &cdir.join("rootfs"),
                &outputs,
                &cdir.join("Clusterfile"),
            );
            writeln!(&*log, "berth-agent: running app {} ({cmd})", b.reference)?;
            let program = if cmd.contains('/') {
                dir.join(cmd)
            } else {
                PathBuf::from(cmd)
            };
            let pg = self
                .journal()
                .join(format!("{}-{}.pgid", step.id, step.attempt));
            match run_command(
                &dir,
                &program,
                args,
                &env,
                log,
                b.manifest.timeout("cmd"),
                &pg,
            )
            .await?
            {
                Ok(()) => outcome.outputs.extend(parse_outputs(
                    &std::fs::read_to_string(&outputs).unwrap_or_default(),
                )),
                Err(o) => return Ok(o),
            }
        }
        let _ = plan;
        Ok(outcome)
    }
}

/// Runs a script with `/bin/sh` (or directly when it is executable with a shebang) in its
/// own process group; on timeout the whole group is killed.
async fn run_command(
    cwd: &Path,
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    log: &std::fs::File,
    timeout: Duration,
    pgid_file: &Path,
) -> Result<std::result::Result<(), Outcome>> {
    use std::os::unix::fs::PermissionsExt;
    let direct = std::fs::metadata(program)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
        && std::fs::File::open(program)
            .and_then(|mut f| {
                let mut b = [0u8; 2];
                f.read_exact(&mut b).map(|_| &b == b"#!")
            })
            .unwrap_or(false);
    let mut cmd = if direct || !program.is_absolute() {
        tokio::process::Command::new(program)
    } else {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg(program);
        c
    };
    cmd.args(args)
        .current_dir(cwd)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id();
    if let Some(p) = pid {
        // The group id equals the child's pid (process_group(0)); kept so a restarted agent
        // can stop a hook orphaned by a crash.
        let _ = std::fs::write(pgid_file, p.to_string());
    }
    tokio::select! {
        st = child.wait() => {
            let st = st?;
            if st.success() {
                Ok(Ok(()))
            } else {
                let code = st.code();
                Ok(Err(Outcome::failed(
                    match code { Some(c) => format!("exited with code {c}"), None => "killed by a signal".into() },
                    code,
                )))
            }
        }
        _ = tokio::time::sleep(timeout) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            writeln!(&*log, "berth-agent: timed out after {timeout:?}; killed the process group")?;
            Ok(Err(Outcome::failed("timeout", None)))
        }
    }
}

/// `KEY=VALUE` lines; blank lines and `#` comments are skipped.
pub fn parse_outputs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tail_of(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Spools new bytes of the log every 300 ms, and once more when stopped.
async fn ship_log(
    spool: Arc<Spool>,
    path: PathBuf,
    step_id: i64,
    attempt: u32,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut offset = 0u64;
    loop {
        let done = stop.is_cancelled();
        if let Ok(mut f) = std::fs::File::open(&path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                let _ = Read::by_ref(&mut f).take(64 * 1024).read_to_end(&mut buf);
                // Cut at a UTF-8 boundary so chunks concatenate to the original text.
                let valid = match std::str::from_utf8(&buf) {
                    Ok(_) => buf.len(),
                    Err(e) => {
                        e.valid_up_to()
                            .max(if buf.len() > 60 * 1024 { buf.len() } else { 0 })
                    }
                };
                if valid > 0 {
                    let data = String::from_utf8_lossy(&buf[..valid]).into_owned();
                    if spool
                        .push(&ReportEntry::Log {
                            step_id,
                            attempt,
                            offset,
                            data,
                        })
                        .is_ok()
                    {
                        offset += valid as u64;
                    }
                    if valid == 64 * 1024 {
                        continue;
                    }
                }
            }
        }
        if done {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}
