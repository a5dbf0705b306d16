//! Operator commands on a cluster besides apply: reset (forced resets that stay forced),
//! rollback, retry, host delete.

use super::*;

impl Engine {
    /// `berth reset`: clean hooks on every host, then the cluster is removed. With `force`,
    /// hosts that do not answer (not seen within `host_grace`) are skipped, and cleans that
    /// failed or were lost are given up; their names are returned.
    pub async fn reset(
        &self,
        name: &str,
        force: bool,
        host_grace: Duration,
        actor: &str,
    ) -> Result<Vec<String>, EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::not_found(format!("no cluster `{name}`")))?;
        if c.phase.is_reset() && !force {
            return Err(EngineError::Conflict {
                code: codes::CLUSTER_RESETTING,
                message: format!(
                    "cluster `{name}` is already being reset; `berth reset {name} --force` finishes it without the hosts that do not answer"
                ),
            });
        }
        let hosts: Vec<RecordedHost> = self.recorded_hosts(c.id).await?;
        if !c.phase.is_reset() {
            let _g = self.tick_lock.lock().await;
            self.store
                .start_reset(c.id, planner::reset_steps(&hosts), actor, name)
                .await?;
        }
        let mut skipped = Vec::new();
        if force {
            self.store.set_reset_forced(c.id).await?;
            let all = self.store.hosts().await?;
            let now = now_unix();
            let answering = |id: i64| {
                all.iter().any(|h| {
                    h.id == id && !h.revoked && now - h.last_seen <= host_grace.as_secs() as i64
                })
            };
            let steps = self.store.steps(c.id).await?;
            let give_up: Vec<&StepRow> = steps
                .iter()
                .filter(|s| match s.state {
                    StepState::Failed | StepState::Interrupted => true,
                    StepState::Pending | StepState::Released | StepState::Running => {
                        !answering(s.host_id)
                    }
                    _ => false,
                })
                .collect();
            for s in &give_up {
                if s.kind == StepKind::Clean && !skipped.contains(&s.host_name) {
                    skipped.push(s.host_name.clone());
                }
            }
            let ids: Vec<i64> = give_up.iter().map(|s| s.id).collect();
            for h in self
                .store
                .cancel_steps(&ids, "skipped by `reset --force`", actor)
                .await?
            {
                self.wake(h);
            }
            if !skipped.is_empty() {
                tracing::warn!(cluster = %name, hosts = ?skipped, "reset --force: clean skipped on hosts that do not answer or failed");
            }
            let _g = self.tick_lock.lock().await;
            if c.phase == ClusterPhase::ResetFailed {
                self.store
                    .set_phase(c.id, ClusterPhase::Resetting, None)
                    .await?;
            }
        }
        self.tick(c.id).await?;
        Ok(skipped)
    }

    /// `berth rollback`: turns back the cluster's last upgrade (failed or finished) on every
    /// host that started it, in reverse order; returns how many hosts roll back.
    pub async fn rollback(&self, name: &str, actor: &str) -> Result<usize, EngineError> {
        let n = {
            let _g = self.tick_lock.lock().await;
            let c = self.live_cluster(name).await?;
            // Whatever else the upgrade's apply runs (its apps) must be finished too: a
            // rollback supersedes every unfinished step, and cannot take a running one back.
            let steps = self.store.steps(c.id).await?;
            if let Some(s) = steps
                .iter()
                .find(|s| s.state.is_active() && s.kind != StepKind::Exec)
            {
                return Err(EngineError::Conflict {
                    code: codes::NOTHING_TO_ROLL_BACK,
                    message: format!(
                        "nothing to roll back yet: step {} is running on `{}`; wait until it finishes or fails (`berth status {name} --watch`), then roll back",
                        s.kind, s.host_name
                    ),
                });
            }
            let spec = self
                .spec_of(None, c.id)
                .await
                .map_err(EngineError::Internal)?
                .ok_or_else(|| EngineError::not_found(format!("no cluster `{name}`")))?;
            let hosts: Vec<RecordedHost> = self.recorded_hosts(c.id).await?;
            let upgrade = self.store.last_upgrade(c.id).await?;
            let (back, mut g) = planner::rollback(name, &spec, &hosts, &upgrade).map_err(|e| {
                EngineError::Conflict {
                    code: e.code(),
                    message: e.to_string(),
                }
            })?;
            // Besides the upgrade's own steps, every other unfinished one but an exec's (the
            // apps its apply would run after it) is superseded.
            let others: Vec<i64> = steps
                .iter()
                .filter(|s| {
                    s.kind != StepKind::Exec
                        && matches!(
                            s.state,
                            StepState::Pending | StepState::Failed | StepState::Interrupted
                        )
                        && !g.cancel.contains(&s.id)
                })
                .map(|s| s.id)
                .collect();
            g.cancel.extend(others);
            let spec_json =
                serde_json::to_string(&back).map_err(|e| EngineError::Internal(e.into()))?;
            let n = g.steps.len();
            for h in self
                .store
                .start_rollback(c.id, &spec_json, g, actor, name)
                .await?
            {
                self.wake(h);
            }
            n
        };
        let id = self.store.cluster(name).await?.map(|c| c.id);
        if let Some(id) = id {
            self.tick(id).await?;
        }
        Ok(n)
    }

    /// A forced reset stays forced: the unfinished steps of a host that stopped answering
    /// (not seen for `host_grace`) after `reset --force` was given are skipped, and the
    /// reset goes on without it. Returns the hosts skipped.
    pub async fn skip_stragglers(&self, host_grace: Duration) -> Result<Vec<String>> {
        let seen_before = now_unix() - host_grace.as_secs() as i64;
        let stragglers = self.store.forced_reset_stragglers(seen_before).await?;
        let mut skipped = Vec::new();
        let mut clusters = std::collections::BTreeSet::new();
        for (cluster_id, cluster, step, host) in stragglers {
            // The holder of the cluster skips its stragglers.
            if !self.hold(cluster_id).await? {
                continue;
            }
            let reason = format!(
                "skipped by `reset --force`: host {host} stopped answering (not seen for {}s)",
                host_grace.as_secs()
            );
            for h in self.store.cancel_steps(&[step], &reason, "system").await? {
                self.wake(h);
            }
            tracing::warn!(%host, step, "reset --force: {reason}");
            self.store
                .record_event(&cluster, Some(&host), "skip", &reason)
                .await?;
            if !skipped.contains(&host) {
                skipped.push(host);
            }
            clusters.insert(cluster_id);
        }
        for c in clusters {
            self.tick(c).await?;
        }
        Ok(skipped)
    }

    /// Runs `skip_stragglers` every second until shutdown (it reads only clusters being
    /// force-reset).
    pub async fn run_forced_resets(
        self: Arc<Self>,
        host_grace: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Err(e) = self.skip_stragglers(host_grace).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "skipping hosts of a forced reset failed"
                );
            }
        }
    }

    pub async fn retry(&self, name: &str, actor: &str) -> Result<u64, EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::not_found(format!("no cluster `{name}`")))?;
        let phase = if c.phase.is_reset() {
            ClusterPhase::Resetting
        } else {
            ClusterPhase::Reconciling
        };
        let n = {
            let _g = self.tick_lock.lock().await;
            self.store.retry(c.id, phase, actor, name).await?
        };
        self.tick(c.id).await?;
        Ok(n)
    }

    /// `berth host delete`: refused for a cluster member unless `force`, which removes it
    /// from its cluster first (its unfinished steps are cancelled). Returns the cluster.
    pub async fn delete_host(
        &self,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<Option<String>, EngineError> {
        let host = self
            .store
            .hosts()
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| EngineError::not_found(format!("no host named `{name}`")))?;
        let mut removed_from = None;
        if let Some((cid, cname)) = self.store.cluster_of_host(host.id).await? {
            if !force {
                return Err(EngineError::Conflict {
                    code: codes::HOST_IN_CLUSTER,
                    message: format!(
                        "host `{name}` belongs to cluster `{cname}`; remove it with `berth delete --nodes {name} --cluster {cname}` (runs leave and remove), or `berth host delete {name} --force` to drop it from the cluster without them"
                    ),
                });
            }
            {
                let _g = self.tick_lock.lock().await;
                self.store.remove_from_cluster(host.id, actor).await?;
            }
            self.tick(cid).await?;
            removed_from = Some(cname);
        }
        self.plans.forget_host(host.id);
        if !self.store.delete_host(name, actor).await? {
            return Err(EngineError::not_found(format!("no host named `{name}`")));
        }
        self.wake(host.id);
        Ok(removed_from)
    }
}
