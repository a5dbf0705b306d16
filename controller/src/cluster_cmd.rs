//! `berth apply|run|status|logs|retry|reset` and `berth get clusters`.

use crate::client::{Client, Target};
use crate::output::{self, Format};
use anyhow::{bail, Context, Result};
use berth_shared::api::{ClusterView, CreateTokenRequest, CreateTokenResponse};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(serde::Deserialize)]
struct ApplyResponse {
    name: String,
    warnings: Vec<String>,
}

pub async fn apply(target: &Target, file: &Path, wait: bool, out: Format) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = Client::connect(target)?;
    apply_text(&client, &text, wait, out).await
}

async fn apply_text(client: &Client, text: &str, wait: bool, out: Format) -> Result<()> {
    let r: ApplyResponse = client.post_text("/v1/clusters", text.to_string()).await?;
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
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut last_phase = String::new();
    loop {
        let v: ClusterView = client.get(&format!("/v1/clusters/{name}")).await?;
        for s in &v.steps {
            let key = format!("{}#{}", s.state, s.attempt);
            if seen.get(&s.id) != Some(&key) && s.state != "pending" {
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
        if v.phase != last_phase {
            eprintln!(
                "[{:>6.1}s] cluster {} is {}",
                start.elapsed().as_secs_f64(),
                v.name,
                v.phase
            );
            last_phase = v.phase.clone();
        }
        let done = v.phase == "Running" || v.phase == "Failed";
        if done && until_done {
            print_status(&v, out)?;
            if v.phase == "Failed" {
                bail!(
                    "cluster {} failed: {}",
                    v.name,
                    v.message.unwrap_or_default()
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
                        s.kind.clone(),
                        s.state.clone(),
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
    if v.phase == "Failed" {
        if let Some(s) = v
            .steps
            .iter()
            .find(|s| s.state == "failed" || s.state == "interrupted")
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
            let all: Vec<ClusterView> = client.get("/v1/clusters").await?;
            match all.len() {
                0 => bail!(
                    "no clusters; create one with `berth apply -f Clusterfile` or `berth run`"
                ),
                1 => all[0].name.clone(),
                _ => return list(target, out).await,
            }
        }
    };
    if watch_it {
        return watch(&client, &name, true, out).await;
    }
    let q = if show_outputs {
        "?show_outputs=true"
    } else {
        ""
    };
    let v: ClusterView = client.get(&format!("/v1/clusters/{name}{q}")).await?;
    print_status(&v, out)
}

pub async fn list(target: &Target, out: Format) -> Result<()> {
    let client = Client::connect(target)?;
    let all: Vec<ClusterView> = client.get("/v1/clusters").await?;
    output::print(out, &all, &["NAME", "PHASE", "HOSTS", "GENERATION"], || {
        all.iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.phase.clone(),
                    c.hosts
                        .iter()
                        .map(|h| h.name.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    c.generation.to_string(),
                ]
            })
            .collect()
    })
}

#[derive(serde::Deserialize)]
struct LogChunk {
    state: String,
    next: u64,
    data: String,
}

pub async fn logs(
    target: &Target,
    name: &str,
    host: &str,
    step: Option<&str>,
    follow: bool,
) -> Result<()> {
    let client = Client::connect(target)?;
    let mut from = 0u64;
    loop {
        let mut path = format!("/v1/clusters/{name}/logs?host={host}&from={from}");
        if let Some(s) = step {
            path.push_str(&format!("&step={s}"));
        }
        let c: LogChunk = match client.get(&path).await {
            Ok(c) => c,
            // With -f, wait for the step to start.
            Err(e) if follow && e.to_string().contains("no started step") => {
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
        let finished = !matches!(c.state.as_str(), "released" | "running" | "pending");
        if !follow || (finished && c.data.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn retry(target: &Target, name: &str, wait: bool, out: Format) -> Result<()> {
    let client = Client::connect(target)?;
    let r: serde_json::Value = client
        .post(
            &format!("/v1/clusters/{name}/retry"),
            &serde_json::json!({}),
        )
        .await?;
    eprintln!("retrying {} step(s) of {name}", r["retried_steps"]);
    if wait {
        watch(&client, name, true, out).await
    } else {
        Ok(())
    }
}

pub async fn reset(target: &Target, name: &str, wait: bool) -> Result<()> {
    let client = Client::connect(target)?;
    client
        .call_empty(reqwest::Method::POST, &format!("/v1/clusters/{name}/reset"))
        .await?;
    eprintln!("resetting cluster {name}: clean hooks run on every host");
    if !wait {
        return Ok(());
    }
    loop {
        match client
            .get::<ClusterView>(&format!("/v1/clusters/{name}"))
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) if e.to_string().contains("(not_found)") => {
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
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {}\nspec:\n  hosts:\n  - ips: [{}]\n    roles: [master]\n",
        a.cluster,
        list(&masters)
    );
    if !a.nodes.is_empty() {
        text.push_str(&format!(
            "  - ips: [{}]\n    roles: [node]\n",
            list(&a.nodes)
        ));
    }
    text.push_str(&format!("  image: [{}]\n", list(&images)));
    if !a.env.is_empty() {
        text.push_str(&format!("  env: [{}]\n", list(&a.env)));
    }
    apply_text(&client, &text, true, a.out).await
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
            .post(
                "/v1/tokens",
                &CreateTokenRequest {
                    ttl_secs: 600,
                    uses: 1,
                    description: Some("berth run --single".into()),
                },
            )
            .await?;
        let info: crate::server::ControllerInfo = serde_json::from_slice(&std::fs::read(
            target.data_dir.join(crate::server::INFO_FILE),
        )?)?;
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
        serde_json::json!({ "remove": masters.iter().chain(nodes.iter()).collect::<Vec<_>>() })
    } else {
        serde_json::json!({ "add_masters": masters, "add_nodes": nodes })
    };
    let r: ApplyResponse = client
        .post(&format!("/v1/clusters/{cluster}/hosts"), &body)
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
