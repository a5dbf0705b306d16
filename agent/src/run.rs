//! `berth-agent run`: the long-poll loop. Each poll is the heartbeat, carries facts when
//! they changed, and (with the orchestration work) will carry plans back.
//!
//! Errors never cost the identity: a timeout, a refused connection, a 5xx or even a 401 is
//! logged and retried with jittered exponential backoff; `503` honours `Retry-After`.

use crate::backoff::Backoff;
use crate::executor::Executor;
use crate::facts;
use crate::fetch::Fetcher;
use crate::join::chain;
use crate::now_unix;
use crate::session::Session;
use crate::spool::Spool;
use anyhow::{Context, Result};
use berth_shared::api::{ErrorBody, HostFacts, PollRequest, PollResponse, ReportEntry};
use berth_shared::plan::{verify, PlanPayload};
use berth_shared::routes::{self, Endpoint};
use rand::Rng;
use reqwest::StatusCode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an agent reads its host's facts again (a change reaches the controller with
/// the next poll after that).
const FACTS_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub data_dir: PathBuf,
    /// How long the controller may hold each poll.
    pub poll_wait: Duration,
    /// Ceiling of the backoff between failed polls.
    pub backoff_max: Duration,
    /// Unpack limits for bundles.
    pub limits: berth_bundle::Limits,
    /// How the HTTPS client connects (source address).
    pub connect: crate::tls::Connect,
    /// Observation points (the fleet simulator's); none for a real agent.
    pub probe: crate::probe::Probe,
    /// `--metrics-listen`: where the agent's own metrics are served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A poll that did not succeed: counted for `--metrics-listen` and told to the probe.
fn poll_failed(probe: &crate::probe::Probe, metrics: &crate::metrics::AgentMetrics, kind: &str) {
    metrics.poll_failed();
    probe.poll_failed(kind);
}

/// Writes the newest accepted plan generation durably (replay protection survives restarts).
fn persist(path: &std::path::Path, generation: u64) {
    if let Err(e) = berth_files::write_durable(path, generation.to_string().as_bytes(), 0o600) {
        tracing::error!(
            error = format!("{e:#}"),
            "cannot record the accepted plan generation"
        );
    }
}

