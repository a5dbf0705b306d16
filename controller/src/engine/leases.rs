//! Which clusters this controller ticks, when several share one database (PostgreSQL), and
//! what the others tell it. One controller holds a cluster at a time: it alone ticks it
//! (releases its steps, settles its phase, declares its steps lost). It renews its leases
//! every round; one that dies stops renewing, and after the lease time the others claim
//! what it held and tick it at once. A step is released only inside a write transaction
//! that finds the releasing controller's lease current (`Store::release`), so a controller
//! that stalled past its lease cannot release anything.
//!
//! Reports may arrive at any controller: one that does not hold their cluster asks the
//! holder to tick it ([`Signal::Tick`]). Plans changed anywhere wake the long-polls held
//! here ([`Signal::Plans`]), ticks elsewhere wake the watchers here ([`Signal::Changed`]).
//! SQLite has one controller, which holds every cluster.

use super::Engine;
use crate::store::leases::Member;
use crate::store::Signal;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// This controller's leases as of its last round.
pub struct Leases {
    ttl: Duration,
    me: OnceLock<Member>,
    held: Mutex<Held>,
    /// Set at shutdown: nothing is claimed or renewed any more.
    leaving: std::sync::atomic::AtomicBool,
    /// Rounds done, for the periodic ticks of every held cluster.
    rounds: std::sync::atomic::AtomicU64,
}

/// Every this many rounds (two lease times), a controller sharing the database ticks every
/// cluster it holds: a tick request another controller sent and that was lost (a dropped
/// connection, a controller stopped with reports still queued) waits at most that long.
const RESYNC_ROUNDS: u64 = 10;

#[derive(Default)]
struct Held {
    /// Clusters this controller holds, each until the local instant it surely still does
    /// (the start of the transaction that renewed or claimed it, plus the lease time).
    mine: HashMap<i64, Instant>,
    /// Clusters others hold, until their leases end (as seen at the last round).
    others: HashMap<i64, Instant>,
}

impl Leases {
    pub fn new(ttl: Duration) -> Leases {
        Leases {
            ttl,
            me: OnceLock::new(),
            held: Mutex::default(),
            leaving: Default::default(),
            rounds: Default::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Whether this controller holds `cluster_id` now.
    pub fn holds(&self, cluster_id: i64) -> bool {
        self.held()
            .mine
            .get(&cluster_id)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Whether another live controller holds `cluster_id` (as of the last round).
    fn held_elsewhere(&self, cluster_id: i64) -> bool {
        self.held()
            .others
            .get(&cluster_id)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The clusters this controller holds now.
    pub fn mine(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut v: Vec<i64> = (self.held().mine.iter())
            .filter(|(_, until)| now < **until)
            .map(|(c, _)| *c)
            .collect();
        v.sort_unstable();
        v
    }
}

impl Engine {
    /// Takes this controller's first leases, once it joined (`Store::join`); before it
    /// serves.
    pub async fn take_leases(&self, me: Member) -> Result<()> {
        let _ = self.leases.me.set(me);
        self.lease_round().await?;
        Ok(())
    }

    /// One round: renew, claim a share of what nobody holds, and tick what was claimed
    /// (another controller's clusters, after it died).
    async fn lease_round(&self) -> Result<()> {
        let Some(me) = self.leases.me.get() else {
            return Ok(());
        };
        if self
            .leases
            .leaving
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        let began = Instant::now();
        let round = self.store.lease_round(me, self.leases.ttl_ms()).await?;
        let until = began + self.leases.ttl;
        let lost: Vec<i64> = {
            let mut h = self.leases.held();
            let before: HashSet<i64> = h.mine.keys().copied().collect();
            // Claimed by `hold` after this round read the leases: kept.
            let newer: Vec<(i64, Instant)> = (h.mine.iter())
                .filter(|(_, u)| **u > until)
                .map(|(c, u)| (*c, *u))
                .collect();
            h.mine = round.mine.iter().map(|c| (*c, until)).collect();
            h.mine.extend(newer);
            h.others = (round.others.iter())
                .map(|(c, end)| {
                    let left = Duration::from_millis((end - round.now_ms).max(0) as u64);
                    (*c, began + left)
                })
                .collect();
            before
                .into_iter()
                .filter(|c| !h.mine.contains_key(c))
                .collect()
        };
        for c in &lost {
            tracing::warn!(
                cluster = c,
                "lease lost (this controller did not renew it in time, or the cluster is gone)"
            );
        }
        for c in &round.claimed {
            tracing::info!(cluster = c, "claimed the cluster's lease; ticking it");
            self.schedule_tick(*c);
        }
        let n = self
            .leases
            .rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.store.shared() && n % RESYNC_ROUNDS == RESYNC_ROUNDS - 1 {
            for c in round.mine {
                self.schedule_tick(c);
            }
        }
        Ok(())
    }

    /// Renews and claims leases every fifth of the lease time until shutdown, then gives
    /// them up: the ticker stops with the shutdown, so the others take this controller's
    /// clusters (and the reports still arriving here) at their next round.
    pub async fn run_leases(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let every = (self.leases.ttl / 5).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self.leave().await,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.lease_round().await {
                tracing::error!(error = format!("{e:#}"), "renewing leases failed");
            }
        }
    }

    /// At shutdown: gives up every lease, so the others take this controller's clusters at
    /// their next round instead of after the lease time. Nothing here ticks afterwards.
    async fn leave(&self) {
        self.leases
            .leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.leases.held().mine.clear();
        if let Err(e) = self.store.leave().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot give up leases at shutdown; they expire"
            );
        }
    }

    /// Whether this controller may tick `cluster_id`: it holds it, or nobody did and it
    /// just claimed it (a cluster created here, or one whose holder died).
    pub(super) async fn hold(&self, cluster_id: i64) -> Result<bool> {
        if self.leases.holds(cluster_id) {
            return Ok(true);
        }
        if self.leases.held_elsewhere(cluster_id)
            || self
                .leases
                .leaving
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(false);
        }
        let began = Instant::now();
        if !self
            .store
            .claim_lease(cluster_id, self.leases.ttl_ms())
            .await?
        {
            return Ok(false);
        }
        self.leases
            .held()
            .mine
            .insert(cluster_id, began + self.leases.ttl);
        Ok(true)
    }

