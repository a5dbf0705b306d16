//! Runs the steps of verified plans: fetch/unpack/merge bundles, Configs, templates, hooks
//! with timeouts in their own process group, live log chunks, outputs, and a local journal
//! so a completed step never runs twice and an interrupted one is handled explicitly.
//!
//! **Exactly once.** Each hook runs under a tiny `/bin/sh` wrapper in the hook's own process
//! group. The wrapper first claims the hook (an `O_EXCL` create, `set -C`), records its
//! process group, runs the hook and writes the exit status to the journal. All of that
//! outlives the agent: a restarted agent finds the status (the real result), or a live
//! process group (it waits for it), or a claim whose process is gone without a status (the
//! hook was cut short: re-run only when declared re-runnable). Two wrappers can never both
//! run a hook: the second loses the claim.

use crate::fetch::{Fetcher, Staging};
use crate::now_unix;
use crate::spool::Spool;
use anyhow::{anyhow, Context, Result};
use berth_bundle::config::{apply as apply_config, render_templates, Strategy};
use berth_bundle::Limits;
use berth_files::write_durable;
use berth_shared::api::{ReportEntry, StepReport};
use berth_shared::bundle::BundleType;
use berth_shared::plan::{ClusterContext, ContextRef, PlanBundle, PlanPayload, PlanStep};
use berth_shared::state::{StepKind, StepState};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// In a cluster's dir: the digests (hex, one a line) of the cached contexts it fetched.
const CONTEXTS_LIST: &str = "contexts.list";
/// Where the check step leaves the bundles it unpacked, for distribute to promote.
const STAGED_DIR: &str = ".staged";
/// In a rootfs (or staged tree): the digests of the bundles it was built from, one a line.
const DIGESTS_FILE: &str = ".berth-digests";

