//! `berth exec`: a command on hosts through their agents, each host's output streamed with
//! its name in front, then a per-host summary.

use crate::client::{Client, Target};
use crate::output::Format;
use anyhow::{bail, Result};
use berth_shared::api::{ExecRequest, ExecResponse, ExecStep, LogChunk, LogQuery};
use berth_shared::routes::{self, NoQuery};
use berth_shared::state::StepState;
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// What `-o json` prints for each host.
#[derive(Debug, Serialize)]
pub struct HostResult {
    pub cluster: String,
    pub host: String,
    /// succeeded | failed | interrupted | cancelled, or `running` when no result came
    /// within the wait.
    pub state: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub output: String,
}

struct Follow {
    step: ExecStep,
    from: u64,
    partial: String,
    output: String,
    done: Option<LogChunk>,
}

/// What `berth exec` was given.
pub struct ExecFlags {
    pub cluster: Option<String>,
    pub hosts: Vec<String>,
    /// `master` or `node`.
    pub role: Option<String>,
    pub timeout: Duration,
    pub command: Vec<String>,
}

pub async fn exec(target: &Target, f: ExecFlags, out: Format) -> Result<()> {
    let role = f
        .role
        .map(|r| r.parse::<berth_shared::state::HostRole>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    let req = ExecRequest {
        cluster: f.cluster,
        hosts: f.hosts,
        role,
        timeout_secs: f.timeout.as_secs().max(1),
        command: f.command,
    };
    let client = Client::connect(target)?;
    let timeout = Duration::from_secs(req.timeout_secs);
    let r: ExecResponse = client.send::<routes::Exec>(&[], &NoQuery {}, &req).await?;
    let stream = out == Format::Table;
    if stream {
        let hosts: Vec<&str> = r.steps.iter().map(|s| s.host.as_str()).collect();
        eprintln!("running on {} host(s): {}", hosts.len(), hosts.join(", "));
    }
    let width = r.steps.iter().map(|s| s.host.len()).max().unwrap_or(0);
    let mut follows: Vec<Follow> = r
        .steps
        .into_iter()
        .map(|step| Follow {
            step,
            from: 0,
            partial: String::new(),
            output: String::new(),
            done: None,
        })
        .collect();
    // The command's own timeout, plus time for a host to pick it up and report.
    let give_up = Instant::now() + timeout + Duration::from_secs(90);
    while follows.iter().any(|f| f.done.is_none()) && Instant::now() < give_up {
        let mut idle = true;
        for f in follows.iter_mut().filter(|f| f.done.is_none()) {
            let q = LogQuery {
                host: f.step.host.clone(),
                id: Some(f.step.step_id),
                from: f.from,
                step: None,
            };
            let c: LogChunk = client
                .fetch::<routes::ClusterLogs>(&[&f.step.cluster], &q)
                .await?;
            f.from = c.next;
            if !c.data.is_empty() {
                idle = false;
                f.output.push_str(&c.data);
                if stream {
                    f.partial.push_str(&c.data);
                    while let Some(i) = f.partial.find('\n') {
                        let line: String = f.partial.drain(..=i).collect();
                        print!("{:<width$} | {line}", f.step.host);
                    }
                    let _ = std::io::stdout().flush();
                }
            }
            let finished = !c.state.is_active() && c.state != StepState::Pending;
            if finished && !c.more && c.data.is_empty() {
                if stream && !f.partial.is_empty() {
                    println!(
                        "{:<width$} | {}",
                        f.step.host,
                        std::mem::take(&mut f.partial)
                    );
                }
                f.done = Some(c);
            }
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let results: Vec<HostResult> = follows
        .into_iter()
        .map(|f| HostResult {
            cluster: f.step.cluster,
            host: f.step.host,
            state: f
                .done
                .as_ref()
                .map_or("running".to_string(), |c| c.state.to_string()),
            exit_code: f.done.as_ref().and_then(|c| c.exit_code),
            reason: f.done.and_then(|c| c.reason),
            output: f.output,
        })
        .collect();
    let failed: Vec<&HostResult> = results
        .iter()
        .filter(|r| r.state != StepState::Succeeded.as_str())
        .collect();
    match out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        Format::Yaml => print!("{}", serde_norway::to_string(&results)?),
        Format::Table => {
            eprintln!();
            for r in &results {
                let how = match (r.exit_code, &r.reason) {
                    (Some(c), _) if r.state == "succeeded" || r.state == "failed" => {
                        format!("exit {c}")
                    }
                    (_, Some(reason)) => reason.clone(),
                    _ => "no result in time".to_string(),
                };
                eprintln!("{:<width$}  {:<11} {how}", r.host, r.state);
            }
        }
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.host.as_str()).collect();
        bail!(
            "the command failed on {} of {} host(s): {}",
            failed.len(),
            results.len(),
            names.join(", ")
        );
    }
    Ok(())
}
