//! Agent reports: batches queued for group commits, each entry validated against the step
//! state machine and the step's declared outputs, log chunks appended.

use super::*;

impl Engine {
    /// Applies a batch of reports and log chunks in one transaction, in order; duplicates
    /// are no-ops. The first entry refused stops the batch: the entries before it are
    /// kept, it and the ones after it change nothing.
    ///
    /// Batches from concurrent requests are applied together (group commit): each request
    /// queues its batch; the first to get the turn applies every queued batch in one
    /// transaction and answers them all, so a fleet reporting at once costs one commit
    /// per group, not one per host.
    pub async fn report_batch(
        self: &Arc<Self>,
        host: &HostRow,
        entries: Vec<berth_shared::api::ReportEntry>,
    ) -> Result<BatchOutcome, EngineError> {
        // Step reports are logged by the request once its group committed, not by the
        // group: the writer lane holds the writers' turn while it applies a group, and a
        // 19,000-host phase is ~38,000 log lines. (A request that went away before its
        // answer logs nothing; what it reported is in the store all the same.)
        let steps: Vec<(usize, i64, u32, StepState)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                berth_shared::api::ReportEntry::Step(r) => Some((i, r.step_id, r.attempt, r.state)),
                _ => None,
            })
            .collect();
        let outcome = self.queue_report_batch(host, entries).await?;
        let kept = outcome.refused.as_ref().map_or(usize::MAX, |(i, _)| *i);
        for (_, step, attempt, state) in steps.into_iter().filter(|s| s.0 < kept) {
            tracing::info!(host = %host.name, step, attempt, %state, "step report");
        }
        Ok(outcome)
    }

    /// Queues a batch for the next group commit and waits for its outcome.
    async fn queue_report_batch(
        self: &Arc<Self>,
        host: &HostRow,
        entries: Vec<berth_shared::api::ReportEntry>,
    ) -> Result<BatchOutcome, EngineError> {
        let (reply, mut done) = tokio::sync::oneshot::channel();
        self.report_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ReportJob {
                host: host.clone(),
                entries,
                reply,
            });
        let turn = tokio::select! {
            r = &mut done => return r.map_err(|_| EngineError::Internal(anyhow::anyhow!("report group dropped")))?,
            t = self.report_turn.clone().lock_owned() => t,
        };
        // The groups run on their own task: a request that goes away (its agent timed
        // out) must not cancel a transaction holding other hosts' reports.
        let engine = self.clone();
        self.writer.spawn(async move {
            let _turn = turn;
            loop {
                let jobs: Vec<ReportJob> = {
                    let mut q = engine
                        .report_queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let n = q.len().min(MAX_GROUP);
                    q.drain(..n).collect()
                };
                if jobs.is_empty() {
                    return;
                }
                engine.apply_group(jobs).await;
            }
        });
        done.await
            .map_err(|_| EngineError::Internal(anyhow::anyhow!("report group dropped")))?
    }

    /// Applies queued report batches in one transaction and answers each. A batch's
    /// refused entry stops that batch only. On a database error nothing of the group is
    /// kept and each batch is applied again in its own transaction, so only the failing
    /// one is answered with the error.
    async fn apply_group(&self, jobs: Vec<ReportJob>) {
        match self.commit_batches(&jobs).await {
            Ok(outcomes) => {
                for (job, o) in jobs.into_iter().zip(outcomes) {
                    self.answer(job, Ok(o));
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), batches = jobs.len(), "a group of report batches failed; applying them one by one");
                for job in jobs {
                    let one = self
                        .commit_batches(std::slice::from_ref(&job))
                        .await
                        .map(|mut o| o.remove(0));
                    if let Err(e) = &one {
                        tracing::error!(host = %job.host.name, error = %format!("{e:#}"), "a report batch failed");
                    }
                    self.answer(job, one);
                }
            }
        }
    }

    /// Applies `jobs` in one transaction: their outcomes, in order, once committed.
    async fn commit_batches(&self, jobs: &[ReportJob]) -> Result<Vec<BatchOutcome>, EngineError> {
        use berth_shared::api::ReportEntry;
        let began = std::time::Instant::now();
        let mut tx = self.store.write().await?;
        // Every step the group names, in one read; results are validated in memory and
        // written in one statement at the end. (Log chunks write only the log columns,
        // which results never touch, so they go to the database as they come.)
        let ids: Vec<i64> = jobs
            .iter()
            .flat_map(|j| j.entries.iter())
            .filter_map(|e| match e {
                ReportEntry::Step(r) => Some(r.step_id),
                ReportEntry::Log { step_id, .. } => Some(*step_id),
                ReportEntry::PlanRejected { .. } => None,
            })
            .collect();
        let mut group = Group {
            steps: Store::steps_on(&mut tx, &ids).await?,
            ..Group::default()
        };
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            outcomes.push(
                self.apply_batch(&mut tx, &mut group, &job.host, &job.entries)
                    .await?,
            );
        }
        group.flush(&mut tx).await?;
        tx.commit().await?;
        self.metrics.store_transaction("reports", began.elapsed());
        self.metrics.log_bytes_stored.inc_by(group.log_bytes);
        for (kind, state, secs) in group.finished {
            self.metrics
                .step_finished(kind.as_str(), state.as_str(), secs);
        }
        Ok(outcomes)
    }

    /// Answers a queued batch and ticks the clusters it changed. The tick is scheduled
    /// here, not by the request: a request that went away (its agent timed out) still had
    /// its reports committed, and the agent's resend is only a duplicate.
    fn answer(&self, job: ReportJob, outcome: Result<BatchOutcome, EngineError>) {
        if let Ok(o) = &outcome {
            for cid in &o.touched {
                self.schedule_tick(*cid);
            }
        }
        let _ = job.reply.send(outcome);
    }

    /// One batch on `tx`: entries in order until one is refused. Errs only on a database
    /// error.
    async fn apply_batch(
        &self,
        tx: &mut WriteTx,
        group: &mut Group,
        host: &HostRow,
        entries: &[berth_shared::api::ReportEntry],
    ) -> Result<BatchOutcome, EngineError> {
        use berth_shared::api::ReportEntry;
        let mut touched = std::collections::BTreeSet::new();
        let mut refused = None;
        // Plan refusals are counted into one row per host, whatever the batch holds.
        let mut rejected: Option<(u32, &str)> = None;
        for (i, e) in entries.iter().enumerate() {
            let res = match e {
                ReportEntry::Log {
                    step_id,
                    attempt,
                    offset,
                    data,
                } => match group.owned_step(host, *step_id) {
                    Ok(step) => self
                        .log(&mut *tx, &step, *attempt, *offset, data.as_bytes())
                        .await
                        .map(|stored| {
                            if let LogAppend::Stored(n) = stored {
                                group.log_bytes += n;
                            }
                        }),
                    Err(e) => Err(e),
                },
                ReportEntry::Step(r) => self.report(&mut *tx, group, host, r).await.map(|c| {
                    touched.extend(c);
                }),
                ReportEntry::PlanRejected { reason } => {
                    let n = rejected.map_or(0, |(n, _)| n);
                    rejected = Some((n.saturating_add(1), reason.as_str()));
                    Ok(())
                }
            };
            match res {
                Ok(()) => {}
                Err(e @ EngineError::Internal(_)) => return Err(e),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        if let Some((n, reason)) = rejected {
            if Store::record_host_event(&mut *tx, host.id, "plan_rejected", reason, n).await? {
                let reason =
                    berth_shared::text::one_line(reason, crate::store::hosts::MAX_EVENT_MESSAGE);
                tracing::warn!(host = %host.name, %reason, count = n, "agent refused a plan (logged at most once a minute per host; `berth get hosts` counts them)");
            }
        }
        Ok(BatchOutcome { touched, refused })
    }

    /// Validates a step report against the state machine and stores it on `tx`. Returns
    /// the cluster to tick when it changed something.
    async fn report(
        &self,
        tx: &mut WriteTx,
        group: &mut Group,
        host: &HostRow,
        r: &StepReport,
    ) -> Result<Option<i64>, EngineError> {
        let step = group.owned_step(host, r.step_id)?;
        let to = match transition(step.state, step.attempt as u32, r.state, r.attempt) {
            Ok(Transition::Duplicate) => return Ok(None),
            Ok(Transition::Apply(to)) => to,
            Err(e) => {
                return Err(EngineError::Conflict {
                    code: e.code(),
                    message: format!(
                        "step {} ({} on {}): {e}",
                        step.id, step.kind, step.host_name
                    ),
                })
            }
        };
        let spec = match group.specs.get(&step.cluster_id) {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .spec_of(Some(&mut *tx), step.cluster_id)
                    .await?
                    .ok_or_else(|| EngineError::not_found("the step's cluster is gone"))?;
                group.specs.insert(step.cluster_id, s.clone());
                s
            }
        };
        let sspec = &step.spec; // decoded when the row was read
        let mut r = r.clone();
        if to == StepState::Succeeded {
            if let Err(e) = berth_shared::outputs::check(&r.outputs) {
                return Err(EngineError::Invalid {
                    code: codes::OUTPUT_NOT_ALLOWED,
                    message: format!(
                        "step {} ({} on {}): {e}",
                        step.id, step.kind, step.host_name
                    ),
                });
            }
            for k in r.outputs.keys() {
                if !spec.may_output(step.kind, sspec, k) {
                    return Err(EngineError::Invalid {
                        code: codes::OUTPUT_NOT_ALLOWED,
                        message: format!(
                            "step {} ({} on {}) may not publish output `{}`: a hook publishes only the names its bundle declares for it under `outputs:` ({})",
                            step.id, step.kind, step.host_name, k.chars().take(64).collect::<String>(),
                            berth_shared::outputs::FORBIDDEN
                        ),
                    });
                }
            }
        } else {
            r.outputs.clear();
        }
        // Text columns hold no NUL on either engine (PostgreSQL's TEXT cannot).
        r.log_tail = r
            .log_tail
            .map(|t| berth_shared::text::clip(&t, 4096).replace('\0', "\u{FFFD}"));
        r.reason = r
            .reason
            .map(|t| berth_shared::text::clip(&t, 1024).replace('\0', "\u{FFFD}"));
        let deadline =
            (to == StepState::Running).then(|| now_unix() + self.deadline_secs(&spec, &step));
        let cluster_id = step.cluster_id;
        group.record(&step, &r, deadline)?;
        Ok(Some(cluster_id))
    }

    /// Stores a log chunk of a step the host owns, at its current attempt.
    async fn log(
        &self,
        tx: &mut WriteTx,
        step: &StepRow,
        attempt: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<LogAppend, EngineError> {
        let step_id = step.id;
        if attempt as i64 != step.attempt {
            return Err(EngineError::Conflict {
                code: codes::STALE_ATTEMPT,
                message: format!(
                    "log for attempt {attempt}, the step is at attempt {}",
                    step.attempt
                ),
            });
        }
        if matches!(step.state, StepState::Pending | StepState::Cancelled) {
            return Err(EngineError::Conflict {
                code: codes::STEP_NOT_RELEASED,
                message: format!("step {step_id} is {}", step.state),
            });
        }
        if data.len() > MAX_LOG_CHUNK || offset > (i64::MAX as u64) / 2 {
            return Err(EngineError::Invalid {
                code: codes::BAD_LOG_CHUNK,
                message: format!(
                    "log chunk at offset {offset} with {} bytes: chunks are at most {MAX_LOG_CHUNK} bytes at offsets below 2^62",
                    data.len()
                ),
            });
        }
        Store::append_log(tx, step, offset, data, self.cfg.log_cap)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(message) => EngineError::Conflict {
                    code: codes::BAD_LOG_CHUNK,
                    message,
                },
                e => e.into(),
            })
    }
}
