//! Heartbeats kept in memory and written to SQLite in batches: a poll or a report marks its
//! host as seen here, and one transaction a second stores every host seen since the last
//! one. Without it every poll was an `UPDATE` through the store's small pool, and at a few
//! thousand agents the pool timed out. `last_seen` in the database lags by at most the
//! flush interval; `berth get hosts` reads the fresh value from here.

use crate::store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Heartbeats {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Newest heartbeat per host id (unix seconds).
    latest: HashMap<i64, i64>,
    /// Hosts seen since the last flush.
    dirty: HashSet<i64>,
}

impl Heartbeats {
    /// Host `id` was seen at `now`.
    pub fn beat(&self, id: i64, now: i64) {
        let mut s = self.lock();
        let prev = s.latest.insert(id, now);
        if prev != Some(now) {
            s.dirty.insert(id);
        }
    }

    /// The newest heartbeat of host `id` known here, if any.
    pub fn latest(&self, id: i64) -> Option<i64> {
        self.lock().latest.get(&id).copied()
    }

    /// Takes what must be written: (host id, last seen).
    pub fn take_dirty(&self) -> Vec<(i64, i64)> {
        let mut s = self.lock();
        let dirty = std::mem::take(&mut s.dirty);
        dirty
            .into_iter()
            .filter_map(|id| s.latest.get(&id).map(|t| (id, *t)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes pending heartbeats every `every` until shutdown, then once more.
    pub async fn run_flusher(
        self: std::sync::Arc<Self>,
        store: Store,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(every) => false,
            };
            self.flush(&store).await;
            if stop {
                return;
            }
        }
    }

    /// Writes what is pending in one transaction; on failure it stays pending.
    pub async fn flush(&self, store: &Store) {
        let beats = self.take_dirty();
        if beats.is_empty() {
            return;
        }
        if let Err(e) = store.record_heartbeats(&beats).await {
            tracing::warn!(error = %e, hosts = beats.len(), "cannot store heartbeats; retrying");
            let mut s = self.lock();
            s.dirty.extend(beats.into_iter().map(|(id, _)| id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_beats_of_a_host_make_one_write_with_the_newest_time() {
        let h = Heartbeats::default();
        for t in 100..200 {
            h.beat(7, t);
        }
        h.beat(8, 150);
        let mut w = h.take_dirty();
        w.sort();
        assert_eq!(w, vec![(7, 199), (8, 150)]);
        assert!(h.take_dirty().is_empty(), "nothing twice");
        assert_eq!(h.latest(7), Some(199));
        h.beat(7, 199);
        assert!(
            h.take_dirty().is_empty(),
            "the same second is not dirty again"
        );
    }
}
