//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text, viewer token): what an
//! operator watches on a fleet, and what the fleet benchmark reads to tell the
//! controller's share of a latency from the agents'.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of a TLS handshake that failed: `kind` is `error` or `timeout`.
pub type HandshakeLabels = Vec<(String, String)>;
/// Labels as name/value pairs (`kind`/`outcome` of a step, `state` of hosts, `result` of an
/// enrollment).
pub type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What is counted when scraped: read from the store then, not kept up to date.
#[derive(Debug, Default)]
pub struct Scraped {
    pub polls_held: i64,
    /// Hosts by state (`Ready`, `NotReady`, `Revoked`).
    pub hosts: Vec<(&'static str, i64)>,
    /// Unix seconds: the earliest agent certificate expiry (of hosts not revoked), and the
    /// controller's server certificate's.
    pub earliest_agent_cert_expiry: Option<i64>,
    pub server_cert_expiry: Option<i64>,
}

pub struct Metrics {
    registry: Registry,
    /// Agent report requests, from the request received (certificate checked, body read)
    /// to its answer being handed to HTTP.
    pub report_seconds: Histogram,
    /// Held polls answered with a plan: from the engine waking the host (its steps were
    /// released and committed) to the answer being handed to HTTP.
    pub plan_delivery_seconds: Histogram,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    /// Steps that finished, by kind and outcome: from the agent's start to its end.
    step_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Signed plans handed to agents.
    pub plans_issued: Counter,
    /// Enrollments by result (`accepted`, `refused`).
    enrollments: Family<Labels, Counter>,
    /// Set when scraped.
    polls_held: Gauge,
    hosts: Family<Labels, Gauge>,
    agent_cert_expiry: Gauge,
    server_cert_expiry: Gauge,
    /// Step log bytes stored (re-sent bytes and bytes over a step's cap are not).
    pub log_bytes_stored: Counter,
    /// Bytes of bundle blobs answered (the length of each 200/206 body sent).
    pub blob_bytes_served: Counter,
    /// Store transactions by what they do (`reports`: a group of agent report batches,
    /// `tick`: one cluster's release decision): time from begin to commit.
    store_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

/// Step durations, seconds: 0.1 s … 2 h.
fn step_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        7200.0,
    ])
}

/// Store transaction times, seconds: 0.1 ms … 10 s.
fn store_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0,
    ])
}

