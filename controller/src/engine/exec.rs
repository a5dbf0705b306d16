//! `berth exec`: a one-off step of kind exec on the selected hosts.

use super::*;

impl Engine {
    /// `berth exec`: a one-off command on the selected hosts through their agents (a step
    /// of kind exec in each host's signed plan), released at once, never waiting for and
    /// never stopping a rollout.
    pub async fn exec(
        &self,
        req: &berth_shared::api::ExecRequest,
        actor: &str,
    ) -> Result<Vec<berth_shared::api::ExecStep>, EngineError> {
        use berth_shared::api::{ExecStep, MAX_EXEC_ARGS, MAX_EXEC_BYTES};
        let bad = |m: String| EngineError::Invalid {
            code: codes::BAD_REQUEST,
            message: m,
        };
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(bad(
                "command: empty; give the program and its arguments after `--`".into(),
            ));
        }
        let bytes: usize = req.command.iter().map(|a| a.len() + 1).sum();
        if req.command.len() > MAX_EXEC_ARGS || bytes > MAX_EXEC_BYTES {
            return Err(bad(format!(
                "command: {} arguments, {bytes} bytes; at most {MAX_EXEC_ARGS} arguments and {MAX_EXEC_BYTES} bytes (put a longer script in a file on the hosts, or in a bundle)",
                req.command.len()
            )));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(bad("command: an argument holds a NUL byte".into()));
        }
        if !(1..=86_400).contains(&req.timeout_secs) {
            return Err(bad(format!(
                "timeout_secs: {} is not between 1 and 86400",
                req.timeout_secs
            )));
        }
        if req.cluster.is_none() && req.hosts.is_empty() {
            return Err(bad("name a cluster or --hosts".into()));
        }
        // The selected hosts, by cluster.
        let mut by_cluster: BTreeMap<String, Vec<RecordedHost>> = BTreeMap::new();
        let clusters: Vec<String> = match &req.cluster {
            Some(c) => vec![c.clone()],
            None => {
                let all = self.store.hosts().await?;
                let member_of = self.store.host_clusters().await?;
                let mut names = Vec::new();
                for h in &req.hosts {
                    let row = all.iter().find(|r| &r.name == h).ok_or_else(|| {
                        EngineError::not_found(format!(
                            "no host named `{h}` (see `berth get hosts`)"
                        ))
                    })?;
                    let c = member_of.get(&row.id).ok_or_else(|| {
                        bad(format!("host `{h}` belongs to no cluster: exec runs through a cluster's plans; add it to a cluster first"))
                    })?;
                    if !names.contains(c) {
                        names.push(c.clone());
                    }
                }
                names
            }
        };
        for name in &clusters {
            let c = self.live_cluster(name).await?;
            let members: Vec<RecordedHost> = self
                .recorded_hosts(c.id)
                .await?
                .into_iter()
                .filter(|h| h.active)
                .collect();
            if req.cluster.is_some() {
                for h in &req.hosts {
                    if !members.iter().any(|m| &m.name == h) {
                        return Err(bad(format!(
                            "host `{h}` is not a member of cluster `{name}`"
                        )));
                    }
                }
            }
            let chosen: Vec<RecordedHost> = members
                .into_iter()
                .filter(|m| req.hosts.is_empty() || req.hosts.contains(&m.name))
                .filter(|m| req.role.is_none_or(|r| r == m.role))
                .collect();
            if !chosen.is_empty() {
                by_cluster.insert(name.clone(), chosen);
            }
        }
        if by_cluster.is_empty() {
            return Err(bad("no host matches the selection".into()));
        }
        let exec = berth_shared::plan::PlanExec {
            command: req.command.clone(),
            timeout_secs: req.timeout_secs,
        };
        let shown = berth_shared::text::one_line(&req.command.join(" "), 500);
        let mut out = Vec::new();
        for (name, hosts) in by_cluster {
            let Some(c) = self.store.cluster(&name).await? else {
                continue;
            };
            let spec = self.spec_of(None, c.id).await?.unwrap_or_default();
            let steps = planner::exec_steps(&hosts, &exec);
            // A one-off plan is a rollout of its own: its first release is all of it.
            let released = self.first_release(&spec, &steps);
            let names: Vec<String> = steps.iter().map(|s| s.host_name.clone()).collect();
            let (ids, woken) = {
                let _g = self.tick_lock.lock().await;
                self.store
                    .start_exec(c.id, &name, steps, &released, actor, &shown)
                    .await?
            };
            for h in woken {
                self.wake(h);
            }
            for (host, step_id) in names.into_iter().zip(ids) {
                out.push(ExecStep {
                    cluster: name.clone(),
                    host,
                    step_id,
                });
            }
        }
        Ok(out)
    }
}
