//! Optional observation points in the protocol loops, for `berth-fleetsim`: it runs many
//! real agents in one process and needs to know when plans arrive and how long reports
//! take. A real agent has no probe; every call is then a no-op.

use std::sync::Arc;
use std::time::Duration;

/// What the loops tell an observer. Called inline, so implementations must be cheap.
pub trait Observer: Send + Sync {
    /// The first successful poll after (re)connecting.
    fn connected(&self) {}
    /// A plan verified and accepted (before any of its steps runs).
    fn plan_accepted(&self, _generation: u64, _steps: usize) {}
    /// A poll that did not succeed, by kind (`unreachable`, `unreachable_timeout`,
    /// `unreachable_connect`, `http_503`, `http_500`, …).
    fn poll_failed(&self, _kind: &str) {}
    /// One report batch sent: how long the request took, and its outcome kind
    /// (`ok`, `unreachable` or `http_NNN`).
    fn reports_sent(&self, _entries: usize, _took: Duration, _outcome: &str) {}
}

/// A cloneable, optional observer.
#[derive(Clone, Default)]
pub struct Probe(Option<Arc<dyn Observer>>);

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Probe(set)"
        } else {
            "Probe(none)"
        })
    }
}

impl Probe {
    pub fn new(o: Arc<dyn Observer>) -> Probe {
        Probe(Some(o))
    }
    pub fn connected(&self) {
        if let Some(o) = &self.0 {
            o.connected()
        }
    }
    pub fn plan_accepted(&self, generation: u64, steps: usize) {
        if let Some(o) = &self.0 {
            o.plan_accepted(generation, steps)
        }
    }
    pub fn poll_failed(&self, kind: &str) {
        if let Some(o) = &self.0 {
            o.poll_failed(kind)
        }
    }
    pub fn reports_sent(&self, entries: usize, took: Duration, outcome: &str) {
        if let Some(o) = &self.0 {
            o.reports_sent(entries, took, outcome)
        }
    }
}
