//! The agent's own metrics, for `berth-agent run --metrics-listen ADDR`: when it last
//! reached the controller, how many reports wait in its spool, which step runs. Served as
//! OpenMetrics text at `GET /metrics` over plain HTTP without authentication — bind it to
//! loopback or a management network (it says nothing secret: no names of hosts or
//! clusters, no logs).

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct AgentMetrics {
    registry: Registry,
    last_poll: Gauge,
    polls_failed: Counter,
    spool_entries: Gauge,
    step_running: Family<Labels, Gauge>,
    steps_finished: Family<Labels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut m = AgentMetrics {
            registry: Registry::with_prefix("berth_agent"),
            last_poll: Gauge::default(),
            polls_failed: Counter::default(),
            spool_entries: Gauge::default(),
            step_running: Family::default(),
            steps_finished: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "last_poll_timestamp_seconds",
            "When a poll of the controller last succeeded, unix seconds (0: not yet)",
            m.last_poll.clone(),
        );
        r.register(
            "polls_failed",
            "Polls of the controller that failed (unreachable, refused, overloaded)",
            m.polls_failed.clone(),
        );
        r.register(
            "spool_entries",
            "Reports and log chunks spooled on disk, not yet accepted by the controller",
            m.spool_entries.clone(),
        );
        r.register(
            "step_running",
            "1 while a step of this kind runs on the host",
            m.step_running.clone(),
        );
        r.register(
            "steps_finished",
            "Steps this agent finished, by kind and outcome (succeeded, failed, interrupted; superseded: a newer plan took it over)",
            m.steps_finished.clone(),
        );
        m
    }
}

impl AgentMetrics {
    pub fn polled(&self, now_unix: i64) {
        self.last_poll.set(now_unix);
    }
    pub fn poll_failed(&self) {
        self.polls_failed.inc();
    }
    pub fn step_started(&self, kind: &str) {
        self.step_running
            .get_or_create(&labels(&[("kind", kind)]))
            .set(1);
    }
    pub fn step_finished(&self, kind: &str, outcome: &str) {
        self.step_running
            .get_or_create(&labels(&[("kind", kind)]))
            .set(0);
        self.steps_finished
            .get_or_create(&labels(&[("kind", kind), ("outcome", outcome)]))
            .inc();
    }

    /// The OpenMetrics text, with the spool's depth as it is now.
    pub fn render(&self, spool_entries: usize) -> String {
        self.spool_entries.set(spool_entries as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The path, the controller's (`GET /metrics`) on the agent too.
const METRICS_PATH: &str =
    <berth_shared::routes::Metrics as berth_shared::routes::Endpoint>::ROUTE.path;

/// Connections the metrics listener serves at once.
const MAX_CONNECTIONS: usize = 8;

/// Serves `GET /metrics` on `addr` until `shutdown`; anything else is 404.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    spool: Arc<crate::spool::Spool>,
    shutdown: CancellationToken,
) -> Result<()> {
    use hyper::{Method, Request, Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    tracing::info!(listen = %listener.local_addr()?, "metrics served");
    // A scraper needs one connection; a few more are tolerated, and a connection that
    // does not send its request within seconds is closed.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = listener.accept() => c,
            };
            let stream = match conn {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // dropped: closed at once
            };
            let (metrics, spool) = (metrics.clone(), spool.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, spool) = (metrics.clone(), spool.clone());
                async move {
                    let resp = if req.method() == Method::GET && req.uri().path() == METRICS_PATH {
                        let depth = tokio::task::spawn_blocking(move || spool.depth())
                            .await
                            .unwrap_or(0);
                        Response::builder()
                            .header(
                                hyper::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(metrics.render(depth))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body("only GET /metrics is served here\n".to_string())
                    };
                    Ok::<_, hyper::http::Error>(resp.unwrap_or_default())
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(io, service)
                    .await;
                drop(slot);
            });
        }
    });
    Ok(())
}
