//! Concurrent lookups of one kind coalesced into one query: each caller queues its key;
//! the first to get the turn runs one query for every key queued (up to a bound) and
//! answers them all. When thousands of polls wake at once (a phase released to the whole
//! fleet) this costs a few set-based queries instead of one round trip per host through
//! SQLite's worker threads. A lone caller pays nothing extra: its query runs at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Keys per query.
const MAX_KEYS: usize = 1000;

type Reply<V> = oneshot::Sender<Result<V, Arc<anyhow::Error>>>;

pub struct Coalescer<K, V> {
    queue: Mutex<Vec<(K, Reply<V>)>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            queue: Mutex::new(Vec::new()),
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Default + Send + 'static,
{
    /// The value of `key`, read by `fetch` together with the keys queued beside it.
    /// `fetch` answers the keys it was given; a key it leaves out gets `V::default()`.
    pub async fn load<F, Fut>(self: &Arc<Self>, key: K, fetch: F) -> anyhow::Result<V>
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<HashMap<K, V>>> + Send,
    {
        let (tx, mut rx) = oneshot::channel();
        self.lock().push((key, tx));
        let turn = tokio::select! {
            r = &mut rx => return unpack(r),
            t = self.turn.clone().lock_owned() => t,
        };
        // On its own task: a caller that goes away must not drop the others' answers.
        let this = self.clone();
        tokio::spawn(async move {
            let _turn = turn;
            loop {
                let jobs: Vec<(K, Reply<V>)> = {
                    let mut q = this.lock();
                    let n = q.len().min(MAX_KEYS);
                    q.drain(..n).collect()
                };
                if jobs.is_empty() {
                    return;
                }
                let mut seen = HashSet::new();
                let keys: Vec<K> = jobs
                    .iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, _)| k.clone())
                    .collect();
                match fetch(keys).await {
                    Ok(found) => {
                        for (k, reply) in jobs {
                            let _ = reply.send(Ok(found.get(&k).cloned().unwrap_or_default()));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for (_, reply) in jobs {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        unpack(rx.await)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(K, Reply<V>)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn unpack<V>(
    r: Result<Result<V, Arc<anyhow::Error>>, oneshot::error::RecvError>,
) -> anyhow::Result<V> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
        Err(_) => Err(anyhow::anyhow!("a coalesced lookup was dropped")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_loads_share_queries_and_each_gets_its_own_answer() {
        let c: Arc<Coalescer<i64, Vec<i64>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for k in 0..500i64 {
            let (c, queries) = (c.clone(), queries.clone());
            tasks.push(tokio::spawn(async move {
                c.load(k, move |keys| {
                    let queries = queries.clone();
                    async move {
                        queries.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        // Odd keys have nothing: they get the default.
                        Ok(keys
                            .into_iter()
                            .filter(|k| k % 2 == 0)
                            .map(|k| (k, vec![k, k * 10]))
                            .collect())
                    }
                })
                .await
            }));
        }
        for (k, t) in tasks.into_iter().enumerate() {
            let k = k as i64;
            let want = if k % 2 == 0 { vec![k, k * 10] } else { vec![] };
            assert_eq!(t.await.unwrap().unwrap(), want);
        }
        let n = queries.load(Ordering::SeqCst);
        assert!(n < 100, "{n} queries for 500 concurrent loads");
    }

    #[tokio::test]
    async fn a_failed_query_fails_every_load_it_served_and_the_next_load_queries_again() {
        let c: Arc<Coalescer<i64, i64>> = Arc::default();
        let e = c
            .load(1, |_| async { Err(anyhow::anyhow!("disk on fire")) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        let v = c
            .load(2, |keys| async move {
                Ok(keys.into_iter().map(|k| (k, k + 1)).collect())
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
    }
}