pub async fn run(cfg: RunConfig, shutdown: CancellationToken) -> Result<()> {
    let session = Session::open_with(cfg.data_dir.clone(), cfg.connect.clone())?;
    // Two agents on one data dir would run every step twice and mix their spools.
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.data_dir.join("agent.lock"))
        .with_context(|| format!("cannot open {}", cfg.data_dir.join("agent.lock").display()))?;
    let _only_agent =
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
            |_| {
                anyhow::anyhow!(
                    "another berth-agent runs with the data dir {}; stop it first",
                    cfg.data_dir.display()
                )
            },
        )?;
    let id = session.identity();
    let url = format!("{}{}", id.meta.controller, routes::AgentPoll::ROUTE.path);
    tokio::spawn(session.clone().run_renewer(shutdown.clone()));
    tracing::info!(host = %id.meta.name, controller = %id.meta.controller, "agent starting");

    // Reports and log chunks go through the on-disk spool, in order.
    let spool = Spool::open(&cfg.data_dir.join("spool"))?;
    tokio::spawn(spool.clone().run_sender(
        session.clone(),
        format!("{}{}", id.meta.controller, routes::AgentReports::ROUTE.path),
        cfg.probe.clone(),
        shutdown.clone(),
    ));
    let metrics = Arc::new(crate::metrics::AgentMetrics::default());
    if let Some(addr) = cfg.metrics_listen {
        crate::metrics::serve(addr, metrics.clone(), spool.clone(), shutdown.clone()).await?;
    }
    // Plans run one after the other on their own task; the poll loop keeps heartbeating.
    let generations = crate::fetch::PlanGenerations::default();
    let executor = Executor {
        data_dir: cfg.data_dir.clone(),
        fetcher: Fetcher {
            session: session.clone(),
            controller: id.meta.controller.clone(),
            cache: cfg.data_dir.join("cache"),
            attempts: 20,
            plans: generations.clone(),
        },
        limits: cfg.limits,
        spool: spool.clone(),
        context: Default::default(),
        metrics: metrics.clone(),
    };
    let (plan_tx, mut plan_rx) = tokio::sync::watch::channel::<Option<PlanPayload>>(None);
    tokio::spawn(async move {
        while plan_rx.changed().await.is_ok() {
            let plan = plan_rx.borrow_and_update().clone();
            if let Some(p) = plan {
                // What the plan shares with the cluster (its context document) is fetched
                // by the executor when a step first needs it.
                executor
                    .fetcher
                    .plans
                    .running
                    .store(p.generation, std::sync::atomic::Ordering::SeqCst);
                match executor.run_plan(&p).await {
                    Ok(()) => {}
                    Err(e) if e.is::<crate::fetch::Superseded>() => {
                        tracing::info!("{e}; running the newer plan")
                    }
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "plan execution stopped")
                    }
                }
            }
        }
    });
    let gen_file = cfg.data_dir.join("plan.generation");
    let mut last_accepted: u64 = std::fs::read_to_string(&gen_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // 0 on start: the controller sends its current plan, which is re-verified against
    // `last_accepted` and resumed through the journal.
    let mut have: u64 = 0;
    let public_key = hex::decode(&id.meta.plan_public_key).unwrap_or_default();

    let mut reported: Option<HostFacts> = None;
    let mut backoff = Backoff::new(Duration::from_secs(1), cfg.backoff_max);
    let mut connected = false;
    // Facts are read again at most every FACTS_EVERY (and on every reconnect): a poll
    // answered at once (a plan, a busy phase) does not re-read /proc and the interfaces.
    let mut current = facts::collect();
    let mut collected = std::time::Instant::now();
    loop {
        if !connected || collected.elapsed() >= FACTS_EVERY {
            current = facts::collect();
            collected = std::time::Instant::now();
        }
        let changed = reported.as_ref() != Some(&current);
        let body = PollRequest {
            facts: changed.then(|| current.clone()),
            // The first poll after (re)connecting returns at once, so the controller
            // sees the host and its facts without waiting a whole hold.
            wait_secs: if connected {
                cfg.poll_wait.as_secs()
            } else {
                0
            },
            have_generation: have,
        };
        let send = session
            .client()
            .post(&url)
            .json(&body)
            .timeout(cfg.poll_wait + Duration::from_secs(15))
            .send();
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = send => r,
        };
        let delay = match result {
            Ok(resp) if resp.status().is_success() => match resp.json::<PollResponse>().await {
                Ok(p) => {
                    metrics.polled(now_unix());
                    if !connected {
                        tracing::info!(host = %p.host, "connected to controller");
                        connected = true;
                        cfg.probe.connected();
                    }
                    if changed && p.facts_accepted {
                        tracing::info!("facts reported");
                        reported = Some(current.clone());
                    }
                    backoff.reset();
                    let Some(env) = p.plan else { continue };
                    match verify(
                        &env,
                        &id.meta.plan_key_id,
                        &public_key,
                        &id.meta.name,
                        last_accepted,
                        now_unix(),
                    ) {
                        Ok(plan) => {
                            tracing::info!(
                                generation = plan.generation,
                                steps = plan.steps.len(),
                                "plan accepted"
                            );
                            cfg.probe.plan_accepted(plan.generation, plan.steps.len());
                            generations
                                .newest
                                .fetch_max(plan.generation, std::sync::atomic::Ordering::SeqCst);
                            if plan.generation > last_accepted {
                                last_accepted = plan.generation;
                                persist(&gen_file, last_accepted);
                            }
                            have = plan.generation;
                            let _ = plan_tx.send(Some(plan));
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(reason = %e, "plan refused; nothing from it runs");
                            let _ = spool.push(&ReportEntry::PlanRejected {
                                reason: e.to_string(),
                            });
                            backoff.next_delay().max(Duration::from_secs(2))
                        }
                    }
                }
                Err(e) => {
                    poll_failed(&cfg.probe, &metrics, "unreadable_answer");
                    tracing::warn!(error = %chain(&e), "unreadable poll answer; retrying");
                    backoff.next_delay()
                }
            },
            Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                poll_failed(&cfg.probe, &metrics, "http_503");
                let secs = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match secs {
                    Some(s) => {
                        tracing::info!(
                            retry_after = s,
                            "controller is overloaded; backing off as asked"
                        );
                        Duration::from_secs(s.min(600))
                            + Duration::from_millis(rand::thread_rng().gen_range(0..1000))
                    }
                    None => backoff.next_delay(),
                }
            }
            Ok(resp) => {
                let status = resp.status();
                poll_failed(&cfg.probe, &metrics, &format!("http_{}", status.as_u16()));
                let body = resp.bytes().await.unwrap_or_default();
                let why = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|e| format!("{} ({})", e.message, e.code))
                    .unwrap_or_else(|_| status.to_string());
                let delay = backoff.next_delay();
                if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
                    && session.reload_if_replaced()
                {
                    // Re-enrolled while running: poll again at once with the new identity.
                    connected = false;
                    continue;
                }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    tracing::error!(%status, error = %why, retry_in = ?delay,
                        "controller rejected this agent; keeping the identity and retrying");
                } else {
                    tracing::warn!(%status, error = %why, retry_in = ?delay, "poll failed");
                }
                connected = false;
                delay
            }
            Err(e) => {
                poll_failed(
                    &cfg.probe,
                    &metrics,
                    if e.is_timeout() {
                        "unreachable_timeout"
                    } else if e.is_connect() {
                        "unreachable_connect"
                    } else {
                        "unreachable"
                    },
                );
                if session.reload_if_replaced() {
                    // Re-enrolled (e.g. with a rotated CA) while running: retry at once.
                    connected = false;
                    continue;
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %chain(&e), retry_in = ?delay, "controller unreachable");
                connected = false;
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}
