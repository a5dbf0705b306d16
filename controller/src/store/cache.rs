//! What the hot paths (every poll, every report) read without a query: the host behind a
//! client certificate and each host's plan generation. Both are kept exact within this
//! process: host entries carry the epoch they were read at, and every change of a host
//! record bumps the epoch after it commits, invalidating every entry (a certificate, state
//! or name change: `hosts_changed`) or that host's (its facts: `host_changed`). Generations
//! only grow, so the cache keeps the highest it has seen. Changes another writer of the
//! same database makes reach here through the `host_auth_version` counter its triggers move
//! (`Store::run_host_watch`).

use super::HostRow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Cache {
    epoch: AtomicU64,
    hosts: Mutex<Hosts>,
    generations: Mutex<HashMap<i64, u64>>,
}

#[derive(Default)]
struct Hosts {
    /// By certificate fingerprint: (epoch read at, row).
    rows: HashMap<String, (u64, HostRow)>,
    /// Entries read before this epoch are stale.
    floor: u64,
    /// Per host id: entries of that host read before this epoch are stale.
    host_floor: HashMap<i64, u64>,
}

impl Hosts {
    fn fresh(&self, epoch: u64, host_id: i64) -> bool {
        epoch >= self.floor && epoch >= self.host_floor.get(&host_id).copied().unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// Read before the database: an entry read at an older epoch than a later change is
    /// never used.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// After any host record changed (committed), or another writer changed one.
    pub fn hosts_changed(&self) {
        let mut h = lock(&self.hosts);
        h.floor = self.bump();
        h.rows.clear();
        h.host_floor.clear();
    }

    /// After what only host `id`'s own entry carries (its facts) changed (committed).
    pub fn host_changed(&self, id: i64) {
        let mut h = lock(&self.hosts);
        let e = self.bump();
        h.host_floor.insert(id, e);
    }

    /// After a host was deleted or enrolled: a deleted host's id may be given to the next
    /// one enrolled, so generations are forgotten too (not on every facts change, which
    /// would empty them at each agent's first poll).
    pub fn host_ids_changed(&self) {
        self.hosts_changed();
        lock(&self.generations).clear();
    }

    pub fn host(&self, fingerprint: &str) -> Option<HostRow> {
        let h = lock(&self.hosts);
        let (epoch, row) = h.rows.get(fingerprint)?;
        h.fresh(*epoch, row.id).then(|| row.clone())
    }

    pub fn put_host(&self, fingerprint: &str, epoch: u64, row: &HostRow) {
        let mut h = lock(&self.hosts);
        if h.fresh(epoch, row.id) {
            h.rows.insert(fingerprint.to_string(), (epoch, row.clone()));
        }
    }

    pub fn generation(&self, host_id: i64) -> Option<u64> {
        lock(&self.generations).get(&host_id).copied()
    }

    /// Forgets these hosts' generations (read again at their next poll).
    pub fn forget_generations(&self, hosts: &[i64]) {
        let mut g = lock(&self.generations);
        for h in hosts {
            g.remove(h);
        }
    }

    /// Keeps the highest generation seen (they only grow while the controller runs).
    pub fn saw_generation(&self, host_id: i64, generation: u64) {
        let mut g = lock(&self.generations);
        let e = g.entry(host_id).or_insert(generation);
        *e = (*e).max(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> HostRow {
        HostRow {
            id,
            name: format!("h{id}"),
            ..HostRow::default()
        }
    }

    #[test]
    fn a_facts_change_invalidates_that_host_only_and_a_read_from_before_it_is_never_cached() {
        let c = Cache::default();
        let e = c.epoch();
        c.put_host("fp1", e, &row(1));
        c.put_host("fp2", e, &row(2));
        assert!(c.host("fp1").is_some() && c.host("fp2").is_some());

        let before = c.epoch();
        c.host_changed(1);
        assert!(c.host("fp1").is_none(), "host 1 changed");
        assert!(c.host("fp2").is_some(), "host 2 did not");
        c.put_host("fp1", before, &row(1));
        assert!(c.host("fp1").is_none(), "read before the change: stale");
        c.put_host("fp1", c.epoch(), &row(1));
        assert!(c.host("fp1").is_some());

        let before = c.epoch();
        c.hosts_changed();
        assert!(c.host("fp1").is_none() && c.host("fp2").is_none());
        c.put_host("fp2", before, &row(2));
        assert!(c.host("fp2").is_none(), "read before the change: stale");
    }
}
