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
    /// Set when scraped.
    polls_held: Gauge,
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
            polls_held: Gauge::default(),
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

    /// The OpenMetrics text of every metric, `polls_held` being the polls in progress now.
    pub fn render(&self, polls_held: i64) -> String {
        self.polls_held.set(polls_held);
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
        let text = m.render(7);
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
        assert!(m.render(0).contains("berth_connections_open 0"));
    }
}
