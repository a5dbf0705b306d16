//! What the hot paths (every poll, every report) read without a query: the host behind a
//! client certificate and each host's plan generation. Both are kept exact within this
//! process: host entries carry the epoch they were read at, and every change of a host
//! record bumps the epoch after it commits; generations only grow, so the cache keeps the
//! highest it has seen. Host entries also expire, bounding what another writer of the
//! same database could leave stale.

use super::HostRow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HOST_TTL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Cache {
    epoch: AtomicU64,
    hosts: Mutex<HashMap<String, (u64, Instant, HostRow)>>,
    generations: Mutex<HashMap<i64, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// Read before the database: an entry read at an older epoch is never used.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// After any host record changed (committed).
    pub fn hosts_changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&self.hosts).clear();
    }

    /// After a host was deleted or enrolled: a deleted host's id may be given to the next
    /// one enrolled, so generations are forgotten too (not on every facts change, which
    /// would empty them at each agent's first poll).
    pub fn host_ids_changed(&self) {
        self.hosts_changed();
        lock(&self.generations).clear();
    }

    pub fn host(&self, fingerprint: &str) -> Option<HostRow> {
        let now = self.epoch();
        let hosts = lock(&self.hosts);
        let (epoch, at, row) = hosts.get(fingerprint)?;
        (*epoch == now && at.elapsed() < HOST_TTL).then(|| row.clone())
    }

    pub fn put_host(&self, fingerprint: &str, epoch: u64, row: &HostRow) {
        if epoch == self.epoch() {
            lock(&self.hosts).insert(
                fingerprint.to_string(),
                (epoch, Instant::now(), row.clone()),
            );
        }
    }

    pub fn generation(&self, host_id: i64) -> Option<u64> {
        lock(&self.generations).get(&host_id).copied()
    }

    /// Keeps the highest generation seen (they only grow while the controller runs).
    pub fn saw_generation(&self, host_id: i64, generation: u64) {
        let mut g = lock(&self.generations);
        let e = g.entry(host_id).or_insert(generation);
        *e = (*e).max(generation);
    }
}