fn digests_of(step: &PlanStep) -> String {
    step.bundles
        .iter()
        .map(|b| b.digest.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the tree at `dir` was built from exactly the step's bundles.
fn built_from(dir: &Path, step: &PlanStep) -> bool {
    std::fs::read_to_string(dir.join(DIGESTS_FILE)).is_ok_and(|have| have == digests_of(step))
}

pub struct Executor {
    pub data_dir: PathBuf,
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub spool: Arc<Spool>,
    /// The running plan's cluster context: fetched the first time a step needs it.
    pub context: std::sync::Mutex<PlanContext>,
    /// Which step runs, and how steps ended (`--metrics-listen`).
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

/// The context a plan names, and where it is written for hooks.
#[derive(Default)]
pub struct PlanContext {
    named: Option<ContextRef>,
    cdir: PathBuf,
    loaded: Option<(ContextRef, Arc<ClusterContext>)>,
}

struct Outcome {
    state: StepState,
    exit_code: Option<i32>,
    reason: Option<String>,
    outputs: BTreeMap<String, String>,
}

impl Outcome {
    fn ok() -> Outcome {
        Outcome {
            state: StepState::Succeeded,
            exit_code: Some(0),
            reason: None,
            outputs: BTreeMap::new(),
        }
    }
    fn failed(reason: impl Into<String>, code: Option<i32>) -> Outcome {
        Outcome {
            state: StepState::Failed,
            exit_code: code,
            reason: Some(reason.into()),
            outputs: BTreeMap::new(),
        }
    }

    /// The step's outputs, all its bundles' together, held to the limits the controller
    /// holds them to: over them the step fails with the reason here, rather than its
    /// report being refused there (and the step left to time out).
    fn within_limits(self, log: &std::fs::File) -> Result<Outcome> {
        if self.state != StepState::Succeeded {
            return Ok(self);
        }
        match berth_shared::outputs::check(&self.outputs) {
            Ok(()) => Ok(self),
            Err(e) => {
                writeln!(
                    &*log,
                    "berth-agent: the step's outputs, all bundles together: {e}; the step fails and publishes nothing"
                )?;
                Ok(Outcome::failed(format!("outputs: {e}"), None))
            }
        }
    }
}

impl Executor {
    fn journal(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// The journal file `what` (start, end) of a step's attempt.
    fn journal_file(&self, step: &PlanStep, what: &str) -> PathBuf {
        self.journal()
            .join(format!("{}-{}.{what}", step.id, step.attempt))
    }

    fn mark(&self, step: &PlanStep, what: &str, content: &str) -> Result<()> {
        std::fs::create_dir_all(self.journal())?;
        write_durable(&self.journal_file(step, what), content.as_bytes(), 0o600)
    }

    fn has(&self, step: &PlanStep, what: &str) -> bool {
        self.journal_file(step, what).exists()
    }

    fn cluster_dir(&self, plan: &PlanPayload) -> PathBuf {
        self.data_dir.join("clusters").join(&plan.cluster)
    }

    /// Runs every step of the plan that the journal does not show as finished. A step
    /// started by an earlier agent process is resumed: hooks that finished are not run
    /// again (their recorded status is reported), a hook still running is waited for.
    pub async fn run_plan(&self, plan: &PlanPayload) -> Result<()> {
        {
            let mut c = self.context.lock().unwrap_or_else(|e| e.into_inner());
            c.named = plan.context;
            c.cdir = self.cluster_dir(plan);
        }
        for step in &plan.steps {
            if self.has(step, "end") {
                self.report_again(step);
                continue;
            }
            let resumed = self.has(step, "start");
            if resumed {
                tracing::warn!(step = step.id, kind = %step.kind, "resuming a step an earlier agent started");
            }
            self.run_step(plan, step, resumed).await?;
        }
        Ok(())
    }

    /// The journal file `what` (claim, pgid, status) of bundle `idx`'s hook in a step.
    fn hook_file(&self, step: &PlanStep, idx: usize, what: &str) -> PathBuf {
        self.journal_file(step, &format!("{idx}.{what}"))
    }

    /// A finished step is in a plan only when the controller lacks its result: a controller
    /// restored from a backup taken before the result arrived. The final report recorded
    /// at the end is sent again (the controller takes a repeat as a duplicate).
    fn report_again(&self, step: &PlanStep) {
        let Ok(text) = std::fs::read_to_string(self.journal_file(step, "end")) else {
            return;
        };
        let Ok(entry) = serde_json::from_str::<ReportEntry>(&text) else {
            return; // an end mark from before reports were recorded: nothing to resend
        };
        tracing::info!(
            step = step.id,
            "step finished earlier; sending its result again"
        );
        if let Err(e) = self.spool.push(&entry) {
            tracing::warn!(error = format!("{e:#}"), "cannot spool a repeated report");
        }
    }

    /// Spools a step report and returns it.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        step: &PlanStep,
        state: StepState,
        exit_code: Option<i32>,
        reason: Option<String>,
        started_at: Option<i64>,
        ended_at: Option<i64>,
        log_tail: Option<String>,
        outputs: BTreeMap<String, String>,
    ) -> Result<ReportEntry> {
        let entry = ReportEntry::Step(StepReport {
            step_id: step.id,
            attempt: step.attempt,
            state,
            exit_code,
            reason,
            started_at,
            ended_at,
            log_tail,
            outputs,
        });
        self.spool.push(&entry)?;
        Ok(entry)
    }

    async fn run_step(&self, plan: &PlanPayload, step: &PlanStep, resumed: bool) -> Result<()> {
        let cdir = self.cluster_dir(plan);
        let logs = cdir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}-{}-{}.log", step.id, step.attempt, step.kind));
        // A resumed step keeps its log: a hook that is still running writes to it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .mode(0o600)
            .open(&log_path)?;
        if !resumed {
            log.set_len(0)?;
        }
        let started = match std::fs::read_to_string(self.journal_file(step, "start"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            Some(t) if resumed => t,
            _ => {
                let t = now_unix();
                self.mark(step, "start", &t.to_string())?;
                t
            }
        };
        self.report(
            step,
            StepState::Running,
            None,
            None,
            Some(started),
            None,
            None,
            BTreeMap::new(),
        )?;
        tracing::info!(cluster = %plan.cluster, step = step.id, kind = %step.kind, resumed, "step started");
        self.metrics.step_started(step.kind.as_str());

        // Ship the log while the step runs (from the start: the controller skips what it has).
        let stop = tokio_util::sync::CancellationToken::new();
        let shipper = tokio::spawn(ship_log(
            self.spool.clone(),
            log_path.clone(),
            step.id,
            step.attempt,
            stop.clone(),
        ));
        let outcome = match self.execute(plan, step, &cdir, &log, started).await {
            Ok(o) => o,
            Err(e) if e.is::<crate::fetch::Superseded>() => {
                // Not an outcome: the newer plan resumes this step (its start mark stays).
                self.metrics.step_finished(step.kind.as_str(), "superseded");
                stop.cancel();
                let _ = shipper.await;
                return Err(e);
            }
            Err(e) => {
                let _ = writeln!(&log, "berth-agent: {e:#}");
                Outcome::failed(format!("{e:#}"), None)
            }
        };
        stop.cancel();
        let _ = shipper.await;
        let tail = tail_of(&log_path, 2048);
        // The final report is spooled before the journal says the step ended: a crash in
        // between re-reports the same result (the controller takes it as a duplicate).
        let final_report = self.report(
            step,
            outcome.state,
            outcome.exit_code,
            outcome.reason.clone(),
            Some(started),
            Some(now_unix()),
            Some(tail),
            outcome.outputs,
        )?;
        self.mark(step, "end", &serde_json::to_string(&final_report)?)?;
        tracing::info!(cluster = %plan.cluster, step = step.id, kind = %step.kind, state = %outcome.state, "step finished");
        self.metrics
            .step_finished(step.kind.as_str(), outcome.state.as_str());
        if step.kind == StepKind::Leave
            || (step.kind == StepKind::Clean && outcome.state == StepState::Succeeded)
        {
            // The log is shipped and the report spooled: nothing of the cluster stays here,
            // its cached contexts (Clusterfile, outputs) included.
            for hex in std::fs::read_to_string(cdir.join(CONTEXTS_LIST))
                .unwrap_or_default()
                .lines()
            {
                self.fetcher.forget_context(hex)?;
            }
            match std::fs::remove_dir_all(&cdir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", cdir.display()))
                }
            }
        }
        Ok(())
    }

    /// The cluster context of the running plan, fetched (and its Clusterfile written for
    /// hooks) the first time a step needs it: for hooks, Configs or templates. A plan of
    /// steps that need none of them (a bundle without hooks) never downloads it, so the
    /// context of a 20,000-host cluster is not sent to 20,000 hosts that do not read it.
    async fn context(&self) -> Result<Arc<ClusterContext>> {
        let (named, cdir, loaded) = {
            let c = self.context.lock().unwrap_or_else(|e| e.into_inner());
            (c.named, c.cdir.clone(), c.loaded.clone())
        };
        let named = named.context("the plan has steps but names no cluster context")?;
        let ctx = match loaded {
            Some((r, ctx)) if r == named => ctx,
            _ => {
                let ctx = Arc::new(self.fetcher.context(&named).await?);
                let mut c = self.context.lock().unwrap_or_else(|e| e.into_inner());
                c.loaded = Some((named, ctx.clone()));
                ctx
            }
        };
        // Which cached contexts are this cluster's, so removing the cluster removes them.
        let listed = cdir.join(CONTEXTS_LIST);
        let hex = named.digest.hex();
        let known = std::fs::read_to_string(&listed).unwrap_or_default();
        if !known.lines().any(|l| l == hex) {
            std::fs::create_dir_all(&cdir)?;
            write_durable(&listed, format!("{known}{hex}\n").as_bytes(), 0o600)?;
        }
        let file = cdir.join("Clusterfile");
        let fresh = std::fs::read(&file).is_ok_and(|b| b == ctx.clusterfile.as_bytes());
        if !fresh {
            std::fs::create_dir_all(&cdir)?;
            // The Clusterfile may hold secrets (kubeadm tokens, spec.env): 0600.
            write_durable(&file, ctx.clusterfile.as_bytes(), 0o600)?;
        }
        Ok(ctx)
    }

    fn context_has_configs(&self) -> bool {
        let c = self.context.lock().unwrap_or_else(|e| e.into_inner());
        c.named.is_some_and(|r| r.configs != Some(0))
    }

    async fn execute(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        std::fs::create_dir_all(cdir)?;
        let rootfs = cdir.join("rootfs");
        // Nothing built for another CPU is unpacked or run here (leave, clean and exec run
        // what the host already has).
        if !matches!(
            step.kind,
            StepKind::Leave | StepKind::Clean | StepKind::Exec
        ) {
            if let Some(why) = wrong_arch(step) {
                writeln!(&*log, "berth-agent: {why}")?;
                return Ok(Outcome::failed(why, None));
            }
        }
        // Every kind, each once: a new kind does not compile until it is handled here.
        match step.kind {
            StepKind::Check => {
                if std::env::consts::OS != "linux" {
                    return Ok(Outcome::failed("berth hosts must run Linux", None));
                }
                if !step
                    .bundles
                    .iter()
                    .any(|b| b.manifest.hooks.contains_key(hook_of(StepKind::Check)))
                {
                    // Nothing to run: distribute fetches and unpacks the bundles.
                    return Ok(Outcome::ok());
                }
                // The check hooks run from the unpacked bundles, which distribute then
                // promotes to the rootfs instead of unpacking them a second time.
                let staged = cdir.join(STAGED_DIR);
                self.materialize(step, &staged, log, false).await?;
                self.run_hooks(
                    plan,
                    step,
                    &staged,
                    hook_of(StepKind::Check),
                    log,
                    false,
                    started,
                )
                .await
            }
            StepKind::Distribute => {
                self.distribute(step, cdir, log).await?;
                Ok(Outcome::ok())
            }
            StepKind::Leave | StepKind::Clean => {
                if !rootfs.join(DIGESTS_FILE).exists() {
                    // Never distributed here (the host failed or was lost before): there is
                    // nothing of the bundles to run or to clean.
                    writeln!(
                        &*log,
                        "berth-agent: no rootfs on this host; nothing to {}",
                        step.kind
                    )?;
                    let _ = std::fs::remove_dir_all(&rootfs);
                    let _ = std::fs::remove_dir_all(cdir.join(STAGED_DIR));
                    return Ok(Outcome::ok());
                }
                let best = self
                    .run_hooks(plan, step, &rootfs, hook_of(step.kind), log, true, started)
                    .await?;
                if step.kind == StepKind::Clean && best.state != StepState::Succeeded {
                    // Keep the rootfs: `berth retry` runs clean again from it.
                    writeln!(
                        &*log,
                        "berth-agent: clean failed; keeping {} for a retry",
                        cdir.display()
                    )?;
                    return Ok(best);
                }
                writeln!(&*log, "berth-agent: removing {}", cdir.display())?;
                // Everything but the step log now; the log goes once it has been shipped.
                for e in std::fs::read_dir(cdir)? {
                    let p = e?.path();
                    // The log goes once shipped; the list of cached contexts once they are
                    // removed with the dir (after the step's report).
                    if p.file_name()
                        .is_some_and(|n| n == "logs" || n == CONTEXTS_LIST)
                    {
                        continue;
                    }
                    if p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("outputs-{}-", step.id)))
                    {
                        continue; // the result of this step's own hooks, read on a resume
                    }
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(best)
            }
            StepKind::Apps => self.run_apps(step, cdir, log, started).await,
            StepKind::Upgrade => self.upgrade(plan, step, cdir, log, started).await,
            StepKind::Rollback => self.rollback(plan, step, cdir, log, started).await,
            StepKind::Exec => self.exec(plan, step, cdir, log, started).await,
            StepKind::CleanApps => self.clean_apps(plan, step, cdir, log, started).await,
            kind @ (StepKind::Install
            | StepKind::Init
            | StepKind::JoinMaster
            | StepKind::JoinNode
            | StepKind::Remove) => {
                self.ensure_rootfs(step, &rootfs, log).await?;
                self.run_hooks(plan, step, &rootfs, hook_of(kind), log, false, started)
                    .await
            }
        }
    }

    /// Upgrades the host to a new rootfs generation: the new bundles are unpacked beside
    /// the current rootfs (`rootfs.next`), each changed bundle's `upgrade` hook (a new
    /// patch bundle's `install`) runs from there, then the host switches: the current
    /// rootfs becomes `rootfs.prev` (kept for a rollback), the new one `rootfs`.
    async fn upgrade(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        let g = Generations::of(cdir);
        if built_from(&g.current, step) {
            // A switch cut short after its exchange: the old tree is still at next.
            if g.next.exists() {
                g.keep_next_as_prev()?;
            }
            writeln!(&*log, "berth-agent: already on the new rootfs")?;
            return Ok(Outcome::ok());
        }
        if !built_from(&g.next, step) {
            writeln!(
                &*log,
                "berth-agent: unpacking the new rootfs beside the current one"
            )?;
            self.materialize(step, &g.next, log, true).await?;
        }
        let hooks: Vec<(usize, &PlanBundle, &str)> = step
            .bundles
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match previous_of(b, &step.from) {
                Some(old) if old.digest == b.digest => None,
                Some(_) => Some((i, b, hook_of(StepKind::Upgrade))),
                None => Some((i, b, hook_of(StepKind::Install))),
            })
            .collect();
        let env = moving_env(&step.from, &step.bundles, &g.current, &g.next);
        let outcome = self
            .run_selected(plan, step, &g.next, &hooks, &env, log, false, started)
            .await?;
        if outcome.state == StepState::Succeeded {
            g.switch_to_next()?;
            writeln!(
                &*log,
                "berth-agent: switched to the new rootfs; the previous one is kept as {}",
                g.prev.display()
            )?;
        }
        Ok(outcome)
    }

    /// The app bundles an apply took out: each one's `clean` hook runs in its own tree
    /// (`apps/<name>`, unpacked again if it is gone), in reverse order, then the tree goes.
    async fn clean_apps(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        for (idx, b) in step.bundles.iter().enumerate().rev() {
            let dir = app_dir(cdir, b);
            let hook = hook_of(StepKind::CleanApps);
            if b.manifest.hooks.contains_key(hook) {
                let one = PlanStep {
                    bundles: vec![b.clone()],
                    ..step.clone()
                };
                if !built_from(&dir, &one) && !self.hook_file(step, idx, "status").exists() {
                    self.materialize(&one, &dir, log, true).await?;
                }
                let outcome = self
                    .run_selected(
                        plan,
                        step,
                        &dir,
                        &[(idx, b, hook)],
                        &BTreeMap::new(),
                        log,
                        false,
                        started,
                    )
                    .await?;
                if outcome.state != StepState::Succeeded {
                    return Ok(outcome);
                }
            }
            if dir.exists() {
                writeln!(&*log, "berth-agent: removing {}", dir.display())?;
                std::fs::remove_dir_all(&dir)?;
            }
        }
        Ok(Outcome::ok())
    }

    /// Runs an operator's command (`berth exec`) once, without a shell, from the rootfs
    /// when the host has one, with the cluster's env; its output is the step's log.
    async fn exec(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        let exec = step
            .exec
            .as_ref()
            .filter(|e| !e.command.is_empty())
            .context("an exec step without a command")?;
        let rootfs = cdir.join("rootfs");
        let cwd = if rootfs.is_dir() {
            rootfs.clone()
        } else {
            cdir.to_path_buf()
        };
        let outputs = self
            .cluster_dir(plan)
            .join(format!("outputs-{}-{}-0", step.id, step.attempt));
        let ctx = self.context().await?;
        let env = self.env_for(
            &ctx,
            step,
            None,
            &rootfs,
            &outputs,
            &cdir.join("Clusterfile"),
        );
        let (cmd, args) = exec.command.split_first().expect("checked above");
        let program = PathBuf::from(cmd);
        let run = HookRun {
            step,
            idx: 0,
            bundle: None,
            hook: "exec",
            cwd: &cwd,
            program: &program,
            args,
            env: &env,
            outputs: &outputs,
            timeout: Duration::from_secs(exec.timeout_secs.max(1)),
            started,
        };
        Ok(match self.run_once(&run, log).await? {
            Ok(_) => Outcome::ok(),
            Err(o) => o,
        })
    }

    /// Turns a host back to the rootfs it had before an upgrade: each changed bundle's
    /// `rollback` hook runs from the generation being left (`step.from`), then the host
    /// switches back to the kept one (unpacked again if it is gone).
    async fn rollback(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        let g = Generations::of(cdir);
        let leaving = PlanStep {
            bundles: step.from.clone(),
            from: Vec::new(),
            ..step.clone()
        };
        // Where the generation being left is: switched to, unpacked beside, or (its
        // upgrade never got that far) unpacked now to run its rollback hooks.
        let new_dir = if built_from(&g.current, &leaving) {
            g.current.clone()
        } else {
            if !built_from(&g.next, &leaving) {
                self.materialize(&leaving, &g.next, log, true).await?;
            }
            g.next.clone()
        };
        let old_dir = if built_from(&g.current, step) {
            g.current.clone()
        } else {
            if !built_from(&g.prev, step) {
                writeln!(
                    &*log,
                    "berth-agent: the previous rootfs is gone; unpacking it again"
                )?;
                self.materialize(step, &g.prev, log, true).await?;
            }
            g.prev.clone()
        };
        let hooks: Vec<(usize, &PlanBundle, &str)> = leaving
            .bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| !step.bundles.iter().any(|o| o.digest == b.digest))
            .map(|(i, b)| (i, b, hook_of(StepKind::Rollback)))
            .rev()
            .collect();
        let env = moving_env(&leaving.bundles, &step.bundles, &new_dir, &old_dir);
        let outcome = self
            .run_selected(plan, &leaving, &new_dir, &hooks, &env, log, false, started)
            .await?;
        if outcome.state == StepState::Succeeded {
            g.switch_back(|d| built_from(d, &leaving), |d| built_from(d, step))?;
            writeln!(&*log, "berth-agent: back on the previous rootfs")?;
        }
        Ok(outcome)
    }

    /// Fetches the step's bundles and overlays them into `dest` (atomically), applying
    /// Configs and templates when `configure`. Each blob is unpacked while it streams in;
    /// `dest` is replaced only once every digest matched.
    async fn materialize(
        &self,
        step: &PlanStep,
        dest: &Path,
        log: &std::fs::File,
        configure: bool,
    ) -> Result<()> {
        let digests: Vec<_> = step.bundles.iter().map(|b| b.digest).collect();
        let (staging, unpacked) = self
            .fetcher
            .stage(&digests, dest, self.limits, |i| {
                let b = &step.bundles[i];
                writeln!(
                    &*log,
                    "berth-agent: fetching {} ({})",
                    b.reference, b.digest
                )?;
                Ok(())
            })
            .await?;
        let templates = unpacked.iter().any(|u| u.templates > 0);
        self.finish(step, staging, log, configure, templates).await
    }

    /// Applies Configs and templates (when `configure`) to a staged tree, marks it with the
    /// digests it was built from, and promotes it.
    async fn finish(
        &self,
        step: &PlanStep,
        staging: Staging,
        log: &std::fs::File,
        configure: bool,
        templates: bool,
    ) -> Result<()> {
        let configure = configure && (templates || self.context_has_configs());
        let (configs, env) = if configure {
            let ctx = self.context().await?;
            let env = self.env_for(
                &ctx,
                step,
                None,
                Path::new(""),
                Path::new(""),
                Path::new(""),
            );
            (ctx.configs.clone(), env)
        } else {
            Default::default()
        };
        let refs: Vec<String> = step.bundles.iter().map(|b| b.reference.clone()).collect();
        let digests = digests_of(step);
        let log = log.try_clone()?;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let dir = staging.path();
            if configure {
                for c in &configs {
                    if c.matches.as_ref().is_some_and(|m| !refs.contains(m)) {
                        continue;
                    }
                    let strategy = Strategy::parse(&c.strategy)
                        .ok_or_else(|| anyhow!("unknown Config strategy `{}`", c.strategy))?;
                    // Without `match` a Config goes to every image that has the file
                    // (sealos): a tree without it is not its target.
                    if c.matches.is_none()
                        && std::fs::symlink_metadata(dir.join(c.path.as_str())).is_err()
                    {
                        writeln!(
                            &log,
                            "berth-agent: Config {} ({}) skipped: no such file here, and it names no image",
                            c.path, c.strategy
                        )?;
                        continue;
                    }
                    apply_config(dir, &c.path, strategy, &c.data)?;
                    writeln!(
                        &log,
                        "berth-agent: applied Config {} ({})",
                        c.path, c.strategy
                    )?;
                }
                for f in render_templates(dir, &env)? {
                    writeln!(&log, "berth-agent: rendered {f}")?;
                }
            }
            std::fs::write(dir.join(DIGESTS_FILE), digests)?;
            staging.promote()
        })
        .await?
    }

    /// Distributes: promotes the tree the check step staged when it was built from the
    /// same bundles (Configs and templates are applied to it first), else fetches and
    /// unpacks the bundles.
    async fn distribute(&self, step: &PlanStep, cdir: &Path, log: &std::fs::File) -> Result<()> {
        let staged = cdir.join(STAGED_DIR);
        let rootfs = cdir.join("rootfs");
        if built_from(&staged, step) {
            writeln!(
                &*log,
                "berth-agent: using the bundles the check step unpacked"
            )?;
            let staging = Staging::new(&rootfs)?;
            std::fs::remove_dir(staging.path())?;
            std::fs::rename(&staged, staging.path())?;
            // Check hooks ran, so the context is at hand (cached): render what there is.
            return self.finish(step, staging, log, true, true).await;
        }
        if staged.exists() {
            std::fs::remove_dir_all(&staged)?;
        }
        self.materialize(step, &rootfs, log, true).await
    }

    /// Re-distributes when the rootfs is missing or was built from other bundles (e.g. a
    /// corrected bundle was pushed and the cluster re-applied).
    async fn ensure_rootfs(
        &self,
        step: &PlanStep,
        rootfs: &Path,
        log: &std::fs::File,
    ) -> Result<()> {
        if !built_from(rootfs, step) {
            writeln!(
                &*log,
                "berth-agent: rootfs is missing or stale; distributing the bundles again"
            )?;
            self.materialize(step, rootfs, log, true).await?;
        }
        Ok(())
    }

    /// A hook's env, lowest precedence first: the bundle's, the context's (outputs, then
    /// `spec.env`), the host's own from the plan, the cluster's `BERTH_*`, then the paths.
    fn env_for(
        &self,
        ctx: &ClusterContext,
        step: &PlanStep,
        bundle: Option<&PlanBundle>,
        rootfs: &Path,
        outputs: &Path,
        clusterfile: &Path,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for b in &step.bundles {
            if bundle.is_none_or(|x| x.digest == b.digest) {
                env.extend(b.manifest.env.clone());
            }
        }
        env.extend(ctx.env_around(&step.env));
        // The controller is the cluster's registry: where this host reaches it, and the CA
        // that signs its certificate (what containerd's hosts.toml needs).
        if let Ok(url) = reqwest::Url::parse(&self.fetcher.controller) {
            if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
                env.insert("BERTH_REGISTRY".into(), format!("{host}:{port}"));
            }
        }
        env.insert(
            "BERTH_REGISTRY_CA".into(),
            crate::identity::dir(&self.data_dir)
                .join("ca.crt")
                .display()
                .to_string(),
        );
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
        started: i64,
    ) -> Result<Outcome> {
        let mut bundles: Vec<(usize, &PlanBundle, &str)> = step
            .bundles
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b, hook))
            .collect();
        if hook == hook_of(StepKind::Clean) {
            bundles.reverse();
        }
        self.run_selected(
            plan,
            step,
            dir,
            &bundles,
            &BTreeMap::new(),
            log,
            best_effort,
            started,
        )
        .await
    }

    /// Runs each listed bundle's hook (by index in the step, so the journal keeps them
    /// apart) from `dir`, in the order given, with `extra` env on top.
    #[allow(clippy::too_many_arguments)]
    async fn run_selected(
        &self,
        plan: &PlanPayload,
        step: &PlanStep,
        dir: &Path,
        bundles: &[(usize, &PlanBundle, &str)],
        extra: &BTreeMap<String, String>,
        log: &std::fs::File,
        best_effort: bool,
        started: i64,
    ) -> Result<Outcome> {
        let cdir = self.cluster_dir(plan);
        let mut outcome = Outcome::ok();
        for &(idx, b, hook) in bundles {
            let Some(script) = b.manifest.hooks.get(hook) else {
                continue;
            };
            let outputs = cdir.join(format!("outputs-{}-{}-{idx}", step.id, step.attempt));
            let ctx = self.context().await?;
            let mut env = self.env_for(
                &ctx,
                step,
                Some(b),
                dir,
                &outputs,
                &cdir.join("Clusterfile"),
            );
            env.extend(extra.clone());
            let program = dir.join(script.as_str());
            let hook_run = HookRun {
                step,
                idx,
                bundle: Some(b),
                hook,
                cwd: dir,
                program: &program,
                args: &[],
                env: &env,
                outputs: &outputs,
                timeout: b.manifest.timeout(hook),
                started,
            };
            match self.run_once(&hook_run, log).await? {
                Ok(out) => outcome.outputs.extend(out),
                Err(o) => {
                    if best_effort && o.state == StepState::Failed {
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
        outcome.within_limits(log)
    }

    /// Runs the step's bundles' commands in Clusterfile order: an app bundle's in its own
    /// tree (`apps/<name>`, unpacked here), a rootfs or patch bundle's in the rootfs the
    /// install step left. `cmd` is a program and its arguments; sealos-style `commands`
    /// are `$(VAR)`-expanded from the env and run by `bash -c` as sealos's guest runs them
    /// (`cd <dir> && <command>`, joined by `; `).
    async fn run_apps(
        &self,
        step: &PlanStep,
        cdir: &Path,
        log: &std::fs::File,
        started: i64,
    ) -> Result<Outcome> {
        let mut outcome = Outcome::ok();
        let rootfs = cdir.join("rootfs");
        for (idx, b) in step.bundles.iter().enumerate() {
            if b.manifest.cmd.is_empty() && b.manifest.commands.is_empty() {
                continue;
            }
            let dir = if b.manifest.bundle_type == BundleType::App {
                let dir = app_dir(cdir, b);
                if !self.hook_file(step, idx, "status").exists() {
                    let one = PlanStep {
                        bundles: vec![b.clone()],
                        ..step.clone()
                    };
                    self.materialize(&one, &dir, log, true).await?;
                }
                dir
            } else {
                if !rootfs.is_dir() {
                    anyhow::bail!(
                        "the rootfs of {} is missing; its install step did not leave one",
                        b.reference
                    );
                }
                rootfs.clone()
            };
            let outputs = cdir.join(format!("outputs-{}-{}-{idx}", step.id, step.attempt));
            let ctx = self.context().await?;
            let env = self.env_for(
                &ctx,
                step,
                Some(b),
                &rootfs,
                &outputs,
                &cdir.join("Clusterfile"),
            );
            let (program, args) = if b.manifest.commands.is_empty() {
                let (cmd, args) = b.manifest.cmd.split_first().expect("checked above");
                let program = if cmd.contains('/') {
                    dir.join(cmd)
                } else {
                    PathBuf::from(cmd)
                };
                (program, args.to_vec())
            } else {
                let cd = format!(
                    "cd '{}' && ",
                    dir.display().to_string().replace('\'', "'\\''")
                );
                let script = b
                    .manifest
                    .commands
                    .iter()
                    .map(|c| {
                        cd.clone() + &berth_shared::text::expand_refs(c, |k| env.get(k).cloned())
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                (PathBuf::from("bash"), vec!["-c".to_string(), script])
            };
            let hook_run = HookRun {
                step,
                idx,
                bundle: Some(b),
                hook: hook_of(StepKind::Apps),
                cwd: &dir,
                program: &program,
                args: &args,
                env: &env,
                outputs: &outputs,
                timeout: b.manifest.timeout(hook_of(StepKind::Apps)),
                started,
            };
            match self.run_once(&hook_run, log).await? {
                Ok(out) => outcome.outputs.extend(out),
                Err(o) => return Ok(o),
            }
        }
        outcome.within_limits(log)
    }

    /// Runs one bundle's hook of a step exactly once across agent restarts (see the module
    /// doc). `Ok(outputs)` when it succeeded.
    async fn run_once(
        &self,
        h: &HookRun<'_>,
        log: &std::fs::File,
    ) -> Result<std::result::Result<BTreeMap<String, String>, Outcome>> {
        std::fs::create_dir_all(self.journal())?;
        let claim = self.hook_file(h.step, h.idx, "claim");
        let pgid_file = self.hook_file(h.step, h.idx, "pgid");
        let status = self.hook_file(h.step, h.idx, "status");
        let deadline = h.started + h.timeout.as_secs() as i64;
        let what = match h.bundle {
            Some(b) => format!("{} of {}", h.hook, b.reference),
            None => "the command".to_string(),
        };
        let code = if let Some(c) = read_status(&status) {
            writeln!(
                &*log,
                "berth-agent: {what} already finished (exit code {c}); not running it again"
            )?;
            Some(c)
        } else if claim.exists() {
            writeln!(
                &*log,
                "berth-agent: {what} was started by an earlier agent; waiting for it"
            )?;
            wait_for_hook(&pgid_file, &status, deadline).await
        } else {
            None
        };
        let code = match code {
            Some(c) => Some(c),
            None if claim.exists() => {
                // Started, gone, no status: cut short (killed with its host, or timed out
                // while no agent watched).
                let rerunnable = h
                    .bundle
                    .is_some_and(|b| b.manifest.rerunnable.iter().any(|r| r == h.hook));
                if now_unix() > deadline {
                    writeln!(&*log, "berth-agent: {what} timed out after {:?}", h.timeout)?;
                    return Ok(Err(Outcome::failed("timeout", None)));
                }
                if !rerunnable {
                    writeln!(
                        &*log,
                        "berth-agent: {what} was cut short and is not declared re-runnable"
                    )?;
                    return Ok(Err(Outcome {
                        state: StepState::Interrupted,
                        exit_code: None,
                        reason: Some(format!("{what} was cut short (the agent or host stopped while it ran); it is not declared re-runnable, so it waits for `berth retry` after a check of the host")),
                        outputs: BTreeMap::new(),
                    }));
                }
                writeln!(
                    &*log,
                    "berth-agent: {what} was cut short; running it again (declared re-runnable)"
                )?;
                for f in [&claim, &pgid_file, &status] {
                    let _ = std::fs::remove_file(f);
                }
                None
            }
            None => None,
        };
        let code = match code {
            Some(c) => c,
            None => {
                write_durable(h.outputs, b"", 0o600)?;
                writeln!(
                    &*log,
                    "berth-agent: running {what} ({})",
                    h.program.display()
                )?;
                let remaining =
                    Duration::from_secs(deadline.saturating_sub(now_unix()).max(1) as u64);
                match run_command(h, log, remaining, &claim, &pgid_file, &status).await? {
                    Spawned::Exited(c) => c,
                    Spawned::LostClaim => {
                        match wait_for_hook(&pgid_file, &status, deadline).await {
                            Some(c) => c,
                            None => {
                                return Ok(Err(Outcome::failed(
                                    "the hook's other runner vanished",
                                    None,
                                )))
                            }
                        }
                    }
                    Spawned::TimedOut => {
                        writeln!(
                            &*log,
                            "berth-agent: timed out after {:?}; killed the process group",
                            h.timeout
                        )?;
                        return Ok(Err(Outcome::failed("timeout", None)));
                    }
                    Spawned::Killed => return Ok(Err(Outcome::failed("killed by a signal", None))),
                }
            }
        };
        if code != 0 {
            return Ok(Err(Outcome::failed(
                format!("exited with code {code}"),
                Some(code),
            )));
        }
        // One byte past the limit is enough to know the file is over it.
        let bytes = read_capped(
            h.outputs,
            berth_shared::outputs::MAX_OUTPUTS_FILE as u64 + 1,
        );
        let may = |k: &str| h.bundle.is_some_and(|b| b.manifest.may_output(h.hook, k));
        match berth_shared::outputs::parse_file(&bytes, may) {
            Ok((outputs, dropped)) => {
                for k in dropped {
                    match h.bundle {
                        Some(b) => writeln!(&*log, "berth-agent: output `{k}` dropped: bundle {} does not declare it for {} (declare it under `outputs:` in bundle.yaml; {})", b.manifest.name, h.hook, berth_shared::outputs::FORBIDDEN)?,
                        None => writeln!(&*log, "berth-agent: output `{k}` dropped: a command publishes no outputs")?,
                    }
                }
                Ok(Ok(outputs))
            }
            Err(e) => {
                writeln!(
                    &*log,
                    "berth-agent: {e}; the step fails and publishes nothing"
                )?;
                Ok(Err(Outcome::failed(format!("outputs: {e}"), None)))
            }
        }
    }
}

/// One hook of one bundle of a step.
struct HookRun<'a> {
    step: &'a PlanStep,
    idx: usize,
    /// The bundle whose hook runs (none: an exec's command).
    bundle: Option<&'a PlanBundle>,
    hook: &'a str,
    cwd: &'a Path,
    program: &'a Path,
    args: &'a [String],
    env: &'a BTreeMap<String, String>,
    outputs: &'a Path,
    timeout: Duration,
    started: i64,
}

enum Spawned {
    Exited(i32),
    /// Another wrapper claimed the hook first (an agent that died mid-spawn).
    LostClaim,
    TimedOut,
    Killed,
}

/// The wrapper: claim (fails when the file exists), record the process group, run the
/// hook, record its exit status. Only shell builtins, so it works where `/bin/sh` is all.
const WRAPPER: &str = r#"set -C
{ : > "$1"; } 2>/dev/null || exit 125
set +C
printf '%s
' "$$" > "$2"
status=$3
shift 3
"$@"
rc=$?
printf '%s
' "$rc" > "$status.tmp" && mv -f "$status.tmp" "$status" 2>/dev/null || printf '%s
' "$rc" > "$status"
exit $rc"#;

fn read_status(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_capped(path: &Path, max: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    buf
}

fn group_alive(pgid: i32) -> bool {
    pgid > 1 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

/// Waits for a hook another process runs: its status, or `None` when its process group is
/// gone without one. Past `deadline` the group is killed.
async fn wait_for_hook(pgid_file: &Path, status: &Path, deadline: i64) -> Option<i32> {
    let mut no_pgid_since = None;
    loop {
        if let Some(c) = read_status(status) {
            return Some(c);
        }
        match std::fs::read_to_string(pgid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            Some(pg) if group_alive(pg) => {
                if now_unix() > deadline {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pg),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return read_status(status);
                }
            }
            Some(_) => return read_status(status),
            None => {
                // Claimed, group not recorded yet: give the wrapper a moment.
                let since = *no_pgid_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    return read_status(status);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a hook under the wrapper (`/bin/sh -c WRAPPER`) in its own process group: the
/// script with `/bin/sh`, or directly when it is executable with a shebang. On timeout the
/// whole group is killed.
async fn run_command(
    h: &HookRun<'_>,
    log: &std::fs::File,
    timeout: Duration,
    claim: &Path,
    pgid_file: &Path,
    status: &Path,
) -> Result<Spawned> {
    use std::os::unix::fs::PermissionsExt;
    let program = h.program;
    let direct = std::fs::metadata(program)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
        && std::fs::File::open(program)
            .and_then(|mut f| {
                let mut b = [0u8; 2];
                f.read_exact(&mut b).map(|_| &b == b"#!")
            })
            .unwrap_or(false);
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("berth-hook")
        .arg(claim)
        .arg(pgid_file)
        .arg(status);
    if !direct && program.is_absolute() {
        cmd.arg("/bin/sh");
    }
    cmd.arg(program)
        .args(h.args)
        .current_dir(h.cwd)
        .env_clear()
        .envs(base_env())
        .envs(h.env)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        // The hook must outlive a killed agent: its result is what makes it exactly-once.
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id();
    tokio::select! {
        st = child.wait() => {
            let st = st?;
            if let Some(c) = read_status(status) {
                return Ok(Spawned::Exited(c));
            }
            Ok(match st.code() {
                Some(125) => Spawned::LostClaim,
                Some(c) => Spawned::Exited(c),
                None => Spawned::Killed,
            })
        }
        _ = tokio::time::sleep(timeout) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Ok(Spawned::TimedOut)
        }
    }
}

/// What a hook inherits from the agent: only a sane PATH and the locale; everything else
/// comes from the plan.
fn base_env() -> Vec<(String, String)> {
    let mut v = vec![(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    )];
    for k in ["LANG", "LC_ALL", "TZ", "HOME"] {
        if let Ok(val) = std::env::var(k) {
            v.push((k.to_string(), val));
        }
    }
    v
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

/// A cluster's rootfs generations on this host: the current one, the one an upgrade
/// unpacks beside it, and the one it replaced (kept for a rollback until the next upgrade).
struct Generations {
    current: PathBuf,
    next: PathBuf,
    prev: PathBuf,
}

impl Generations {
    fn of(cdir: &Path) -> Generations {
        Generations {
            current: cdir.join("rootfs"),
            next: cdir.join("rootfs.next"),
            prev: cdir.join("rootfs.prev"),
        }
    }

    /// next ⇄ current in one `renameat2(RENAME_EXCHANGE)`, so `rootfs` is a whole tree at
    /// every instant; then the old one (now at next) becomes prev. Safe to run again after
    /// a crash at any point.
    fn switch_to_next(&self) -> Result<()> {
        if self.current.exists() {
            exchange(&self.next, &self.current)?;
            self.keep_next_as_prev()?;
        } else {
            std::fs::rename(&self.next, &self.current)?;
        }
        sync_dir(&self.current)
    }

    /// The tree at next (the one a switch replaced) is kept as prev.
    fn keep_next_as_prev(&self) -> Result<()> {
        if self.prev.exists() {
            std::fs::remove_dir_all(&self.prev)?;
        }
        std::fs::rename(&self.next, &self.prev)?;
        sync_dir(&self.prev)
    }

    /// prev (the kept generation) ⇄ current (the one being left) in one exchange; the left
    /// one is removed. Safe to run again after a crash at any point.
    fn switch_back(
        &self,
        is_leaving: impl Fn(&Path) -> bool,
        is_target: impl Fn(&Path) -> bool,
    ) -> Result<()> {
        if is_leaving(&self.current) && is_target(&self.prev) {
            exchange(&self.prev, &self.current)?;
            sync_dir(&self.current)?;
            std::fs::remove_dir_all(&self.prev)?;
        }
        if !self.current.exists() && is_target(&self.prev) {
            std::fs::rename(&self.prev, &self.current)?;
        }
        if !is_target(&self.current) {
            anyhow::bail!(
                "{} is not the rootfs the rollback returns to",
                self.current.display()
            );
        }
        sync_dir(&self.current)?;
        if self.next.exists() {
            std::fs::remove_dir_all(&self.next)?;
        }
        Ok(())
    }
}

/// Swaps two directories atomically.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .with_context(|| format!("cannot swap {} and {}", a.display(), b.display()))
}

/// Makes the renames in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Why the step's bundles cannot run here: one is built for another architecture (its tag
/// has no digest for this host's).
fn wrong_arch(step: &PlanStep) -> Option<String> {
    let mine = crate::facts::arch();
    let b = step
        .bundles
        .iter()
        .chain(&step.from)
        .find(|b| b.arch.as_deref().is_some_and(|a| a != mine))?;
    let theirs = b.arch.as_deref().unwrap_or_default();
    Some(format!(
        "{} has no digest for {mine}, the architecture of this host (its digest {} is built for {theirs}); push one with `berth bundle push DIR --arch {mine} --tag {}`",
        b.reference, b.digest, b.reference
    ))
}

/// Where an app bundle's tree is unpacked and its commands run.
fn app_dir(cdir: &Path, b: &PlanBundle) -> PathBuf {
    cdir.join("apps").join(b.manifest.name.replace('/', "_"))
}

/// The bundle `b` replaces (same name) among `from`.
fn previous_of<'a>(b: &PlanBundle, from: &'a [PlanBundle]) -> Option<&'a PlanBundle> {
    from.iter().find(|o| o.manifest.name == b.manifest.name)
}

/// What an upgrade or rollback hook is told: the versions (of the first bundle, the
/// rootfs) and both trees.
fn moving_env(
    from: &[PlanBundle],
    to: &[PlanBundle],
    from_dir: &Path,
    to_dir: &Path,
) -> BTreeMap<String, String> {
    let version = |b: &[PlanBundle]| {
        b.first()
            .map(|b| b.manifest.version.clone())
            .unwrap_or_default()
    };
    BTreeMap::from([
        ("BERTH_FROM_VERSION".to_string(), version(from)),
        ("BERTH_TO_VERSION".to_string(), version(to)),
        (
            "BERTH_FROM_ROOTFS".to_string(),
            from_dir.display().to_string(),
        ),
        ("BERTH_TO_ROOTFS".to_string(), to_dir.display().to_string()),
    ])
}

/// The hook a step of `kind` runs in each bundle: one place (`StepKind::hook`) names them.
fn hook_of(kind: StepKind) -> &'static str {
    kind.hook().unwrap_or(kind.as_str())
}