    /// Acts on what the other controllers signal, until shutdown (nothing on SQLite).
    pub async fn run_signals(
        self: Arc<Self>,
        mut signals: crate::store::Signals,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        // Host-record changes drop the whole host cache; an enrollment storm sends one per
        // host, so they are applied at most every `HOSTS_EVERY` (the last one never later).
        const HOSTS_EVERY: Duration = Duration::from_millis(100);
        let mut hosts_cleared = tokio::time::Instant::now();
        let mut hosts_pending = false;
        // The listener reads in a task of its own, never interrupted halfway through a
        // message by the other branches.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                if tx.send(signals.next().await).await.is_err() {
                    return;
                }
            }
        });
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(hosts_cleared + HOSTS_EVERY), if hosts_pending => {
                    self.store.hosts_changed_elsewhere();
                    (hosts_cleared, hosts_pending) = (tokio::time::Instant::now(), false);
                    continue;
                }
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            if r.signal == Signal::Hosts {
                if hosts_cleared.elapsed() >= HOSTS_EVERY {
                    self.store.hosts_changed_elsewhere();
                    hosts_cleared = tokio::time::Instant::now();
                } else {
                    hosts_pending = true;
                }
                continue;
            }
            self.on_signal(r.signal).await;
        }
    }

    async fn on_signal(&self, signal: Signal) {
        match signal {
            Signal::Plans(plans) => {
                let hosts: Vec<i64> = plans.iter().map(|(h, _)| *h).collect();
                self.store.plans_changed_elsewhere(&hosts).await;
                for host in hosts {
                    self.wake_waiting(host);
                }
            }
            Signal::Tick(clusters) => {
                for c in clusters.into_iter().filter(|c| self.leases.holds(*c)) {
                    self.schedule_tick(c);
                }
            }
            Signal::Changed(clusters) => {
                for c in clusters {
                    self.changed(c);
                }
            }
            Signal::Hosts => self.store.hosts_changed_elsewhere(),
            Signal::Missed => {
                tracing::warn!(
                    "reconnected to the other controllers' signals; reading everything again"
                );
                self.store.forget_cached();
                let hosts: Vec<i64> = self.wakers_now();
                for h in hosts {
                    self.wake_waiting(h);
                }
                let watched: Vec<i64> = self.watched_now();
                for c in watched {
                    self.changed(c);
                }
                for c in self.leases.mine() {
                    self.schedule_tick(c);
                }
            }
        }
    }
}