/// Bucket bounds, seconds: 1 ms … 60 s, finer around the 100 ms and 1–5 s marks.
const BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0,
    4.0, 5.0, 7.5, 10.0, 30.0, 60.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("berth"),
            report_seconds: Histogram::new(BUCKETS),
            plan_delivery_seconds: Histogram::new(BUCKETS),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            handshake_failures: Family::default(),
            step_seconds: Family::new_with_constructor(step_histogram),
            plans_issued: Counter::default(),
            enrollments: Family::default(),
            polls_held: Gauge::default(),
            hosts: Family::default(),
            agent_cert_expiry: Gauge::default(),
            server_cert_expiry: Gauge::default(),
            log_bytes_stored: Counter::default(),
            blob_bytes_served: Counter::default(),
            store_seconds: Family::new_with_constructor(store_histogram),
        };
        let r = &mut m.registry;
        r.register(
            "agent_report_duration_seconds",
            "Agent report requests: time from the whole request received to the answer",
            m.report_seconds.clone(),
        );
        r.register(
            "plan_delivery_seconds",
            "Held polls answered with a plan: time from the engine waking the host to the answer",
            m.plan_delivery_seconds.clone(),
        );
        r.register(
            "connections_open",
            "TLS connections open (after the handshake)",
            m.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "TLS connections whose handshake succeeded",
            m.connections_accepted.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (kind=error) or timed out (kind=timeout)",
            m.handshake_failures.clone(),
        );
        r.register(
            "agent_polls_held",
            "Agent long-polls in progress",
            m.polls_held.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Steps that finished, by kind and outcome (succeeded, failed, interrupted): time from the agent's start to its end",
            m.step_seconds.clone(),
        );
        r.register(
            "plans_issued",
            "Signed plans handed to agents",
            m.plans_issued.clone(),
        );
        r.register(
            "enrollments",
            "Agent enrollments by result (accepted, refused)",
            m.enrollments.clone(),
        );
        r.register(
            "hosts",
            "Enrolled hosts by state (Ready, NotReady, Revoked)",
            m.hosts.clone(),
        );
        r.register(
            "agent_cert_earliest_expiry_timestamp_seconds",
            "The earliest expiry of a host's agent certificate (hosts not revoked), unix seconds",
            m.agent_cert_expiry.clone(),
        );
        r.register(
            "server_cert_expiry_timestamp_seconds",
            "The expiry of the controller's server certificate, unix seconds",
            m.server_cert_expiry.clone(),
        );
        r.register(
            "log_bytes_stored",
            "Step log bytes stored from agent reports",
            m.log_bytes_stored.clone(),
        );
        r.register(
            "blob_bytes_served",
            "Bundle blob bytes answered to agents and clients",
            m.blob_bytes_served.clone(),
        );
        r.register(
            "store_transaction_duration_seconds",
            "Store transactions by op (reports: a group of agent report batches; tick: one cluster's release decision), begin to commit",
            m.store_seconds.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn handshake_failed(&self, kind: &str) {
        self.handshake_failures
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    pub fn observe(h: &Histogram, took: Duration) {
        h.observe(took.as_secs_f64());
    }

    /// A step that finished: its kind, its final state, how long it ran.
    pub fn step_finished(&self, kind: &str, outcome: &str, secs: f64) {
        self.step_seconds
            .get_or_create(&labels(&[("kind", kind), ("outcome", outcome)]))
            .observe(secs.max(0.0));
    }

    /// A store transaction of kind `op` that took `took`.
    pub fn store_transaction(&self, op: &str, took: Duration) {
        self.store_seconds
            .get_or_create(&labels(&[("op", op)]))
            .observe(took.as_secs_f64());
    }

    pub fn enrolled(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.enrollments
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// The OpenMetrics text of every metric, with what is counted when scraped.
    pub fn render(&self, now: &Scraped) -> String {
        self.polls_held.set(now.polls_held);
        for (state, n) in &now.hosts {
            self.hosts
                .get_or_create(&labels(&[("state", state)]))
                .set(*n);
        }
        if let Some(t) = now.earliest_agent_cert_expiry {
            self.agent_cert_expiry.set(t);
        }
        if let Some(t) = now.server_cert_expiry {
            self.server_cert_expiry.set(t);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Open while a connection is: the gauge goes down when this is dropped.
pub struct OpenConnection(pub std::sync::Arc<Metrics>);

impl OpenConnection {
    pub fn new(m: std::sync::Arc<Metrics>) -> Self {
        m.connections_open.inc();
        m.connections_accepted.inc();
        OpenConnection(m)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_counts() {
        let m = std::sync::Arc::new(Metrics::default());
        Metrics::observe(&m.report_seconds, Duration::from_millis(30));
        Metrics::observe(&m.report_seconds, Duration::from_millis(300));
        m.handshake_failed("timeout");
        let conn = OpenConnection::new(m.clone());
        m.step_finished("install", "succeeded", 2.0);
        m.enrolled(false);
        let text = m.render(&Scraped {
            polls_held: 7,
            hosts: vec![("Ready", 3), ("NotReady", 1)],
            earliest_agent_cert_expiry: Some(1_800_000_000),
            server_cert_expiry: None,
        });
        for want in [
            "berth_step_duration_seconds_count{kind=\"install\",outcome=\"succeeded\"} 1",
            "berth_step_duration_seconds_bucket{le=\"2.5\",kind=\"install\",outcome=\"succeeded\"} 1",
            "berth_enrollments_total{result=\"refused\"} 1",
            "berth_hosts{state=\"Ready\"} 3",
            "berth_hosts{state=\"NotReady\"} 1",
            "berth_agent_cert_earliest_expiry_timestamp_seconds 1800000000",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(
            text.contains("berth_agent_report_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_agent_report_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_connections_open 1"), "{text}");
        assert!(
            text.contains("berth_connections_accepted_total 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_tls_handshake_failures_total{kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_agent_polls_held 7"), "{text}");
        drop(conn);
        assert!(m
            .render(&Scraped::default())
            .contains("berth_connections_open 0"));
    }
}
