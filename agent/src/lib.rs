//! The berth agent: enrollment, identity, facts and the long-poll loop.
//!
//! Architecture invariant: the agent only ever dials out to the controller, and writes
//! only under its data dir (hooks, later, are the exception).

pub mod backoff;
pub mod cli;
pub mod executor;
pub mod facts;
pub mod fetch;
pub mod identity;
pub mod join;
pub mod metrics;
pub mod probe;
pub mod run;
pub mod session;
pub mod spool;
pub mod tls;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
